"""confd-client entry point. The agent itself lands with issue #5."""

import sys


def main() -> int:
    print("confd-client: not built yet (issue #4: BIRD configuration)", file=sys.stderr)
    return 2
