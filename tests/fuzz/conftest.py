"""Hypothesis profiles for the bounded fuzz tests: fixed example counts (set per test),
no deadline (a shared 2-core machine), no example database in the work tree, and
derandomized under CI (the same examples every run; `HYPOTHESIS_PROFILE=explore` draws
new ones locally)."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_common)
settings.register_profile("explore", derandomize=False, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explore" if os.environ.get("HYPOTHESIS_EXPLORE") else "ci"))
