"""typha/ops"""
