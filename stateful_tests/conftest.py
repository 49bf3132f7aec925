"""Hypothesis profiles for the stateful suite.

Select one with ``FORGE_SC_HYPOTHESIS_PROFILE`` (default ``ci``):

* ``ci``: bounded, for every test run (the whole stateful suite, both backends,
  in about a minute on 2 cores).
* ``deep``: long runs (see README.md).
* ``bugcheck``: used by ``scripts/bugs/run_bug_check.py``: no shrinking, stop at the
  first failure, examples drawn from a fixed seed so that runs are comparable.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

settings.register_profile("ci", max_examples=40, stateful_step_count=30, **_COMMON)
settings.register_profile("deep", max_examples=1000, stateful_step_count=60, **_COMMON)
settings.register_profile(
    "bugcheck",
    max_examples=60,
    stateful_step_count=25,
    phases=[Phase.explicit, Phase.generate],
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    **_COMMON,
)
settings.load_profile(os.environ.get("FORGE_SC_HYPOTHESIS_PROFILE", "ci"))
