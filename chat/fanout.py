"""Per-process fan-out: one channel per instance, one subscription per group per instance.

A consumer does not hold a channel of its own. The instance's hub holds one channel, adds it to
the groups its local sockets need (``c.<conversation>``, ``u.<user>``, ``i.<instance>``), and
hands each arriving event to the local sockets: the frame is encoded once per instance, and no
database query, authorization or thread-pool hop happens per receiver.

It also keeps the guarantees on the delivery path:

* seq order per conversation: ``message.new`` events are released in seq order; a gap (an event
  published out of order, or lost while the layer reconnected) is held briefly and then filled
  from the database;
* never open and deaf: a watchdog sends a probe through the layer back to this instance; when
  probes fail, every local socket is closed with 1011 so clients resume elsewhere, and groups
  are re-added once the path works again (and periodically, for a Redis that restarted empty);
* typing ``start`` expires after TYPING_EXPIRY_SECONDS with a synthesised ``stop``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

from channels.layers import get_channel_layer
from django.conf import settings

from core import metrics
from core.db import db_call
from core.db import drain as db_drain
from presence import firestore

from . import revocation
from .events import conversation_group, user_group

if TYPE_CHECKING:
    from .consumers import ChatConsumer

logger = logging.getLogger("chat.fanout")

WATCHDOG_INTERVAL_SECONDS = 2.0
WATCHDOG_PROBE_TIMEOUT_SECONDS = 2.0
WATCHDOG_FAILURES_TO_CLOSE = 2
GROUP_REFRESH_SECONDS = 30.0
GAP_WAIT_SECONDS = 0.5
GAP_FETCH_MAX = 500
LAYER_OP_TIMEOUT_SECONDS = 3.0
CONNECT_CONCURRENCY = 64
PRESENCE_POLL_SECONDS = 0.5

CLOSE_FANOUT_LOST = 1011
CLOSE_SHUTDOWN = 1012


# Per-user presence versions remembered for deduplication; cleared wholesale at this size.
PRESENCE_SEEN_MAX = 100_000


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


class Hub:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self.layer: Any = None
        self.channel_name: str | None = None
        self.consumers: set[ChatConsumer] = set()
        self.by_conv: dict[str, set[ChatConsumer]] = defaultdict(set)
        self.by_user: dict[int, set[ChatConsumer]] = defaultdict(set)
        self.groups: set[str] = set()
        self.conv_seq: dict[str, int] = {}
        self.pending: dict[str, dict[int, tuple[dict[str, Any], str]]] = defaultdict(dict)
        self.gap_tasks: dict[str, asyncio.Task[None]] = {}
        self.typing_timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        self.presence_seen: dict[int, int] = {}  # user id -> last presence version delivered here
        self.probe_waiters: dict[str, asyncio.Future[None]] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.subscribing: dict[str, asyncio.Future[None]] = {}
        self.subscribe_queue: deque[str] = deque()
        self.subscriber: asyncio.Task[None] | None = None
        # Sockets doing their connect work (database, subscriptions, registry) at once; the
        # others wait for a slot instead of all crawling along on a saturated loop until
        # their Redis and database timeouts fire (a reconnect storm).
        self.connect_slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.healthy = True
        self.shutting_down = False
        self.started = False
        self._start_lock = asyncio.Lock() if self.loop else None

    @property
    def instance_group(self) -> str:
        return f"i.{settings.INSTANCE_ID}"

    def local_connection_count(self) -> int:
        return len(self.consumers)

    # --- lifecycle ----------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            # A new event loop (tests run one per test): nothing of the old one is usable.
            for task in self.tasks:
                task.cancel()
            self.loop = loop
            self._reset()
        if self.started:
            return
        assert self._start_lock is not None
        async with self._start_lock:
            if self.started:
                return
            self.layer = get_channel_layer()
            self.channel_name = await self.layer.new_channel(f"inst.{settings.INSTANCE_ID}.")
            await self._group_add(self.instance_group)
            # A fresh context: the tasks must not inherit the ids of the socket that started them.
            self.tasks = [
                loop.create_task(coro, name=name, context=contextvars.Context())
                for name, coro in [
                    ("fanout-receive", self._receive_loop()),
                    ("fanout-watchdog", self._watchdog_loop()),
                    ("registry-heartbeat", self._heartbeat_loop()),
                    ("presence-offline", self._presence_loop()),
                    ("firestore-sync", firestore.run_sync_loop()),
                    ("credential-check", revocation.run_credential_check_loop(self)),
                ]
            ]
            self._install_sigterm()
            self.started = True
            logger.info("fan-out hub started", extra={"channel": self.channel_name, "mode": settings.CHAT_MODE})

    def _install_sigterm(self) -> None:
        """Chain onto the server's SIGTERM handler: close our sockets with 1012 and leave the
        registry first, then let the server (daphne or uvicorn) run its own shutdown."""
        try:
            previous = signal.getsignal(signal.SIGTERM)
        except ValueError:
            return
        loop = self.loop
        assert loop is not None

        def handler(signum: int, frame: Any) -> None:
            # The contract's bound is 10 s: whatever hangs past 9 s (a worker thread waiting on a
            # stopped loop, a server waiting on a peer) does not keep the process alive.
            timer = threading.Timer(9.0, os._exit, args=(0,))
            timer.daemon = True
            timer.start()

            async def run() -> None:
                try:
                    await asyncio.wait_for(self.shutdown(), timeout=5)
                except Exception:
                    logger.exception("shutdown cleanup failed")
                finally:
                    if callable(previous):
                        previous(signum, frame)
                    else:
                        raise SystemExit(0)

            loop.call_soon_threadsafe(lambda: loop.create_task(run()))

        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (tests)
            pass

    async def shutdown(self) -> None:
        """Close every local socket with 1012 and remove this instance from the registry."""
        if self.shutting_down:
            return
        self.shutting_down = True
        logger.info("instance shutting down", extra={"connections": len(self.consumers)})
        for consumer in list(self.consumers):
            consumer.close_with(CLOSE_SHUTDOWN)
        left = await db_drain(3.0)
        if left:
            logger.warning("database calls still running at shutdown", extra={"count": left})
        from presence.registry import get_registry

        try:
            await asyncio.wait_for(get_registry().deregister_instance(), timeout=3)
        except Exception:
            logger.exception("registry deregistration failed")

    # --- membership ---------------------------------------------------------------------------

    async def _group_add(self, group: str) -> None:
        """Subscribe this instance to ``group`` (once, however many sockets need it). The
        subscriptions are made by one task, in a row: during a reconnect storm a thousand
        connecting sockets would otherwise each queue for the layer's lock, one event-loop turn
        per hand-over, and time out. A group is marked only once subscribed: a failed add leaves
        it unmarked, so the next socket that needs it tries again."""
        if group in self.groups:
            return
        waiter = self.subscribing.get(group)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            # Retrieved here, so a failure nobody waits for any more is not reported as lost.
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            self.subscribing[group] = waiter
            self.subscribe_queue.append(group)
            if self.subscriber is None:
                self.subscriber = asyncio.get_running_loop().create_task(
                    self._subscribe_queued(), context=contextvars.Context()
                )
        await asyncio.wait_for(asyncio.shield(waiter), LAYER_OP_TIMEOUT_SECONDS)

    async def _subscribe_queued(self) -> None:
        try:
            while self.subscribe_queue:
                group = self.subscribe_queue.popleft()
                # The waiter stays listed until the subscribe is done, so a socket that needs
                # the group meanwhile waits for this one instead of subscribing again.
                waiter = self.subscribing[group]
                try:
                    # No task per subscribe (as wait_for would make): a subscribe that needs no
                    # wait runs inline, so a queue of them is drained in one turn of the loop.
                    async with asyncio.timeout(LAYER_OP_TIMEOUT_SECONDS):
                        await self.layer.group_add(group, self.channel_name)
                except Exception as exc:
                    metrics.LAYER_ERRORS.labels(op="group_add").inc()
                    del self.subscribing[group]
                    waiter.set_exception(exc)
                    continue
                del self.subscribing[group]
                if self._wanted(group):
                    self.groups.add(group)
                else:  # its last socket left while the subscription was queued
                    await self._group_discard(group)
                waiter.set_result(None)
        finally:
            self.subscriber = None

    def _wanted(self, group: str) -> bool:
        # The instance group always; a user or conversation group while a local socket needs it.
        return group == self.instance_group or bool(self._targets(group))

    async def _group_discard(self, group: str) -> None:
        self.groups.discard(group)
        try:
            await asyncio.wait_for(self.layer.group_discard(group, self.channel_name), LAYER_OP_TIMEOUT_SECONDS)
        except Exception:
            metrics.LAYER_ERRORS.labels(op="group_discard").inc()

    async def register(self, consumer: ChatConsumer, conversations: dict[str, int]) -> None:
        """Route events of the user and of ``conversations`` ({id: last seq}) to ``consumer``."""
        await self.ensure_started()
        self.consumers.add(consumer)
        metrics.CONNECTIONS.set(len(self.consumers))
        new_groups = []
        self.by_user[consumer.user_id].add(consumer)
        if user_group(consumer.user_id) not in self.groups:
            new_groups.append(user_group(consumer.user_id))
        for cid, last_seq in conversations.items():
            if cid not in self.by_conv:
                # A new subscription starts at the database's seq: events published before it
                # carry seqs up to last_seq, which the client gets through resume. An existing
                # one keeps its cursor (moving it could skip messages still being reordered).
                self.conv_seq[cid] = last_seq
            self.by_conv[cid].add(consumer)
            if conversation_group(cid) not in self.groups:
                new_groups.append(conversation_group(cid))
        if len(new_groups) == 1:
            await self._group_add(new_groups[0])
        elif new_groups:
            # All queued at once (one subscriber task makes them in a row), then awaited.
            await asyncio.gather(*(self._group_add(group) for group in new_groups))

    async def unregister(self, consumer: ChatConsumer) -> None:
        self.consumers.discard(consumer)
        metrics.CONNECTIONS.set(len(self.consumers))
        members = self.by_user.get(consumer.user_id)
        if members is not None:
            members.discard(consumer)
            if not members:
                del self.by_user[consumer.user_id]
                await self._group_discard(user_group(consumer.user_id))
        for cid in list(consumer.conversations):
            await self._leave(consumer, cid)

    async def _join(self, consumer: ChatConsumer, cid: str, last_seq: int) -> None:
        consumer.conversations.add(cid)
        if cid not in self.by_conv:
            self.conv_seq[cid] = last_seq
        self.by_conv[cid].add(consumer)
        if conversation_group(cid) not in self.groups:
            await self._group_add(conversation_group(cid))

    async def _leave(self, consumer: ChatConsumer, cid: str) -> None:
        consumer.conversations.discard(cid)
        members = self.by_conv.get(cid)
        if members is None:
            return
        members.discard(consumer)
        if not members:
            del self.by_conv[cid]
            self.conv_seq.pop(cid, None)
            self.pending.pop(cid, None)
            task = self.gap_tasks.pop(cid, None)
            if task:
                task.cancel()
            await self._group_discard(conversation_group(cid))

    # --- receiving ----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.LAYER_ERRORS.labels(op="receive").inc()
                logger.exception("channel layer receive failed")
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle(message)
            except Exception:
                logger.exception("fan-out of an event failed", extra={"event_type": message.get("type")})

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "probe":
            waiter = self.probe_waiters.pop(message.get("id", ""), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if kind != "fanout":
            return
        if "presence" in message:
            self._presence(message)
            return
        group: str = message.get("group", "")
        control = message.get("control")
        frame = message.get("frame")
        # A join routes the frame to the new member; a leave still tells the leaving member.
        if control and control.get("op") == "join":
            await self._apply_control(control)
        targets = list(self._targets(group)) if frame is not None else []
        if control and control.get("op") != "join":
            await self._apply_control(control)
        if frame is None:
            return
        if frame.get("type") == "message.new":
            self._message_new(frame)
            return
        if frame.get("type") == "typing":
            self._typing_timer(frame)
        if not targets:
            return
        text = encode(frame)
        exclude, only = message.get("exclude_user"), message.get("only_user")
        frame_type = frame.get("type", "")
        for consumer in targets:
            if exclude is not None and consumer.user_id == exclude:
                continue
            if only is not None and consumer.user_id != only:
                continue
            consumer.push(text, frame_type)

    def _presence(self, message: dict[str, Any]) -> None:
        """One presence change, which arrives once per conversation group of the user (and the
        user's group) that this instance subscribes to: the first copy delivers, the others and
        anything older than what was delivered are dropped. Every local socket that shares a
        conversation with the user gets the public view once; the user's own sockets get the
        private one."""
        info = message["presence"]
        user_id, version = int(info["user_id"]), int(info["version"])
        if self.presence_seen.get(user_id, -1) >= version:
            return
        if len(self.presence_seen) >= PRESENCE_SEEN_MAX:
            # A copy delivered twice after this is harmless: clients keep the highest version.
            self.presence_seen.clear()
        self.presence_seen[user_id] = version
        own = self.by_user.get(user_id, ())
        if own:
            text = encode(message["private"])
            for consumer in own:
                consumer.push(text, "presence")
        audience: set[ChatConsumer] = set()
        for cid in info["conversation_ids"]:
            members = self.by_conv.get(cid)
            if members:
                audience.update(members)
        if not audience:
            return
        text = encode(message["frame"])
        for consumer in audience:
            if consumer.user_id != user_id:
                consumer.push(text, "presence")

    def _targets(self, group: str) -> set[ChatConsumer]:
        kind, _, ident = group.partition(".")
        if kind == "c":
            return self.by_conv.get(ident, set())
        if kind == "u":
            try:
                return self.by_user.get(int(ident), set())
            except ValueError:
                return set()
        if kind == "i":
            return self.consumers
        return set()

    async def _apply_control(self, control: dict[str, Any]) -> None:
        op, user_id = control.get("op"), control.get("user_id")
        consumers = list(self.by_user.get(user_id, ())) if isinstance(user_id, int) else []
        if op == "join":
            cid = str(control["conversation_id"])
            for consumer in consumers:
                await self._join(consumer, cid, int(control.get("last_seq", 0)))
        elif op == "leave":
            cid = str(control["conversation_id"])
            for consumer in consumers:
                if cid in consumer.conversations:
                    await self._leave(consumer, cid)
        elif op == "disconnect":
            for consumer in consumers:
                consumer.close_with(int(control.get("code", 4000)))

    # --- ordered message delivery ---------------------------------------------------------------

    def _message_new(self, frame: dict[str, Any]) -> None:
        msg = frame["message"]
        cid, seq = msg["conversation_id"], int(msg["seq"])
        if cid not in self.by_conv:
            return
        last = self.conv_seq.get(cid, 0)
        if seq <= last:
            return  # already delivered, or older than what sockets here resumed from
        if seq > last + 1:
            self.pending[cid][seq] = (frame, encode(frame))
            if cid not in self.gap_tasks:
                self.gap_tasks[cid] = asyncio.get_running_loop().create_task(self._fill_gap(cid))
            return
        self._deliver_message(cid, seq, frame, encode(frame))
        self._release_pending(cid)

    def _deliver_message(self, cid: str, seq: int, frame: dict[str, Any], text: str) -> None:
        self.conv_seq[cid] = seq
        created = frame["message"].get("created_at")
        if created:
            metrics.observe_fanout(created)
        for consumer in list(self.by_conv.get(cid, ())):
            consumer.push_message(cid, seq, text)

    def _release_pending(self, cid: str) -> None:
        held = self.pending.get(cid)
        while held:
            nxt = self.conv_seq.get(cid, 0) + 1
            if nxt not in held:
                # Drop anything already behind the cursor; keep waiting for the gap otherwise.
                for stale in [s for s in held if s < nxt]:
                    held.pop(stale)
                break
            frame, text = held.pop(nxt)
            self._deliver_message(cid, nxt, frame, text)
        if not held:
            self.pending.pop(cid, None)
            task = self.gap_tasks.get(cid)
            if task is not None and task is not asyncio.current_task():
                self.gap_tasks.pop(cid, None)
                task.cancel()

    async def _fill_gap(self, cid: str, upto: int = 0) -> None:
        """Seqs are missing: wait briefly for their events, then read them from the database
        (all of them up to the highest held seq, or up to ``upto`` for a catch-up)."""
        from .events import message_dict
        from .selectors import messages_after

        try:
            if not upto:
                await asyncio.sleep(GAP_WAIT_SECONDS)
            while cid in self.by_conv:
                last = self.conv_seq.get(cid, 0)
                held = self.pending.get(cid, {})
                end = max([upto, *(seq - 1 for seq in held)])
                if end <= last:
                    break
                rows = await db_call(messages_after)(
                    conversation_id=cid, after_seq=last, limit=min(end - last, GAP_FETCH_MAX)
                )
                if cid not in self.by_conv:
                    break
                held = self.pending[cid]
                for row in rows:
                    frame = {"type": "message.new", "message": message_dict(row)}
                    held.setdefault(row.seq, (frame, encode(frame)))
                if self.conv_seq.get(cid, 0) == last and last + 1 not in held:
                    # Only when rows were deleted: skip forward rather than stall the
                    # conversation (clients page over HTTP by seq).
                    logger.warning("seq gap not fillable; skipping", extra={"conversation_id": cid, "seq": last + 1})
                    self.conv_seq[cid] = (min(held) - 1) if held else end
                self._release_pending(cid)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("gap fill failed", extra={"conversation_id": cid})
        finally:
            if self.gap_tasks.get(cid) is asyncio.current_task():
                self.gap_tasks.pop(cid, None)

    # --- typing expiry --------------------------------------------------------------------------

    def _typing_timer(self, frame: dict[str, Any]) -> None:
        key = (str(frame.get("conversation_id")), int(frame.get("user_id", 0)))
        timer = self.typing_timers.pop(key, None)
        if timer:
            timer.cancel()
        if frame.get("state") == "start" and self.loop is not None:
            self.typing_timers[key] = self.loop.call_later(settings.TYPING_EXPIRY_SECONDS, self._typing_expired, key)

    def _typing_expired(self, key: tuple[str, int]) -> None:
        self.typing_timers.pop(key, None)
        cid, user_id = key
        frame = {"type": "typing", "conversation_id": cid, "user_id": user_id, "state": "stop"}
        text = encode(frame)
        for consumer in list(self.by_conv.get(cid, ())):
            if consumer.user_id != user_id:
                consumer.push(text, "typing")

    # --- watchdog and registry heartbeat ----------------------------------------------------------

    async def probe(self, timeout: float = WATCHDOG_PROBE_TIMEOUT_SECONDS) -> float:
        """A real round trip through the layer's group delivery back to this instance.
        Returns the latency in seconds; raises on timeout or a layer error."""
        await self.ensure_started()
        assert self.loop is not None
        probe_id = uuid.uuid4().hex
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.probe_waiters[probe_id] = waiter
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await self.layer.group_send(
                    self.instance_group, {"type": "probe", "id": probe_id, "group": self.instance_group}
                )
                await waiter
        finally:
            self.probe_waiters.pop(probe_id, None)
        return time.perf_counter() - started

    async def _watchdog_loop(self) -> None:
        failures = 0
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            try:
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                metrics.LAYER_ERRORS.labels(op="probe").inc()
                logger.warning("fan-out probe failed", extra={"failures": failures, "error": exc.__class__.__name__})
                if failures >= WATCHDOG_FAILURES_TO_CLOSE and self.healthy:
                    self.healthy = False
                    logger.error("fan-out path lost; closing local sockets", extra={"sockets": len(self.consumers)})
                    for consumer in list(self.consumers):
                        consumer.close_with(CLOSE_FANOUT_LOST)
                # A Redis that restarted empty forgot our groups (core layer): the probe only
                # passes again once they are back. Stops at the first error (bounded).
                await self._refresh_groups()
                continue
            if failures or not self.healthy:
                logger.info("fan-out path back", extra={"after_failures": failures})
                metrics.LAYER_RECONNECTS.inc()
                await self._refresh_groups()
                await self._catch_up()
                last_refresh = time.monotonic()
            failures = 0
            self.healthy = True
            if time.monotonic() - last_refresh > GROUP_REFRESH_SECONDS:
                await self._refresh_groups()
                await self._catch_up()
                last_refresh = time.monotonic()

    async def _refresh_groups(self) -> None:
        """Re-add every group: a Redis that restarted empty forgot them (core layer)."""
        for group in list(self.groups):
            try:
                await asyncio.wait_for(self.layer.group_add(group, self.channel_name), LAYER_OP_TIMEOUT_SECONDS)
            except Exception:
                metrics.LAYER_ERRORS.labels(op="group_add").inc()
                return

    async def _catch_up(self) -> None:
        """Deliver messages that were committed but whose events never arrived (published while
        the layer was reconnecting): one query for the whole instance, then the gap path."""
        cids = list(self.by_conv)
        if not cids:
            return
        try:
            latest = await db_call(_latest_seqs)(cids)
        except Exception as exc:
            logger.warning("catch-up query failed", extra={"error": exc.__class__.__name__})
            return
        for cid, seq in latest.items():
            if cid in self.by_conv and seq > self.conv_seq.get(cid, 0):
                logger.info("catching up missed messages", extra={"conversation_id": cid, "upto": seq})
                if cid not in self.gap_tasks:
                    self.gap_tasks[cid] = asyncio.get_running_loop().create_task(self._fill_gap(cid, upto=seq))

    async def _heartbeat_loop(self) -> None:
        from presence.registry import get_registry

        registry = get_registry()
        while True:
            try:
                rewritten = await registry.heartbeat([c.registry_entry for c in self.consumers if c.registry_entry])
                if rewritten and self.consumers:
                    logger.warning("registry entries were missing; re-registered", extra={"count": len(self.consumers)})
                reaped = await registry.reap_dead()
                if reaped:
                    metrics.REGISTRY_REAPS.inc(len(reaped))
                    logger.info("reaped connections of dead instances", extra={"count": len(reaped)})
                    await self.on_reaped(reaped)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("registry heartbeat failed", extra={"error": exc.__class__.__name__})
            await asyncio.sleep(settings.INSTANCE_HEARTBEAT_SECONDS)

    async def on_reaped(self, reaped: list[tuple[str, int]]) -> None:
        """Users whose connections died with their instance were scheduled for offline by the
        reap itself (after the grace period, unless they reconnect); nothing more to do here."""

    async def _presence_loop(self) -> None:
        """Finish grace periods: any living instance takes users whose grace ended (even when
        the instance that started it died) and makes them offline."""
        from presence.registry import get_registry
        from presence.services import went_offline

        registry = get_registry()
        while True:
            await asyncio.sleep(PRESENCE_POLL_SECONDS)
            try:
                for user_id in await registry.due_offline():
                    await db_call(went_offline)(user_id=user_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("presence offline round failed", extra={"error": exc.__class__.__name__})


def _latest_seqs(cids: list[str]) -> dict[str, int]:
    from .models import Conversation

    return {str(cid): seq for cid, seq in Conversation.objects.filter(pk__in=cids).values_list("id", "last_seq")}


hub = Hub()
