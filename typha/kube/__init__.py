"""typha/kube"""
