"""The chaos run: clients chat the whole time while faults are injected one after another; after
each, the run waits for recovery, lets the traffic settle and checks the invariants.

Figures per fault (written to ``failover.json`` with the timeline for the picture):

* ``fresh_ack_p50_s`` / ``fresh_ack_max_s``: from the fault (the last signal of an injection that
  has several) until each client has an acknowledgement of a message it sent after that moment;
* ``reconnects``: client reconnects during the fault's window;
* ``lost``: acknowledged messages not stored, or stored ones some participant never received;
* ``duplicates``: one client_msg_id stored or acknowledged under two seqs, or a seq delivered
  with two different message ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clients import Client
from .stack import ChaosStack

log = logging.getLogger("chaos")

RECOVERY_TIMEOUT_SECONDS = 20.0
SETTLE_TIMEOUT_SECONDS = 20.0
STEADY_SECONDS = 3.0
RUN_BOUND_SECONDS = 400.0


@dataclass
class FaultResult:
    name: str
    started: float
    injected: float = 0.0
    settling: float = 0.0  # new sends paused from here until ``ended`` for the checks
    ended: float = 0.0
    fresh_ack: list[float] = field(default_factory=list)
    not_recovered: int = 0
    reconnects: int = 0
    lost: int = 0
    duplicates: int = 0
    redeliveries: int = 0
    bad_5xx: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figures(self, t0: float) -> dict[str, Any]:
        acks = sorted(self.fresh_ack)
        return {
            "fault": self.name,
            "start_s": round(self.started - t0, 2),
            "injected_s": round((self.injected or self.started) - t0, 2),
            "settle_s": round((self.settling or self.ended) - t0, 2),
            "end_s": round(self.ended - t0, 2),
            "fresh_ack_p50_s": round(statistics.median(acks), 2) if acks else None,
            "fresh_ack_max_s": round(acks[-1], 2) if acks else None,
            "clients_not_recovered": self.not_recovered,
            "reconnects": self.reconnects,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "redeliveries_deduped": self.redeliveries,
            "bad_5xx": self.bad_5xx,
            "violations": self.violations[:50],
            "notes": self.notes,
        }


class Run:
    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self.stop = asyncio.Event()
        self.sending = asyncio.Event()
        self.sending.set()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + RUN_BOUND_SECONDS
        users = stack.seeded["users"]
        convs_of: dict[int, list[str]] = {i: [] for i in range(len(users))}
        for cid, members in stack.seeded["conversations"].items():
            for i in members:
                convs_of[i].append(cid)
        self.clients = [Client(i, u["id"], u["token"], convs_of[i], stack.ws_url) for i, u in enumerate(users)]
        self.members = stack.seeded["conversations"]
        self.timeline: list[dict[str, float]] = []
        self.results: list[FaultResult] = []
        self._checked_5xx = 0
        self._reported: set[tuple[int, str]] = set()  # the delivery checks cover the whole run so far

    # --- plumbing ----------------------------------------------------------------------------

    async def _sample(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            self.timeline.append({"t": round(now - self.t0, 2), "connected": sum(c.connected for c in self.clients)})
            await asyncio.sleep(0.5)

    def _reconnects(self) -> int:
        return sum(c.reconnects for c in self.clients)

    async def _wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            await asyncio.sleep(0.1)
        return pred()

    async def _recovered(self, result: FaultResult, since: float) -> None:
        """Wait until every client is connected and has an ack of a message sent after ``since``."""

        def fresh(c: Client) -> float | None:
            for ack_t, sent_t in c.ack_times:
                if sent_t >= since:
                    return ack_t - since
            return None

        await self._wait(
            lambda: all(c.connected and fresh(c) is not None for c in self.clients), RECOVERY_TIMEOUT_SECONDS
        )
        times = [fresh(c) for c in self.clients]
        result.fresh_ack = [t for t in times if t is not None]
        result.not_recovered = sum(t is None for t in times)
        if result.not_recovered:
            result.violations.append(
                f"{result.not_recovered} clients without a fresh ack after {RECOVERY_TIMEOUT_SECONDS}s"
            )
        not_connected = [c.index for c in self.clients if not c.connected]
        if not_connected:
            result.violations.append(f"clients not connected again: {not_connected}")

    async def _settle_and_check(self, result: FaultResult) -> None:
        """Stop new sends, let every pending message be acknowledged and every stored one be
        delivered, then check the invariants; sending resumes afterwards."""
        result.settling = time.monotonic()
        self.sending.clear()
        try:
            settled = await self._wait(
                lambda: all(c.connected and not c.pending for c in self.clients), SETTLE_TIMEOUT_SECONDS
            )
            if not settled:
                stuck = {c.index: len(c.pending) for c in self.clients if c.pending or not c.connected}
                result.violations.append(f"sends not acknowledged after {SETTLE_TIMEOUT_SECONDS}s: {stuck}")
            stored, last_seq = await asyncio.to_thread(self.stack.stored)

            def delivered() -> bool:
                return all(c.cursor[cid] >= last_seq.get(cid, 0) for c in self.clients for cid in c.conversations)

            if not await self._wait(delivered, SETTLE_TIMEOUT_SECONDS):
                behind = [
                    (c.index, cid[:8], c.cursor[cid], last_seq[cid])
                    for c in self.clients
                    for cid in c.conversations
                    if c.cursor[cid] < last_seq.get(cid, 0)
                ]
                result.violations.append(f"deliveries behind the store: {behind[:10]}")
            self._check(result, stored)
        finally:
            self.sending.set()

    def _check(self, result: FaultResult, stored: dict[str, list[tuple[int, str, int, str | None]]]) -> None:
        by_id: dict[str, tuple[str, int]] = {}
        by_cmid: dict[tuple[int, str], list[int]] = {}
        for cid, rows in stored.items():
            seqs = [r[0] for r in rows]
            if seqs != list(range(1, len(seqs) + 1)):
                result.violations.append(f"stored seqs of {cid[:8]} not gap-free")
            for seq, mid, sender, cmid in rows:
                by_id[mid] = (cid, seq)
                if cmid:
                    by_cmid.setdefault((sender, cmid), []).append(seq)
        result.duplicates = sum(len(v) - 1 for v in by_cmid.values() if len(v) > 1)
        lost = 0
        for c in self.clients:
            # Every acknowledged message is stored, under the seq it was acknowledged with.
            for cmid, (cid, seq, mid) in c.acked.items():
                if by_id.get(mid) != (cid, seq):
                    lost += 1
                    result.violations.append(f"acked {cmid} ({cid[:8]}#{seq}) not stored as acked")
                if by_cmid.get((c.user_id, cmid), [seq]) != [seq]:
                    result.duplicates += 1
            # Every stored message reached this participant exactly once after dedupe by id, in
            # seq order without a gap.
            for cid in c.conversations:
                first_seen: dict[str, int] = {}
                order: list[int] = []
                for seq, mid in c.deliveries[cid]:
                    if mid in first_seen:
                        result.redeliveries += 1
                        if first_seen[mid] != seq:
                            result.duplicates += 1
                        continue
                    first_seen[mid] = seq
                    order.append(seq)
                want = [r[0] for r in stored.get(cid, [])]
                got_ids = {r[1] for r in stored.get(cid, [])}
                missing = got_ids - set(first_seen)
                lost += len(missing)
                if order != want[: len(order)] and (c.index, cid) not in self._reported:
                    self._reported.add((c.index, cid))
                    result.violations.append(f"client {c.index} in {cid[:8]}: delivered out of seq order")
                if len(order) < len(want):
                    result.violations.append(f"client {c.index} in {cid[:8]}: {len(order)} of {len(want)} delivered")
                if len(order) != len(set(order)):
                    result.duplicates += len(order) - len(set(order))
            result.violations.extend(f"client {c.index}: {v}" for v in c.violations)
            c.violations.clear()
        result.lost = lost
        # No 5xx but 503, at the balancer (handshakes and HTTP) and in error frames.
        statuses = self.stack.nginx.statuses() if self.stack.nginx else []
        bad = [s for s in statuses[self._checked_5xx :] if s >= 500 and s != 503]
        self._checked_5xx = len(statuses)
        result.bad_5xx = len(bad)
        if bad:
            result.violations.append(f"nginx answered {bad[:10]}")

    async def fault(self, name: str, inject: Callable[[FaultResult], Awaitable[float]]) -> FaultResult:
        """Inject (``inject`` returns the moment recovery is measured from), wait for recovery,
        settle, check."""
        log.warning("fault: %s", name)
        result = FaultResult(name, time.monotonic())
        reconnects = self._reconnects()
        result.injected = await inject(result)
        await self._recovered(result, result.injected)
        await self._settle_and_check(result)
        result.reconnects = self._reconnects() - reconnects
        result.ended = time.monotonic()
        self.results.append(result)
        log.warning("fault done: %s", json.dumps(result.figures(self.t0)))
        await asyncio.sleep(STEADY_SECONDS)
        return result

    # --- the faults --------------------------------------------------------------------------

    async def instance_sigkill(self, result: FaultResult) -> float:
        server = self.stack.servers["b"]
        on_b = [c for c in self.clients if c.instance == "b" and c.connected]
        server.signal(signal.SIGKILL)
        at = time.monotonic()
        await asyncio.to_thread(server.wait, 5)
        result.notes.append(f"{len(on_b)} clients were on the killed instance")
        await asyncio.sleep(2)
        await asyncio.to_thread(self.stack.restart_instance, "b")
        return at

    async def rolling_deploy(self, result: FaultResult) -> float:
        at = time.monotonic()
        for name in self.stack.servers:
            mark = time.monotonic()
            took = await asyncio.to_thread(self.stack.sigterm_and_restart, name)
            result.notes.append(f"{name} exited {took:.1f}s after SIGTERM")
            if took > 10:
                result.violations.append(f"instance {name} took {took:.1f}s to exit after SIGTERM (over 10 s)")
            # Sockets of the SIGTERMed instance were closed with 1012.
            for c in self.clients:
                for t, instance, code in c.closes:
                    if t >= mark and instance == name and code != 1012:
                        result.violations.append(f"client {c.index} on {name} closed with {code}, not 1012")
            at = mark
            await asyncio.sleep(1)
        return at

    async def redis_master_sigstop(self, result: FaultResult) -> float:
        topology = self.stack.redis
        old = topology.master_port()
        node = topology.freeze_master()
        at = time.monotonic()
        failed_over = await self._wait(lambda: _safe_master(topology) not in (None, old), 15)
        result.notes.append(
            f"Sentinel failover {'after %.1fs' % (time.monotonic() - at) if failed_over else 'did not happen'}"
        )
        node.thaw()  # comes back believing it is the master; the Sentinels demote it
        return at

    async def redis_master_sigkill(self, result: FaultResult) -> float:
        topology = self.stack.redis
        # The node thawed after the last fault must have resynced: it is the one failed over to.
        await asyncio.to_thread(topology.wait_stable, None, 30)
        node = topology.master()
        old = node.port
        topology.kill(node)
        at = time.monotonic()
        failed_over = await self._wait(lambda: _safe_master(topology) not in (None, old), 15)
        result.notes.append(
            f"Sentinel failover {'after %.1fs' % (time.monotonic() - at) if failed_over else 'did not happen'}"
        )
        await asyncio.to_thread(topology.restart_as_replica, node)
        return at

    async def postgres_restart(self, result: FaultResult) -> float:
        at = time.monotonic()
        await asyncio.to_thread(self.stack.pg.stop, "fast")
        await asyncio.sleep(2)
        await asyncio.to_thread(self.stack.pg.start)
        return at

    async def redis_master_demoted(self, result: FaultResult) -> float:
        topology = self.stack.redis
        await asyncio.to_thread(topology.wait_stable, None, 30)
        at = time.monotonic()
        await asyncio.to_thread(topology.demote_master)
        result.notes.append(f"old master demoted in place {time.monotonic() - at:.1f}s after SENTINEL FAILOVER")
        return at

    async def redis_restarted_empty(self, result: FaultResult) -> float:
        topology = self.stack.redis
        await asyncio.to_thread(topology.wait_stable, None, 30)
        at = time.monotonic()
        await asyncio.to_thread(topology.restart_master_empty)
        return at

    async def reconnect_burst(self, result: FaultResult) -> float:
        at = time.monotonic()
        for c in self.clients:
            c.drop()
        return at

    # --- the whole run -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        sampler = asyncio.create_task(self._sample())
        tasks = [asyncio.create_task(c.run(self.stop, self.sending, self.deadline)) for c in self.clients]
        try:
            steady = FaultResult("steady state", time.monotonic())
            await self._wait(lambda: all(c.connected for c in self.clients), 30)
            await asyncio.sleep(STEADY_SECONDS)
            await self._settle_and_check(steady)
            steady.ended = time.monotonic()
            self.results.append(steady)
            for name, inject in [
                ("instance SIGKILL", self.instance_sigkill),
                ("rolling SIGTERM deploy (3 instances)", self.rolling_deploy),
                ("Redis master SIGSTOP (Sentinel failover)", self.redis_master_sigstop),
                ("Redis master SIGKILL (Sentinel failover)", self.redis_master_sigkill),
                ("Redis master demoted in place (READONLY)", self.redis_master_demoted),
                ("Redis master restarted empty (no failover)", self.redis_restarted_empty),
                ("PostgreSQL restart", self.postgres_restart),
                ("reconnect burst (every client at once)", self.reconnect_burst),
            ]:
                await self.fault(name, inject)
        finally:
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            sampler.cancel()
        return self.report()

    def report(self) -> dict[str, Any]:
        acks = sorted(t for c in self.clients for t, _ in c.ack_times)
        return {
            "clients": len(self.clients),
            "conversations": len(self.members),
            "duration_s": round(time.monotonic() - self.t0, 1),
            "faults": [r.figures(self.t0) for r in self.results],
            "timeline": self.timeline,
            "acks": [round(t - self.t0, 3) for t in acks],
            "handshake_failures": sum(len(c.handshake_failures) for c in self.clients),
            "handshake_failure_kinds": sorted({k for c in self.clients for _, k in c.handshake_failures}),
            "sent": sum(c.sent for c in self.clients),
            "acked": sum(len(c.acked) for c in self.clients),
        }


def _safe_master(topology: Any) -> int | None:
    try:
        return int(topology.master_port())
    except Exception:
        return None


async def run_suite(work_dir: Path, out: Path) -> dict[str, Any]:
    random.seed(11)
    stack = ChaosStack(work_dir)
    try:
        await asyncio.to_thread(stack.start)
        report = await Run(stack).run()
    finally:
        await asyncio.to_thread(stack.stop)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report
