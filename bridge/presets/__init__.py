"""Presets as data: the YAML schema, reading files with line numbers, the search path, and recipes (the steps a job
runs).
"""
