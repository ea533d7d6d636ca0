"""The WebSocket interface at /ws/chat/: one socket per device, all the user's conversations.

Thin by design: parse a frame, call the same service as the HTTP view, answer ``ack`` or
``error``. Events arrive through the instance's hub (chat/fanout.py), not through a channel of
this consumer, and leave through a bounded queue drained by a writer task that runs only
while frames are queued: a client that reads too slowly is closed with 4008 instead of growing
this process's memory, and an idle socket holds no task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from core import metrics
from core.db import db_call
from core.errors import ApplicationError, Invalid, RateLimited, internal_error_body
from core.logging import connection_id_var, user_id_var
from presence import selectors as presence_selectors
from presence import services as presence_services
from presence.registry import Connection, get_registry

from . import selectors, services, socket_cap
from .events import iso, message_dict
from .fanout import CLOSE_FANOUT_LOST, CLOSE_SHUTDOWN, encode, hub
from .revocation import Credential, credential_for

logger = logging.getLogger("chat.ws")

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_DEACTIVATED = 4403
CLOSE_DISCONNECTED = 4000
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOO_BIG = 1009
CLOSE_ABUSE = 1008
CLOSE_ABNORMAL = 1006  # recorded, never sent: the socket was gone when a write failed

ABUSE_WINDOW_SECONDS = 10.0
ABUSE_MAX_STRIKES = 20
TOUCH_INTERVAL_SECONDS = 30.0

Handler = Callable[["ChatConsumer", dict[str, Any]], Awaitable[dict[str, Any] | None]]


def _conversation_seqs(user_id: int) -> dict[str, int]:
    from .models import Conversation

    return {
        str(cid): seq
        for cid, seq in Conversation.objects.filter(participants__user_id=user_id).values_list("id", "last_seq")
    }


class ChatConsumer(AsyncWebsocketConsumer):
    user_id: int
    connection_id: str
    registry_entry: Connection | None = None
    writer: asyncio.Task[None] | None = None
    drain_waiter: asyncio.Future[None] | None = None
    strikes: deque[float] | None = None
    credential: Credential | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' consumer loop without its per-consumer and per-frame extras: no channel of
        its own (the hub holds one per instance and fans out to local sockets), no task per
        receive, and no ``aclose_old_connections`` thread hop per frame (database work goes
        through ``db_call``, which manages connections in its worker thread)."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                message = await receive()
                handler = _ASGI_HANDLERS.get(message["type"])
                if handler is None:
                    raise ValueError(f"No handler for message type {message['type']}")
                await handler(self, message)
        except StopConsumer:
            pass

    # --- connection lifecycle -------------------------------------------------------------------

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.connection_id = str(uuid.uuid4())
        self.connected_at = time.monotonic()
        self.conversations: set[str] = set()
        self.sent_seq: dict[str, int] = {}
        self.resuming: dict[str, list[tuple[int, str]]] = {}
        self.queue: deque[str] = deque()
        self.queue_limit: int = settings.WS_SEND_QUEUE_FRAMES  # read once: push() runs per delivery
        self.drain_mark = 0
        self.closing: int | None = None
        self.registered = False
        self.ready = False  # frames are written once the socket is routed and registered
        self.last_touch = time.monotonic()
        connection_id_var.set(self.connection_id)

        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_NOT_AUTHENTICATED)
            return
        if not user.is_active:
            await self._refuse(CLOSE_DEACTIVATED)
            return
        self.user_id = int(user.pk)
        self.username = user.get_username()
        self.credential = credential_for(self.scope, user)  # re-checked by chat/revocation.py
        user_id_var.set(self.user_id)
        if hub.shutting_down:
            await self._refuse(CLOSE_SHUTDOWN)
            return
        if not hub.healthy:
            await self._refuse(CLOSE_FANOUT_LOST)
            return
        if await socket_cap.over_cap(self.user_id):
            await self._refuse(socket_cap.CLOSE_TOO_MANY_SOCKETS)
            return

        await self.accept()
        try:
            await hub.ensure_started()  # the first socket on this loop starts the hub
        except Exception as exc:
            logger.warning("connect failed", extra={"error": exc.__class__.__name__})
            self.close_with(CLOSE_FANOUT_LOST)
            return
        async with hub.connect_slots:
            if not await self._set_up():
                return
        metrics.CONNECTS.inc()
        logger.info("connected", extra={"auth": self.scope.get("auth_method")})

    async def _set_up(self) -> bool:
        """The connect work: routing, registry, presence. False when it failed (the socket is
        then closed with 1011, and the disconnect that follows undoes what was done)."""
        try:
            conversations = await db_call(_conversation_seqs)(self.user_id)
            self.conversations = set(conversations)
            # hello is the first frame; the writer starts only once this socket is routed and
            # registered, so a client that has its hello is already reachable everywhere.
            self.push(
                encode(
                    {
                        "type": "hello",
                        "connection_id": self.connection_id,
                        "instance_id": settings.INSTANCE_ID,
                        "user": {"id": self.user_id, "username": self.username},
                        "heartbeat_interval": settings.WS_HEARTBEAT_INTERVAL_SECONDS,
                    }
                ),
                "hello",
            )
            # Marked first: if routing or the registry fails half-way, the disconnect that
            # follows the 1011 close undoes whatever part of it was done (both are idempotent).
            self.registered = True
            await hub.register(self, conversations)
            self.registry_entry = self._registry_entry()
            became_online = await get_registry().add(self.registry_entry)
            self.ready = True
            self._start_writer()
            if became_online:
                await db_call(presence_services.went_online)(user_id=self.user_id, conversation_ids=list(conversations))
        except (TimeoutError, ConnectionError, RedisError, DatabaseError) as exc:
            # Expected when Redis or the database is slow or away (a reconnect storm): one
            # line, no traceback to format for each of thousands of sockets.
            logger.warning("connect failed", extra={"error": exc.__class__.__name__})
            self.close_with(CLOSE_FANOUT_LOST)
            return False
        except Exception:
            logger.exception("connect failed")
            self.close_with(CLOSE_FANOUT_LOST)
            return False
        return True

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)
        metrics.DISCONNECTS.labels(code=metrics.close_code_label(code)).inc()
        logger.info("refused", extra={"close_code": code})

    def _registry_entry(self) -> Connection:
        client = self.scope.get("client") or ("", 0)
        agent = ""
        for key, value in self.scope.get("headers", []):
            if key == b"user-agent":
                agent = value.decode("latin-1")[:200]
        now = time.time()
        return Connection(
            connection_id=self.connection_id,
            user_id=self.user_id,
            instance_id=settings.INSTANCE_ID,
            channel=f"{hub.channel_name}!{self.connection_id}",
            connected_at=now,
            last_seen=now,
            remote_addr=str(client[0] or ""),
            user_agent=agent,
        )

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        code = message.get("code", 1000)
        if self.writer is not None:
            self.writer.cancel()
        if self.registered:
            self.registered = False
            await hub.unregister(self)
            try:
                await get_registry().remove(self.connection_id, self.user_id)
            except Exception as exc:
                logger.warning("registry removal failed", extra={"error": exc.__class__.__name__})
            close_code = self.closing or code
            metrics.DISCONNECTS.labels(code=metrics.close_code_label(close_code)).inc()
            duration = round(time.monotonic() - self.connected_at, 3)
            logger.info("disconnected", extra={"close_code": close_code, "duration_s": duration})
        await super().websocket_disconnect(message)

    # --- outgoing -------------------------------------------------------------------------------

    def push(self, text: str, frame_type: str) -> None:
        """Send one encoded frame, or queue it behind the frames still being written; overflow
        of the queue closes the socket with 4008 (slow consumer)."""
        if self.closing is not None:
            return
        if self.writer is None and self.ready and not self.queue:
            metrics.frame_out(frame_type)
            self._send_eagerly(text)
            return
        if len(self.queue) >= self.queue_limit:
            logger.warning("outgoing queue overflow", extra={"queued": len(self.queue)})
            self.close_with(CLOSE_SLOW_CONSUMER)
            return
        self.queue.append(text)
        metrics.frame_out(frame_type)
        if self.ready:
            self._start_writer()

    def _send_eagerly(self, text: str) -> None:
        """Start the server's send right here, in the caller's loop over sockets. It almost
        always completes without waiting (the transport takes the bytes), and then no task was
        needed. One that has to wait (the client's transport is full) is finished by this
        socket's writer task, so the caller never waits for a slow client; frames pushed
        meanwhile queue behind it, in order."""
        coro = self.base_send({"type": "websocket.send", "text": text})
        try:
            blocker = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self._write_failed(exc)
            return
        self.writer = asyncio.get_running_loop().create_task(self._write_loop((coro, blocker)))

    def push_message(self, cid: str, seq: int, text: str) -> None:
        held = self.resuming.get(cid)
        if held is not None:
            held.append((seq, text))
            return
        if seq <= self.sent_seq.get(cid, 0):
            return
        self.sent_seq[cid] = seq
        self.push(text, "message.new")

    def close_with(self, code: int) -> None:
        """Close as soon as the writer gets to it; frames still queued are dropped (the client
        resumes by seq after reconnecting)."""
        if self.closing is not None:
            return
        self.closing = code
        self.queue.clear()
        self._release_drain_waiter()
        # With no writer running, one starts to close now; a running one closes when its
        # current send returns.
        self._start_writer()

    def _start_writer(self) -> None:
        if self.writer is None and (self.queue or self.closing is not None):
            self.writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self, started: tuple[Coroutine[Any, Any, Any], Any] | None = None) -> None:
        """Finish a send that had to wait (``started``), send what is queued, then end: the next
        push sends eagerly again or starts a new writer. Idle sockets hold no task."""
        try:
            if started is not None:
                await finish_started(*started)
            send = self.base_send  # the server's send: no wrapper layers per frame
            queue = self.queue
            while queue and self.closing is None:
                await send({"type": "websocket.send", "text": queue.popleft()})
                if self.drain_waiter is not None and len(queue) <= self.drain_mark:
                    self._release_drain_waiter()
            if self.closing is not None:
                await self.close(code=self.closing)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._write_failed(exc)
        finally:
            self.writer = None
            self._release_drain_waiter()

    def _write_failed(self, exc: Exception) -> None:
        logger.info("write failed; socket gone", extra={"error": repr(exc)[:200]})
        # Nothing more can be written; the server's disconnect event follows.
        self.closing = self.closing or CLOSE_ABNORMAL
        self.queue.clear()

    def _release_drain_waiter(self) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drain_below(self, size: int) -> None:
        """Wait until the writer has sent all but ``size`` queued frames (resume pacing)."""
        self.drain_mark = size
        while len(self.queue) > size and self.closing is None:
            if self.writer is None:
                self._start_writer()
            self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter

    def reply(self, frame: dict[str, Any]) -> None:
        self.push(encode(frame), frame["type"])

    def error(self, request_id: str | None, err: dict[str, Any]) -> None:
        metrics.ERRORS.labels(code=err["code"]).inc()
        self.reply({"type": "error", "id": request_id, **err})

    # --- incoming -------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing is not None or not self.registered:
            return
        size = len(text_data.encode("utf-8")) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            logger.warning("frame too large", extra={"bytes": size})
            self.close_with(CLOSE_TOO_BIG)
            return
        now = time.monotonic()
        if now - self.last_touch > TOUCH_INTERVAL_SECONDS:
            self.last_touch = now
            asyncio.get_running_loop().create_task(self._touch())
        request_id: str | None = None
        try:
            if text_data is None:
                raise Invalid("Binary frames are not supported; send JSON text.", code="bad_request")
            try:
                data = json.loads(text_data)
            except ValueError:
                raise Invalid("Frame is not valid JSON.", code="bad_request") from None
            if not isinstance(data, dict):
                raise Invalid("A frame is a JSON object.", code="bad_request")
            raw_id = data.get("id")
            if raw_id is not None:
                if not isinstance(raw_id, str) or len(raw_id) > 64:
                    raise Invalid.field("id", "Must be a string of at most 64 characters.")
                request_id = raw_id
            frame_type = data.get("type")
            handler = HANDLERS.get(frame_type) if isinstance(frame_type, str) else None
            if handler is None:
                raise Invalid.field("type", f"Unknown frame type {str(frame_type)[:40]!r}.")
            metrics.FRAMES_IN.labels(type=frame_type).inc()
            result = await handler(self, data)
            if result is not None and request_id is not None:
                self.reply({"type": "ack", "id": request_id, **result})
        except ApplicationError as exc:
            self.error(request_id, exc.as_dict())
            if exc.status in (400, 429):
                self._strike(rate_limited=isinstance(exc, RateLimited))
        except Exception:
            logger.exception("frame handler failed")
            self.error(request_id, internal_error_body())

    def _strike(self, *, rate_limited: bool) -> None:
        """Sustained invalid frames or rate-limit violations close the socket with 1008."""
        now = time.monotonic()
        if self.strikes is None:
            self.strikes = deque()
        self.strikes.append(now)
        while self.strikes and now - self.strikes[0] > ABUSE_WINDOW_SECONDS:
            self.strikes.popleft()
        if len(self.strikes) >= ABUSE_MAX_STRIKES:
            logger.warning("closing abusive socket", extra={"rate_limited": rate_limited})
            self.close_with(CLOSE_ABUSE)

    async def _touch(self) -> None:
        try:
            await get_registry().touch(self.connection_id, self.user_id)
        except Exception as exc:
            logger.debug("registry touch failed", extra={"error": exc.__class__.__name__})

    # --- handlers -------------------------------------------------------------------------------

    async def on_message_send(self, data: dict[str, Any]) -> dict[str, Any]:
        result = await db_call(services.message_send)(
            sender_id=self.user_id,
            conversation_id=_required(data, "conversation_id"),
            body=data.get("body"),
            client_msg_id=data.get("client_msg_id"),
        )
        return {"message": message_dict(result.message), "repeat": result.repeat}

    async def on_typing(self, data: dict[str, Any]) -> dict[str, Any]:
        broadcast = await db_call(services.typing_set)(
            user_id=self.user_id, conversation_id=_required(data, "conversation_id"), state=data.get("state")
        )
        return {"broadcast": broadcast}

    async def on_read(self, data: dict[str, Any]) -> dict[str, Any]:
        cid = _required(data, "conversation_id")
        result = await db_call(services.read_mark)(user_id=self.user_id, conversation_id=cid, seq=data.get("seq"))
        return {"conversation_id": str(cid), "seq": result.seq, "read_at": iso(result.read_at)}

    async def on_resume(self, data: dict[str, Any]) -> dict[str, Any]:
        cursors = data.get("cursors")
        if not isinstance(cursors, dict) or len(cursors) > 1000:
            raise Invalid.field("cursors", "Must be an object of conversation id to last seen seq.")
        parsed: dict[str, int] = {}
        for cid, seq in cursors.items():
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise Invalid.field("cursors", f"The seq for {cid[:40]!r} must be a non-negative whole number.")
            parsed[str(selectors.parse_conversation_id(cid))] = seq
        limit = settings.RESUME_MAX_PER_CONVERSATION
        resumed: dict[str, int] = {}
        for cid, after in parsed.items():
            # Held from before the query: a live message arriving meanwhile waits for the rows.
            self.resuming[cid] = []
            try:
                # Participation is checked now, at the time of the action.
                rows = await db_call(selectors.resume_messages)(
                    user_id=self.user_id, conversation_id=cid, after_seq=after, limit=limit + 1
                )
                last = after
                for row in rows[:limit]:
                    await self._drain_below(self.queue_limit // 2)
                    self.push(encode({"type": "message.new", "message": message_dict(row)}), "message.new")
                    last = row.seq
                if len(rows) > limit:
                    self.reply({"type": "resume.truncated", "conversation_id": cid, "next_seq": last + 1})
                self.sent_seq[cid] = max(self.sent_seq.get(cid, 0), last)
            finally:
                held = self.resuming.pop(cid, [])
            # Live messages that arrived meanwhile, unless truncated (the client pages over HTTP).
            if len(rows) <= limit:
                for seq, text in sorted(held):
                    self.push_message(cid, seq, text)
            resumed[cid] = self.sent_seq.get(cid, after)
        return {"resumed": resumed}

    async def on_status_set(self, data: dict[str, Any]) -> dict[str, Any]:
        presence = await db_call(presence_services.status_set)(
            user_id=self.user_id, status=data.get("status"), text=data.get("text")
        )
        return {"presence": presence}

    async def on_presence_sync(self, data: dict[str, Any]) -> dict[str, Any]:
        results = await db_call(presence_selectors.presence_snapshot)(user_id=self.user_id)
        return {"results": results}

    async def on_ping(self, data: dict[str, Any]) -> None:
        frame: dict[str, Any] = {"type": "pong"}
        if data.get("id") is not None:
            frame["id"] = data["id"]
        self.reply(frame)
        return None


async def finish_started(coro: Coroutine[Any, Any, Any], blocker: Any) -> None:
    """Drive ``coro`` to its end the way an asyncio task would, from the point where a first
    ``coro.send(None)`` returned ``blocker`` (the future it waits on, or None for a bare yield).
    The outcome of each future reaches the coroutine when it resumes; cancelling the awaiting
    task closes the coroutine."""
    while True:
        if blocker is None:
            await asyncio.sleep(0)
        else:
            # What a task does with a future its coroutine yields: take over the "blocking"
            # mark the coroutine's await set, so this task can await the same future.
            blocker._asyncio_future_blocking = False
            try:
                await blocker
            except BaseException:
                if not blocker.done():  # this task was cancelled, not the future
                    coro.close()
                    raise
        try:
            blocker = coro.send(None)
        except StopIteration:
            return


def _required(data: dict[str, Any], name: str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise Invalid.field(name, "This field is required.")
    return value


_ASGI_HANDLERS: dict[str, Callable[[ChatConsumer, dict[str, Any]], Awaitable[None]]] = {
    "websocket.connect": ChatConsumer.websocket_connect,
    "websocket.receive": ChatConsumer.websocket_receive,
    "websocket.disconnect": ChatConsumer.websocket_disconnect,
}

HANDLERS: dict[str, Handler] = {
    "message.send": ChatConsumer.on_message_send,
    "typing": ChatConsumer.on_typing,
    "read": ChatConsumer.on_read,
    "resume": ChatConsumer.on_resume,
    "status.set": ChatConsumer.on_status_set,
    "presence.sync": ChatConsumer.on_presence_sync,
    "ping": ChatConsumer.on_ping,
}
