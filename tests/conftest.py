"""Suite-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI every run must judge the same code the same way: property tests use a fixed derandomized
# seed there (exploring new examples is what developers' runs are for), and no per-example deadline,
# since a loaded machine must not turn a slow example into a failure.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
