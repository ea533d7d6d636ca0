"""High availability on the shipped topology: three uvicorn instances behind docker/nginx.conf,
Redis behind Sentinel, 30 clients chatting through every fault of tests/chaos/scenario.py.

``CHAOS_OUTPUT`` names the JSON file for the figures (scripts/failover_report reads it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.chaos.scenario import run_suite

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


async def test_every_fault_is_survived_without_loss_or_duplicates(tmp_path: Path) -> None:
    out = Path(os.environ.get("CHAOS_OUTPUT") or tmp_path / "failover.json")
    report = await run_suite(tmp_path, out)
    summary = json.dumps([{k: f[k] for k in f if k != "violations"} for f in report["faults"]], indent=1)
    problems = {f["fault"]: f["violations"] for f in report["faults"] if f["violations"]}
    assert not problems, f"invariants broken:\n{json.dumps(problems, indent=1)}\nfigures:\n{summary}"
    for fault in report["faults"]:
        assert fault["lost"] == 0 and fault["duplicates"] == 0 and fault["bad_5xx"] == 0, summary
        assert fault["clients_not_recovered"] == 0, summary
    # Every fault of the run was injected and checked, and every send was acknowledged by the end
    # (sends stop only at each settle point, where all pending ones must be acknowledged).
    assert report["faults"][0]["fault"] == "steady state" and len(report["faults"]) == 9, summary
    assert report["acked"] > 0 and report["sent"] - report["acked"] <= report["clients"], summary
