"""HTTP and fal's queue protocol: uploads, submit, status, result, cancel, the key. Knows no folders, jobs or
samples.
"""
