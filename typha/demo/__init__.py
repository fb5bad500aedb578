"""`typha demo`: the whole system on one machine (see typha.demo.runner)."""
