"""typha/testing/apiserver"""
