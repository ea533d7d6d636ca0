"""Who gets what on this instance: membership, subscriptions and delivery of envelopes.

A socket does not hold a channel of its own. The instance holds one channel on the bus, adds it
to the groups its local sockets need (``c.<conversation>``, ``u.<user>``, ``i.<instance>``), and
hands each arriving envelope to the local sessions of its audience: a frame is encoded once per
instance, and no database query, authorization or thread hop happens per receiver.

On the delivery path the router keeps these guarantees, each generic:

* ordered streams: envelopes with a ``seq`` go through the sequencer (seq order, gap fill);
* states that end by themselves: an envelope with ``expires`` is followed, unless replaced,
  by its expiry frame (typing ``start`` becomes ``stop`` after 10 s);
* facts delivered once: an envelope with ``versioned`` (presence) arrives through several
  groups; the first copy of each version is delivered, older ones are dropped;
* control: ``join``/``leave`` a conversation for a user's sockets, ``disconnect`` them.

The router owns membership: sessions never write their own routing state.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from core import metrics

from .bus import Bus, bus
from .protocol import Audience, Control, Envelope, conversation_group, encode, instance_group, user_group
from .sequencer import Sequencer
from .session import Session

logger = logging.getLogger("realtime.router")

# Subjects (users) whose last delivered version is remembered; cleared wholesale at this size.
VERSIONS_SEEN_MAX = 100_000

StreamFetch = Callable[[str, int, int], Awaitable[list[tuple[int, dict[str, Any]]]]]
LatestSeqs = Callable[[list[str]], Awaitable[dict[str, int]]]


async def _no_fetch(stream: str, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
    return []


async def _no_latest(streams: list[str]) -> dict[str, int]:
    return {}


class Router:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.fetch_stream: StreamFetch = _no_fetch
        self.latest_seqs: LatestSeqs = _no_latest
        self._reset()

    def set_stream_source(self, fetch: StreamFetch, latest: LatestSeqs) -> None:
        """Where the sequencer reads missed frames of a stream, and the latest seq of streams
        (the app that owns the streams: chat's messages)."""
        self.fetch_stream, self.latest_seqs = fetch, latest

    def _reset(self) -> None:
        self.sessions: set[Session] = set()
        self.by_topic: dict[str, set[Session]] = defaultdict(set)
        self.by_user: dict[int, set[Session]] = defaultdict(set)
        self.groups: set[str] = set()
        self.subscribing: dict[str, asyncio.Future[None]] = {}
        self.subscribe_queue: deque[str] = deque()
        self.subscriber: asyncio.Task[None] | None = None
        self.versions_seen: dict[Any, int] = {}
        self.expiry_timers: dict[str, asyncio.TimerHandle] = {}
        self.sequencer = Sequencer(self._fetch_frames, self._release_sequenced)
        self.healthy = True  # the watchdog's verdict on the fan-out path

    @property
    def instance_group(self) -> str:
        return instance_group(settings.INSTANCE_ID)

    def local_connection_count(self) -> int:
        return len(self.sessions)

    async def start(self) -> None:
        """Open this instance's channel and subscribe its group (a runtime start hook)."""
        for timer in self.expiry_timers.values():
            timer.cancel()
        self.sequencer.reset()
        self._reset()
        channel = await self.bus.open(f"inst.{settings.INSTANCE_ID}.")
        # Listed first, so that if Redis is away now the watchdog's resubscribe adds it later:
        # an instance that boots during an outage still starts its loops.
        self.groups.add(self.instance_group)
        try:
            await self.bus.subscribe(self.instance_group)
        except Exception as exc:  # noqa: BLE001
            metrics.LAYER_ERRORS.labels(op="group_add").inc()
            logger.warning("instance group not subscribed yet", extra={"error": exc.__class__.__name__})
        logger.info("router started", extra={"channel": channel, "mode": settings.CHAT_MODE})

    # --- subscriptions ------------------------------------------------------------------------

    async def _subscribe(self, group: str) -> None:
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
        async with asyncio.timeout(3.0):
            await asyncio.shield(waiter)

    async def _subscribe_queued(self) -> None:
        try:
            while self.subscribe_queue:
                # Everything queued so far in one go (one SUBSCRIBE per shard where the layer
                # can): a reconnect storm queues thousands, and one at a time each cost a turn
                # of a busy event loop. The waiters stay listed until the subscribe is done, so
                # a socket that needs a group meanwhile waits for this one.
                batch = list(self.subscribe_queue)
                self.subscribe_queue.clear()
                try:
                    await self.bus.subscribe_many(batch)
                except Exception as exc:  # noqa: BLE001
                    metrics.LAYER_ERRORS.labels(op="group_add").inc()
                    for group in batch:
                        self.subscribing.pop(group).set_exception(exc)
                    continue
                for group in batch:
                    waiter = self.subscribing.pop(group)
                    if self._wanted(group):
                        self.groups.add(group)
                    else:  # its last socket left while the subscription was queued
                        await self._unsubscribe(group)
                    waiter.set_result(None)
        finally:
            self.subscriber = None

    def _wanted(self, group: str) -> bool:
        # The instance group always; a user or conversation group while a local socket needs it.
        return group == self.instance_group or bool(self._targets(group))

    async def _unsubscribe(self, group: str) -> None:
        self.groups.discard(group)
        await self.bus.unsubscribe(group)

    async def resubscribe_all(self) -> bool:
        """Re-add every group (a Redis that restarted empty forgot them). False at the first
        error (bounded: the watchdog tries again)."""
        for group in list(self.groups):
            try:
                await self.bus.subscribe(group)
            except Exception:  # noqa: BLE001
                metrics.LAYER_ERRORS.labels(op="group_add").inc()
                return False
        return True

    # --- membership ---------------------------------------------------------------------------

    async def add(self, session: Session, topics: dict[str, int]) -> None:
        """Route the user's events and those of ``topics`` ({conversation: last seq}) to ``session``."""
        self.sessions.add(session)
        metrics.CONNECTIONS.set(len(self.sessions))
        new_groups = []
        self.by_user[session.user_id].add(session)
        if user_group(session.user_id) not in self.groups:
            new_groups.append(user_group(session.user_id))
        for topic, last_seq in topics.items():
            session.topics.add(topic)
            # A new subscription starts at the database's seq: events published before it carry
            # seqs up to last_seq, which the client gets through resume.
            self.sequencer.open(topic, last_seq)
            self.by_topic[topic].add(session)
            if conversation_group(topic) not in self.groups:
                new_groups.append(conversation_group(topic))
        if len(new_groups) == 1:
            await self._subscribe(new_groups[0])
        elif new_groups:
            # All queued at once (one subscriber task makes them in a row), then awaited.
            await asyncio.gather(*(self._subscribe(group) for group in new_groups))

    async def remove(self, session: Session) -> None:
        self.sessions.discard(session)
        metrics.CONNECTIONS.set(len(self.sessions))
        members = self.by_user.get(session.user_id)
        if members is not None:
            members.discard(session)
            if not members:
                del self.by_user[session.user_id]
                await self._unsubscribe(user_group(session.user_id))
        for topic in list(session.topics):
            await self._leave(session, topic)

    async def _join(self, session: Session, topic: str, last_seq: int) -> None:
        session.topics.add(topic)
        self.sequencer.open(topic, last_seq)
        self.by_topic[topic].add(session)
        if conversation_group(topic) not in self.groups:
            await self._subscribe(conversation_group(topic))

    async def _leave(self, session: Session, topic: str) -> None:
        session.topics.discard(topic)
        members = self.by_topic.get(topic)
        if members is None:
            return
        members.discard(session)
        if not members:
            del self.by_topic[topic]
            self.sequencer.close(topic)
            await self._unsubscribe(conversation_group(topic))

    def close_all(self, code: int) -> int:
        sessions = list(self.sessions)
        for session in sessions:
            session.close(code)
        return len(sessions)

    # --- receiving ----------------------------------------------------------------------------

    async def receive_loop(self) -> None:
        """Deliver what the bus brings (a runtime loop)."""
        while True:
            try:
                message = await self.bus.receive()
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.LAYER_ERRORS.labels(op="receive").inc()
                logger.exception("bus receive failed")
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle(message)  # type: ignore[arg-type]
            except Exception:
                logger.exception("fan-out of an event failed", extra={"event_type": message.get("type")})

    async def handle(self, env: Envelope) -> None:
        if env.get("type") != "fanout":
            return
        if "versioned" in env:
            self._deliver_versioned(env)
            return
        control = env.get("control")
        frame = env.get("frame")
        # A join routes the frame to the new member; a leave still tells the leaving member.
        if control is not None and control["op"] == "join":
            await self._apply_control(control)
        audience = env["audience"]
        targets = list(self._audience(audience)) if frame is not None else []
        if control is not None and control["op"] != "join":
            await self._apply_control(control)
        if frame is None:
            return
        if "seq" in env:
            self.sequencer.offer(str(audience["id"]), int(env["seq"]), frame)
            return
        if "expires" in env:
            self._schedule_expiry(env)
        if not targets:
            return
        text = encode(frame)
        exclude, only = audience.get("exclude_user"), audience.get("only_user")
        frame_type = frame.get("type", "")
        for session in targets:
            if exclude is not None and session.user_id == exclude:
                continue
            if only is not None and session.user_id != only:
                continue
            session.push(text, frame_type)

    def _audience(self, audience: Audience | dict[str, Any]) -> set[Session]:
        kind, ident = audience["kind"], audience["id"]
        if kind == "conversation":
            return self.by_topic.get(str(ident), set())
        if kind == "user":
            return self.by_user.get(int(ident), set())
        if kind == "instance":
            return self.sessions
        return set()

    def _targets(self, group: str) -> set[Session]:
        kind, _, ident = group.partition(".")
        if kind == "c":
            return self.by_topic.get(ident, set())
        if kind == "u":
            try:
                return self.by_user.get(int(ident), set())
            except ValueError:
                return set()
        if kind == "i":
            return self.sessions
        return set()

    def _deliver_versioned(self, env: Envelope) -> None:
        """One fact about a subject (a user's presence), which arrives once per group of it that
        this instance subscribes to: the first copy delivers, the others and anything older than
        what was delivered are dropped. Every local socket in one of its conversations gets the
        public frame once; the subject's own sockets get ``own_frame``."""
        info = env["versioned"]
        subject, version = int(info["user_id"]), int(info["version"])
        if self.versions_seen.get(subject, -1) >= version:
            return
        if len(self.versions_seen) >= VERSIONS_SEEN_MAX:
            # A copy delivered twice after this is harmless: clients keep the highest version.
            self.versions_seen.clear()
        self.versions_seen[subject] = version
        own = self.by_user.get(subject, ())
        frame = env["frame"]
        if own:
            text = encode(info["own_frame"])
            frame_type = info["own_frame"].get("type", "")
            for session in own:
                session.push(text, frame_type)
        audience: set[Session] = set()
        for topic in info["conversation_ids"]:
            members = self.by_topic.get(topic)
            if members:
                audience.update(members)
        if not audience or frame is None:
            return
        text = encode(frame)
        frame_type = frame.get("type", "")
        for session in audience:
            if session.user_id != subject:
                session.push(text, frame_type)

    async def _apply_control(self, control: Control) -> None:
        op, user_id = control["op"], control.get("user_id")
        sessions = list(self.by_user.get(user_id, ())) if isinstance(user_id, int) else []
        if op == "join":
            topic = str(control["conversation_id"])
            for session in sessions:
                await self._join(session, topic, int(control.get("last_seq", 0)))
        elif op == "leave":
            topic = str(control["conversation_id"])
            for session in sessions:
                if topic in session.topics:
                    await self._leave(session, topic)
        elif op == "disconnect":
            for session in sessions:
                session.close(int(control.get("code", 4000)))

    # --- ordered streams ----------------------------------------------------------------------

    async def _fetch_frames(self, stream: str, after: int, limit: int) -> list[tuple[int, Any]]:
        return [(seq, (frame, encode(frame))) for seq, frame in await self.fetch_stream(stream, after, limit)]

    def _release_sequenced(self, stream: str, seq: int, item: Any) -> None:
        frame, text = item if isinstance(item, tuple) else (item, encode(item))
        created = frame.get("message", {}).get("created_at")
        if created:
            metrics.observe_fanout(created)
        for session in list(self.by_topic.get(stream, ())):
            session.push_sequenced(stream, seq, text)

    async def catch_up(self) -> None:
        """Deliver items that were committed but whose envelopes never arrived (published while
        the bus was reconnecting): one query for the whole instance, then the gap path."""
        streams = list(self.by_topic)
        if not streams:
            return
        try:
            latest = await self.latest_seqs(streams)
        except Exception as exc:  # noqa: BLE001
            logger.warning("catch-up query failed", extra={"error": exc.__class__.__name__})
            return
        self.sequencer.catch_up(latest)

    async def sweep_lagging(self) -> None:
        """One query for the latest seq of every followed stream; the sequencer fills those
        still behind since the last sweep (see Sequencer.sweep)."""
        streams = list(self.by_topic)
        if not streams:
            self.sequencer.behind = {}
            return
        try:
            latest = await self.latest_seqs(streams)
        except Exception as exc:  # noqa: BLE001
            logger.warning("lag sweep query failed", extra={"error": exc.__class__.__name__})
            return
        self.sequencer.sweep(latest)

    # --- states that end by themselves --------------------------------------------------------

    def _schedule_expiry(self, env: Envelope) -> None:
        expires = env["expires"]
        key = str(expires["key"])
        timer = self.expiry_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        after = expires.get("after")
        if after is not None:
            audience = env["audience"]
            frame = expires["frame"]
            self.expiry_timers[key] = asyncio.get_running_loop().call_later(
                float(after), self._expired, key, dict(audience), frame
            )

    def _expired(self, key: str, audience: dict[str, Any], frame: dict[str, Any]) -> None:
        self.expiry_timers.pop(key, None)
        text = encode(frame)
        exclude = audience.get("exclude_user")
        for session in list(self._audience(audience)):
            if session.user_id != exclude:
                session.push(text, frame.get("type", ""))


router = Router(bus)
