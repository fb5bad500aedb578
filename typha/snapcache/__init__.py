"""typha/snapcache"""
