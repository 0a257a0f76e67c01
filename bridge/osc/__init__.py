"""A way in: OSC over UDP, for Max for Live and any patch; one declaration of the addresses drives dispatch,
validation and the README table.
"""
