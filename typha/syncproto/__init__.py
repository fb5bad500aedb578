"""typha/syncproto"""
