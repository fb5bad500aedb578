"""typha/daemon"""
