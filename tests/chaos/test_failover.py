"""High availability on the shipped topology: three uvicorn instances behind docker/nginx.conf,
Redis behind Sentinel, 30 clients chatting through every fault of tests/chaos/scenario.py; then
a smaller run on a Redis Cluster (master SIGKILL, master SIGSTOP, a slot reshard).

One Sentinel run serves several tests (each asserts what its fault must show). ``CHAOS_OUTPUT``
names the JSON file for the figures (scripts/failover_report reads it, and the cluster run's
beside it with ``-cluster`` added to the name)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.scenario import CUT_FAULT, FIRESTORE_FAULT, run_suite

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

SENTINEL_FAULTS = 8  # besides the steady state, the cut and the Firestore outage


def _output(tmp: Path, suffix: str = "") -> Path:
    explicit = os.environ.get("CHAOS_OUTPUT")
    path = Path(explicit) if explicit else tmp / "failover.json"
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


@pytest.fixture(scope="module")
def sentinel_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("chaos")
    return asyncio.run(run_suite(tmp, _output(tmp)))


def _summary(report: dict[str, Any]) -> str:
    return json.dumps([{k: f[k] for k in f if k != "violations"} for f in report["faults"]], indent=1)


def _assert_survived(report: dict[str, Any]) -> None:
    summary = _summary(report)
    problems = {f["fault"]: f["violations"] for f in report["faults"] if f["violations"]}
    assert not problems, f"invariants broken:\n{json.dumps(problems, indent=1)}\nfigures:\n{summary}"
    for fault in report["faults"]:
        assert fault["lost"] == 0 and fault["duplicates"] == 0 and fault["bad_5xx"] == 0, summary
        assert fault["clients_not_recovered"] == 0, summary
    # Every send was acknowledged by the end (sends stop only at each settle point, where all
    # pending ones must be acknowledged).
    assert report["acked"] > 0 and report["sent"] - report["acked"] <= report["clients"], summary


def _fault(report: dict[str, Any], name: str) -> dict[str, Any]:
    found = [f for f in report["faults"] if f["fault"] == name]
    assert found, f"{name!r} did not run: {report['skipped']}"
    return found[0]


def test_every_fault_is_survived_without_loss_or_duplicates(sentinel_run: dict[str, Any]) -> None:
    _assert_survived(sentinel_run)
    # Every fault of the run was injected and checked.
    ran = len(sentinel_run["faults"]) - 1 - len({CUT_FAULT, FIRESTORE_FAULT} - set(sentinel_run["skipped"]))
    assert sentinel_run["faults"][0]["fault"] == "steady state" and ran == SENTINEL_FAULTS, _summary(sentinel_run)


def test_an_instance_cut_off_from_redis_closes_its_sockets_with_1011_and_they_resume_elsewhere(
    sentinel_run: dict[str, Any],
) -> None:
    if CUT_FAULT in sentinel_run["skipped"]:
        pytest.skip(f"cannot cut an instance off from Redis here: {sentinel_run['skipped'][CUT_FAULT]}")
    fault = _fault(sentinel_run, CUT_FAULT)
    details = fault["details"]
    assert not fault["violations"], json.dumps(fault, indent=1)
    assert details["clients_on_instance"] > 0, details
    assert details["sockets_closed"] == details["clients_on_instance"] and details["close_codes"] == [1011], details
    assert details["health_503_after_s"] is not None, details  # so admission and nginx route away
    assert details["clients_on_cut_instance_while_cut"] == 0, details
    assert details["other_instances_sockets_closed"] == 0, details
    assert details["healthy_again_after_s"] is not None, details
    assert fault["lost"] == 0 and fault["duplicates"] == 0 and fault["clients_not_recovered"] == 0, fault


@pytest.mark.firestore
def test_firestore_stopped_under_traffic_leaves_chat_alone_and_statuses_catch_up(
    sentinel_run: dict[str, Any],
) -> None:
    # A missing emulator is a loud failure, as for every Firestore test (harness/firestore_emulator.py).
    assert FIRESTORE_FAULT not in sentinel_run["skipped"], sentinel_run["skipped"][FIRESTORE_FAULT]
    fault = _fault(sentinel_run, FIRESTORE_FAULT)
    details = fault["details"]
    assert not fault["violations"], json.dumps(fault, indent=1)
    assert details["error_frames"] == 0 and fault["bad_5xx"] == 0, details
    assert (details["health_during_outage"], details["health_status"], details["firestore"]) == (
        200,
        "degraded",
        "down",
    ), details
    assert details["statuses"] == sentinel_run["clients"] and details["statuses_behind"] == 0, details
    assert fault["lost"] == 0 and fault["duplicates"] == 0 and fault["clients_not_recovered"] == 0, fault


@pytest.mark.rediscluster
def test_every_fault_on_a_redis_cluster_is_survived_without_loss_or_duplicates(tmp_path: Path) -> None:
    report = asyncio.run(run_suite(tmp_path, _output(tmp_path, "-cluster"), cluster=True))
    _assert_survived(report)
    names = [f["fault"] for f in report["faults"]]
    assert names[0] == "steady state" and len(names) == 4, _summary(report)
