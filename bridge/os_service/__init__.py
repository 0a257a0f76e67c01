"""os_service"""
