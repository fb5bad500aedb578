"""felix-client entry point. The agent itself lands with issue #5."""

import sys


def main() -> int:
    print("felix-client: not built yet (issue #5: policy, IP sets and routes)", file=sys.stderr)
    return 2
