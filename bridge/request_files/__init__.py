"""request_files"""
