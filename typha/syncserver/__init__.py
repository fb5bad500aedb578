"""typha/syncserver"""
