"""A way in: JSON request files in the requests folder (what the REAPER script writes), answered by status files
beside them.
"""
