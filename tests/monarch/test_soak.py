"""A short chaos soak on real Monarch processes, on both backends: 64 callers, 4
replicas, a replica process SIGKILLed every 1-2.5 s. ``python -m scripts.soak`` runs the
long version (see docs/fault_model.md, "Chaos soak")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ._soak import SoakConfig, run_soak

pytestmark = [pytest.mark.anyio, pytest.mark.monarch]


async def test_chaos_soak_loses_nothing() -> None:
    cfg = SoakConfig(
        seconds=12.0,
        callers=64,
        replicas=4,
        kill_interval=(1.0, 2.5),
        seed=7,
        kill_warmup=1.0,
        quiet_tail=3.0,
    )
    report = await run_soak(cfg)
    print(report.format())  # shown with -s, and in the failure message below
    text = report.format()
    # Every request ended: answered correctly, or failed with a typed forge_sc error.
    assert report.lost == 0, text
    assert report.hung == 0, text
    assert report.wrong == 0 and report.unexpected == 0, text
    assert report.charge_duplicates == 0 and report.charge_unlogged == 0, text
    assert set(report.failed_by_type) <= {"ReplicaDiedError"}, text
    assert report.escalated is None, text
    # The kills happened and every killed replica came back.
    assert report.kills >= 2, text
    assert report.restarts >= report.kills, text
    assert report.healthy_at_end == cfg.replicas, text
    assert report.session_moves_seen <= report.session_migrations, text
    # Traffic flowed through the kills (2 cores: ~1,400-2,300 answered/s measured).
    assert report.answered >= 3000, text
    assert report.leftover_processes == 0, text
    assert report.ok, text


def test_soak_script_reports_json_and_exit_status() -> None:
    """The CLI end to end: a 3 s soak in its own process, a JSON report, status 0."""
    root = Path(__file__).resolve().parents[2]
    args = ["--seconds", "3", "--callers", "16", "--kill-interval", "0.5", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.soak", *args, "--backend", "trio", "--json", "--quiet"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["problems"] == [], report
    assert report["backend"] == "trio" and report["lost"] == 0 and report["hung"] == 0
    assert report["kills"] >= 1 and report["restarts"] >= report["kills"], report
    assert report["answered"] > 0 and report["leftover_processes"] == 0, report
