"""The vocabulary every layer shares: the request model, options, job states, errors, configuration, output names
and safe placing, claims, the file gate, the path policy.
"""
