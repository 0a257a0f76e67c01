"""hotfolder"""
