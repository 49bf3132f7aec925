"""Hypothesis profiles for the stateful suite, and its time bound.

Select one with ``FORGE_SC_HYPOTHESIS_PROFILE`` (default ``ci``):

* ``ci``: bounded, for every test run (the whole stateful suite, both backends,
  in about a minute on 2 cores).
* ``deep``: long runs (see README.md).
* ``bugcheck``: used by ``scripts/bugs/run_bug_check.py``: no shrinking, stop at the
  first failure, examples drawn from a fixed seed so that runs are comparable.

Every request of the machine is bounded by the harness itself (``CALL_BOUND``); a test
as a whole is bounded by pytest-timeout, with more time than the default (pyproject.toml)
because one test runs a whole profile: ``TIMEOUTS`` by profile.
"""

from __future__ import annotations

import os

import pytest
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
PROFILE = os.environ.get("FORGE_SC_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

#: Real-time bound of one state-machine test (one backend, a whole profile), seconds.
TIMEOUTS = {"ci": 900.0, "bugcheck": 900.0, "deep": 4 * 3600.0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    bound = TIMEOUTS.get(PROFILE, TIMEOUTS["deep"])
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.timeout(bound), append=False)
