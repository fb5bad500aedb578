"""Test doubles with a contract: the Kubernetes API emulator and fixture loaders."""
