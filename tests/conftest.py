"""Test-wide settings: deterministic property tests in CI."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI the examples are derived from the test names, so a run is reproducible; locally
# hypothesis explores new examples each run (and replays failures from its database).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
