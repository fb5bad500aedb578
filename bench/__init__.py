"""The load-test harness: `python -m bench <subcommand>`."""
