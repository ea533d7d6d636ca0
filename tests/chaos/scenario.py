"""The chaos run: clients chat the whole time while faults are injected one after another; after
each, the run waits for recovery, lets the traffic settle and checks the invariants.

Figures per fault (written to ``failover.json`` with the timeline for the picture):

* ``fresh_ack_p50_s`` / ``fresh_ack_max_s``: from the fault (the last signal of an injection that
  has several) until each client has an acknowledgement of a message it sent after that moment;
* ``reconnects``: client reconnects during the fault's window;
* ``lost``: acknowledged messages not stored, or stored ones some participant never received;
* ``duplicates``: one client_msg_id stored or acknowledged under two seqs, or a seq delivered
  with two different message ids;
* ``details``: what a fault checks of its own (the close codes of a cut-off instance's sockets,
  how long Firestore statuses took to catch up, ...).

Two runs: on Sentinel (every fault), and on a Redis Cluster (master SIGKILL, master SIGSTOP, a
slot reshard under traffic).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clients import Client
from .stack import CUT_INSTANCE, ChaosStack

log = logging.getLogger("chaos")

RECOVERY_TIMEOUT_SECONDS = 20.0
SETTLE_TIMEOUT_SECONDS = 20.0
STEADY_SECONDS = 3.0
RUN_BOUND_SECONDS = 480.0
# Short fault windows keep the suite within CI's budget: the minute of Firestore outage
# is 10 s here (four retry rounds of the status sync, with its backoff, fail meanwhile).
FIRESTORE_OUTAGE_SECONDS = 10.0
STATUS_CATCH_UP_TIMEOUT_SECONDS = 45.0
HEALTH_TIMEOUT_SECONDS = 15.0
# A user reaped while connected is written back by its instance's next heartbeat.
PRESENCE_TIMEOUT_SECONDS = 15.0

CUT_FAULT = "one instance cut off from Redis only (nftables)"
FIRESTORE_FAULT = f"Firestore emulator stopped {FIRESTORE_OUTAGE_SECONDS:.0f} s"
CLUSTER_KILL_FAULT = "Redis Cluster master SIGKILL (replica takes over)"
CLUSTER_FREEZE_FAULT = "Redis Cluster master SIGSTOP (replica takes over)"
CLUSTER_RESHARD_FAULT = "Redis Cluster slot reshard under traffic"


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
    details: dict[str, Any] = field(default_factory=dict)

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
            "details": self.details,
        }


Inject = Callable[[FaultResult], Awaitable[float]]
Heal = Callable[[FaultResult], Awaitable[None]]


class Run:
    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self.skipped: dict[str, str] = {}
        self._cut_others: list[Client] = []
        self._beside: list[asyncio.Task[None]] = []  # checks that run on beside later faults
        self._cut_at = self._outage_at = 0.0
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
            await self._check_presence(result)
        finally:
            self.sending.set()

    async def _check_presence(self, result: FaultResult) -> None:
        """Every user whose client is connected is online in the database (what contacts and
        Firestore are shown), once the registry's heartbeat and the online batch caught up."""
        deadline = time.monotonic() + PRESENCE_TIMEOUT_SECONDS
        while True:
            users = sorted({c.user_id for c in self.clients if c.connected})
            online = await asyncio.to_thread(self.stack.online_users, users)
            offline = [u for u in users if u not in online]
            if not offline:
                return
            if time.monotonic() >= deadline:
                result.violations.append(
                    f"{len(offline)} users connected but offline {PRESENCE_TIMEOUT_SECONDS:.0f}s after the fault"
                    f" settled: {offline[:10]}"
                )
                return
            await asyncio.sleep(0.5)

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

    async def fault(self, name: str, inject: Inject, heal: Heal | None = None) -> FaultResult:
        """Inject (``inject`` returns the moment recovery is measured from), wait for recovery,
        settle, check; then ``heal`` ends a fault that lasts until it is undone (a cut)."""
        log.warning("fault: %s", name)
        result = FaultResult(name, time.monotonic())
        reconnects = self._reconnects()
        result.injected = await inject(result)
        await self._recovered(result, result.injected)
        await self._settle_and_check(result)
        if heal is not None:
            await heal(result)
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

    async def _health(self, name: str) -> tuple[int, dict[str, Any]]:
        """GET /api/health of one instance, straight (not through nginx): (status, body)."""

        def get() -> tuple[int, dict[str, Any]]:
            url = self.stack.servers[name].url + "/api/health"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read() or b"{}")
            except (OSError, ValueError):
                return 0, {}

        return await asyncio.to_thread(get)

    async def _wait_health(self, name: str, status: int, timeout: float) -> tuple[float | None, dict[str, Any]]:
        """Poll an instance's health until it answers ``status``: (seconds it took or None, body)."""
        started = time.monotonic()
        body: dict[str, Any] = {}
        while time.monotonic() - started < timeout:
            code, body = await self._health(name)
            if code == status:
                return time.monotonic() - started, body
            await asyncio.sleep(0.2)
        return None, body

    async def instance_cut_off_from_redis(self, result: FaultResult) -> float:
        """Instance c loses Redis (nodes and Sentinels) while nginx, PostgreSQL and the other
        instances still reach it: its watchdog must close its sockets with 1011 and report
        unhealthy, so clients resume on a and b; a and b keep their sockets."""
        cut = self.stack.cut
        assert cut is not None
        name = CUT_INSTANCE
        on_it = [c for c in self.clients if c.instance == name and c.connected]
        others = [c for c in self.clients if c.instance != name and c.connected]
        await asyncio.to_thread(cut.cut, self.stack.redis_ports())
        at = time.monotonic()
        result.notes.append(f"{len(on_it)} clients were on the cut-off instance")
        took, body = await self._wait_health(name, 503, HEALTH_TIMEOUT_SECONDS)
        if took is None:
            result.violations.append(f"health of the cut-off instance never answered 503 (last: {body})")

        def closed(c: Client) -> bool:
            return any(t >= at and instance == name for t, instance, _ in c.closes)

        await self._wait(lambda: all(closed(c) for c in on_it), HEALTH_TIMEOUT_SECONDS)
        codes = [code for c in on_it for t, instance, code in c.closes if t >= at and instance == name]
        wrong = [code for code in codes if code != 1011]
        if not on_it:
            result.violations.append("no client was on the instance cut off (nothing to observe)")
        if len(codes) < len(on_it) or wrong:
            result.violations.append(
                f"sockets of the cut-off instance: {len(codes)} of {len(on_it)} closed, codes other than 1011: {wrong}"
            )
        closes = [t - at for c in on_it for t, instance, _ in c.closes if t >= at and instance == name]
        result.details.update(
            clients_on_instance=len(on_it),
            close_codes=sorted(set(codes), key=str),
            sockets_closed=len(codes),
            last_close_s=round(max(closes), 2) if closes else None,
            health_503_after_s=round(took, 2) if took is not None else None,
            health_body=body,
        )
        self._cut_others, self._cut_at = others, at
        return at

    async def heal_cut(self, result: FaultResult) -> None:
        cut = self.stack.cut
        assert cut is not None
        name = CUT_INSTANCE
        # While cut, every client has resumed on another instance, and none of a's and b's
        # sockets was closed.
        back_on_it = [c.index for c in self.clients if c.connected and c.instance == name]
        others_closed = [c.index for c in self._cut_others if any(t >= self._cut_at for t, _, _ in c.closes)]
        if back_on_it:
            result.violations.append(f"clients connected to the cut-off instance: {back_on_it}")
        if others_closed:
            result.violations.append(f"clients of the other instances were closed meanwhile: {others_closed}")
        result.details.update(
            clients_on_cut_instance_while_cut=len(back_on_it),
            other_instances_sockets_closed=len(others_closed),
            resumed_on=sorted({c.instance or "?" for c in self.clients if c.connected}),
        )
        await asyncio.to_thread(cut.heal)

        async def healthy_again() -> None:
            # Its connections resume at TCP's next retransmission (backed off during the cut):
            # checked beside the next fault rather than waited for here.
            took, body = await self._wait_health(name, 200, 30)
            result.details["healthy_again_after_s"] = round(took, 2) if took is not None else None
            if took is None:
                result.violations.append(f"the instance did not turn healthy after the cut was healed (last: {body})")

        self._beside.append(asyncio.create_task(healthy_again()))

    async def firestore_outage(self, result: FaultResult) -> float:
        """The emulator stopped under traffic for FIRESTORE_OUTAGE_SECONDS; every client sets a
        status meanwhile. Chat goes on untouched: no error frame at all, health degraded (200)."""
        emulator = self.stack.firestore
        assert emulator is not None
        await asyncio.to_thread(emulator.stop)
        at = time.monotonic()
        self._outage_at = at
        for c in self.clients:
            await c.set_status("busy", f"chaos {c.index} during the outage")
        acked = await self._wait(
            lambda: all(c.status_ack is not None and c.status_ack[0] >= at for c in self.clients),
            HEALTH_TIMEOUT_SECONDS,
        )
        if not acked:
            missing = [c.index for c in self.clients if c.status_ack is None or c.status_ack[0] < at]
            result.violations.append(f"status.set not acknowledged during the outage: {missing}")
        await asyncio.sleep(2.5)  # the health check's Firestore read fails within its 2 s timeout
        code, body = await self._health("a")
        firestore = body.get("services", {}).get("firestore", {}).get("status")
        result.details.update(health_during_outage=code, health_status=body.get("status"), firestore=firestore)
        if code != 200 or firestore != "down":
            result.violations.append(
                f"health during the outage: HTTP {code}, {body.get('status')}, firestore {firestore}"
            )
        await asyncio.sleep(max(0.0, FIRESTORE_OUTAGE_SECONDS - (time.monotonic() - at)))
        errors = [f for c in self.clients for t, f in c.error_frames if t >= at]
        if errors:
            result.violations.append(f"error frames while Firestore was down: {errors[:5]}")
        result.details["error_frames"] = len(errors)
        return at

    async def heal_firestore(self, result: FaultResult) -> None:
        """Start the emulator again (empty, on the same port): every status changed during the
        outage must reach it at its latest version, with nobody doing anything."""
        emulator = self.stack.firestore
        assert emulator is not None
        await asyncio.to_thread(emulator.start)
        back = time.monotonic()
        result.details["outage_s"] = round(back - self._outage_at, 1)
        users = [c.user_id for c in self.clients]
        behind: dict[int, tuple[int, str, int | None]] = {}
        while time.monotonic() - back < STATUS_CATCH_UP_TIMEOUT_SECONDS:
            want = await asyncio.to_thread(self.stack.public_versions, users)
            docs = await asyncio.to_thread(_firestore_docs, emulator.host, emulator.project)
            have = {u: docs.get(u, {}).get("version") for u in want}
            behind = {u: (v, st, have[u]) for u, (v, st, _) in want.items() if have[u] != v}
            if not behind:
                shown = {u: (d["status"], d["text"]) for u, d in docs.items()}
                wrong = {u: shown[u] for u, (_, st, tx) in want.items() if shown[u] != (st, tx)}
                if wrong:
                    result.violations.append(f"Firestore documents unlike the stored status: {list(wrong.items())[:3]}")
                break
            await asyncio.sleep(0.5)
        took = time.monotonic() - back
        result.details.update(statuses=len(users), statuses_behind=len(behind), caught_up_after_s=round(took, 2))
        if behind:
            queued = await asyncio.to_thread(self.stack.outbox, list(behind))
            result.violations.append(
                f"{len(behind)} statuses not in Firestore {STATUS_CATCH_UP_TIMEOUT_SECONDS}s after it came back:"
                f" {list(behind.items())[:5]}; their outbox rows (version, attempts, error, due in s):"
                f" {list(queued.items())[:5]}, {len(behind) - len(queued)} of them not queued"
            )
        else:
            result.notes.append(f"{len(users)} statuses in Firestore {took:.1f}s after it was back")

    # --- Redis Cluster faults ----------------------------------------------------------------

    def _cluster(self) -> Any:
        assert self.stack.cluster is not None
        return self.stack.cluster

    def _group_slots(self) -> list[int]:
        # The shard channel of a conversation's group (realtime/bus.py, prefix "chat:layer").
        cluster = self._cluster()
        return [cluster.keyslot(f"chat:layer:g:c.{cid}") for cid in self.members]

    def _busiest_master(self) -> Any:
        """The master that serves the most of the conversations' shard channels."""
        cluster = self._cluster()
        counts: dict[int, int] = {}
        for slot in self._group_slots():
            port = cluster.master_of_slot(slot).port
            counts[port] = counts.get(port, 0) + 1
        return cluster.node_by_port(max(counts, key=lambda p: counts[p]))

    async def _cluster_master_fault(self, result: FaultResult, freeze: bool) -> float:
        cluster = self._cluster()
        node = await asyncio.to_thread(self._busiest_master)
        at = time.monotonic()
        fail = cluster.freeze_master if freeze else cluster.kill_master
        new = await asyncio.to_thread(fail, node, 20.0)
        result.notes.append(f"replica took over after {time.monotonic() - at:.1f}s")
        result.details.update(old_master=node.port, new_master=new.port)
        return at

    async def cluster_master_sigkill(self, result: FaultResult) -> float:
        return await self._cluster_master_fault(result, freeze=False)

    async def cluster_master_sigstop(self, result: FaultResult) -> float:
        return await self._cluster_master_fault(result, freeze=True)

    async def heal_cluster(self, result: FaultResult) -> None:
        """The failed node back (it rejoins as a replica), so the next fault has a full cluster."""
        started = time.monotonic()
        await asyncio.to_thread(self._cluster().heal, 30.0)
        result.details["healed_after_s"] = round(time.monotonic() - started, 2)

    async def cluster_reshard(self, result: FaultResult) -> float:
        """Move, under traffic, every slot that a conversation's shard channel or a registry
        shard ({s0}..{s15}) hashes to, each to the next master, keys included."""
        cluster = self._cluster()

        def reshard() -> int:
            slots = set(self._group_slots()) | {cluster.keyslot(f"{{s{n}}}") for n in range(16)}
            masters = sorted(cluster.masters(), key=lambda n: n.port)
            for slot in sorted(slots):
                source = cluster.master_of_slot(slot)
                target = masters[(masters.index(source) + 1) % len(masters)]
                cluster.move_slot(slot, target)
            return len(slots)

        at = time.monotonic()
        moved = await asyncio.to_thread(reshard)
        result.notes.append(f"{moved} slots moved in {time.monotonic() - at:.1f}s")
        result.details["slots_moved"] = moved
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
            for name, inject, heal in self.faults():
                await self.fault(name, inject, heal)
            await asyncio.gather(*self._beside)
        finally:
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            sampler.cancel()
        return self.report()

    def faults(self) -> list[tuple[str, Inject, Heal | None]]:
        """The faults of this run, in order; one that cannot be made here is in ``skipped``."""
        if self.stack.cluster is not None:
            return [
                (CLUSTER_KILL_FAULT, self.cluster_master_sigkill, self.heal_cluster),
                (CLUSTER_FREEZE_FAULT, self.cluster_master_sigstop, self.heal_cluster),
                (CLUSTER_RESHARD_FAULT, self.cluster_reshard, None),
            ]
        faults: list[tuple[str, Inject, Heal | None]] = [
            ("instance SIGKILL", self.instance_sigkill, None),
            ("rolling SIGTERM deploy (3 instances)", self.rolling_deploy, None),
            ("Redis master SIGSTOP (Sentinel failover)", self.redis_master_sigstop, None),
            ("Redis master SIGKILL (Sentinel failover)", self.redis_master_sigkill, None),
            ("Redis master demoted in place (READONLY)", self.redis_master_demoted, None),
            ("Redis master restarted empty (no failover)", self.redis_restarted_empty, None),
            ("PostgreSQL restart", self.postgres_restart, None),
            ("reconnect burst (every client at once)", self.reconnect_burst, None),
        ]
        if self.stack.cut is not None:
            faults.append((CUT_FAULT, self.instance_cut_off_from_redis, self.heal_cut))
        else:
            self.skipped[CUT_FAULT] = self.stack.cut_unavailable or "unavailable"
        if self.stack.firestore is not None:
            faults.append((FIRESTORE_FAULT, self.firestore_outage, self.heal_firestore))
        else:
            self.skipped[FIRESTORE_FAULT] = self.stack.firestore_missing or "unavailable"
        return faults

    def report(self) -> dict[str, Any]:
        acks = sorted(t for c in self.clients for t, _ in c.ack_times)
        return {
            "topology": "cluster" if self.stack.cluster is not None else "sentinel",
            "skipped": self.skipped,
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


def _firestore_docs(host: str, project: str) -> dict[int, dict[str, Any]]:
    """Every status document in the emulator (its REST API): user id -> version, status, text."""
    url = f"http://{host}/v1/projects/{project}/databases/(default)/documents/user_status?pageSize=1000"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            found = json.loads(resp.read()).get("documents", [])
    except (OSError, ValueError):
        return {}
    docs: dict[int, dict[str, Any]] = {}
    for doc in found:
        fields = doc.get("fields", {})
        docs[int(doc["name"].rsplit("/", 1)[1])] = {
            "version": int(fields.get("version", {}).get("integerValue", -1)),
            "status": fields.get("status", {}).get("stringValue"),
            "text": fields.get("text", {}).get("stringValue"),
        }
    return docs


def _safe_master(topology: Any) -> int | None:
    try:
        return int(topology.master_port())
    except Exception:
        return None


async def run_suite(work_dir: Path, out: Path, *, cluster: bool = False) -> dict[str, Any]:
    """One run: on Sentinel with every fault (the cut and the Firestore outage when this machine
    can make them), or on a Redis Cluster with the cluster's faults."""
    random.seed(11)
    stack = ChaosStack(work_dir, cluster=cluster, firestore=not cluster, cut=not cluster)
    try:
        await asyncio.to_thread(stack.start)
        report = await Run(stack).run()
    finally:
        await asyncio.to_thread(stack.stop)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report
