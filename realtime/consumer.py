"""The socket's interface: handshake, routing and registry on connect, frames to handlers.

``RealtimeConsumer`` is the part of a socket that is the same for every app: it authenticates
the handshake's user, routes the socket (``router``), registers it (``registry``), sends
``hello``, and then parses each client frame and calls the handler registered for its ``type``,
answering ``ack`` or ``error``. Apps subclass it to say which streams a user's socket follows
(``topics``) and register their frame handlers with ``@Consumer.handler("type")``; other apps
extend the same table and react to a user's first connection through ``on_first_connection``.

Events reach the socket through the router, not through a channel of this consumer, and leave
through its session's bounded queue (``session``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from asgiref.typing import WebSocketConnectEvent, WebSocketDisconnectEvent
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from core import metrics, validation
from core.errors import AccountInactive, ApplicationError, Invalid, RateLimited, dependency_fault, internal_error_body
from core.logging import RepeatGate, connection_id_var, user_id_var
from core.runtime import runtime

from .admission import connect_slots
from .protocol import REQUEST_ID_MAX_CHARS, CloseCode, Hello
from .registry import Connection, get_registry, on_back_online
from .router import router
from .session import Send, Session

logger = logging.getLogger("realtime.ws")

ABUSE_WINDOW_SECONDS = 10.0
ABUSE_MAX_STRIKES = 20
TOUCH_INTERVAL_SECONDS = 30.0
DEAD_CLEANUP_SECONDS = 1.0
# Live frames of ordered streams on a new socket wait at most this long, from hello going out,
# for the client's first frame (its resume after a reconnect; see
# Session.hold_until_first_frame). A client that sends nothing sees its first live frames this
# late; one that resumes (the SDK always does) ends the wait with its first frame.
PRE_RESUME_HOLD_SECONDS = 2.0

# Frames of one socket whose handlers run at once (message.send in different conversations, or
# queued behind each other in one); past this the socket's next frame waits.
PIPELINE_DEPTH = 8

# One traceback per kind of failure a minute, however many frames hit it; the rest are counted.
_handler_failures = RepeatGate(interval_seconds=60.0)

Handler = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any] | None]]
# What answers a frame: ("ack", frame), ("error", the error's body), or nothing; an error of the
# abusive kinds is "strike" (or "rate_strike" for a rate limit), counted once it was sent.
Reply = tuple[str, dict[str, Any]] | None
FirstConnectionHook = Callable[[int, list[str]], Awaitable[None]]


class RealtimeConsumer(AsyncWebsocketConsumer):
    handlers: ClassVar[dict[str, Handler]] = {}
    # Frame types whose handler may start before the socket's earlier frames are answered:
    # {type: the field whose frames still run one after another (a conversation's sends keep
    # the order they were sent in)}. Replies always leave in the order of the frames.
    pipelined: ClassVar[dict[str, str]] = {}
    # Called with (user id, the user's topics) when a user with no connection anywhere connects.
    first_connection_hooks: ClassVar[list[FirstConnectionHook]] = []

    user_id: int
    connection_id: str
    session: Session | None = None
    registered: bool = False
    strikes: deque[float] | None = None
    # Pipelined frames in flight, oldest first (created for the first one).
    in_flight: deque[asyncio.Task[None]] | None = None

    @classmethod
    def handler(cls, frame_type: str, *, pipelined_by: str | None = None) -> Callable[[Handler], Handler]:
        """Register ``func`` as the handler of client frames of ``frame_type``; with
        ``pipelined_by``, frames of this type run while the socket's next frames are read,
        one after another only among those with the same value of that field."""

        def register(func: Handler) -> Handler:
            cls.handlers[frame_type] = func
            if pipelined_by is not None:
                cls.pipelined[frame_type] = pipelined_by
            return func

        return register

    @classmethod
    def on_first_connection(cls, hook: FirstConnectionHook) -> FirstConnectionHook:
        if hook not in cls.first_connection_hooks:
            cls.first_connection_hooks.append(hook)
        return hook

    async def topics(self) -> dict[str, int]:
        """The ordered streams this user's socket follows, with the latest seq of each."""
        return {}

    async def check_budget(self, frame_type: str) -> None:
        """Raise RateLimited when the user's budget for this frame type is spent (apps own the
        budgets; sustained refusals close the socket with 1008 like invalid frames)."""
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' consumer loop without its per-consumer and per-frame extras: no channel of
        its own (the instance holds one and the router fans out to local sockets), no task per
        receive, and no ``aclose_old_connections`` thread hop per frame (database work goes
        through ``db_call``, which manages connections in its worker thread)."""
        self.scope = scope
        self.channel_layer = None  # type: ignore[assignment]  # the router holds the one channel
        self.base_send = send
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    await self.websocket_receive(message)
                elif kind == "websocket.connect":
                    await self.websocket_connect(message)
                elif kind == "websocket.disconnect":
                    await self.websocket_disconnect(message)
                else:
                    raise ValueError(f"No handler for message type {kind}")
        except StopConsumer:
            pass

    # --- connection lifecycle -------------------------------------------------------------------

    async def websocket_connect(self, message: WebSocketConnectEvent) -> None:
        try:
            await self._connect()
        finally:
            # The handshake's connect slot (taken by the entry app before authentication) goes
            # to the next socket as soon as this one has its hello or was refused.
            connect_slots.release_held()
            # Read by now (authentication, caps, registry); an idle socket does not keep them.
            # The scope is the server's own dict, so its copy of them goes too.
            self.scope["headers"] = ()

    async def _connect(self) -> None:
        """Authenticate, route, register and greet the socket (or refuse it). Apps extend it
        with their own admission checks; ``websocket_connect`` releases the handshake's connect
        slot after it whatever happened."""
        # An app may have chosen the id already (to count the socket before it connects).
        self.connection_id = getattr(self, "connection_id", "") or str(uuid.uuid4())
        self.connected_at = time.monotonic()
        self.last_touch = time.monotonic()
        connection_id_var.set(self.connection_id)

        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(CloseCode.NOT_AUTHENTICATED)
            return
        if not user.is_active:
            await self._refuse(CloseCode.DEACTIVATED)
            return
        self.user_id = int(user.pk)
        self.username = user.get_username()
        user_id_var.set(self.user_id)
        if runtime.draining:
            await self._refuse(CloseCode.SHUTDOWN)
            return
        if not router.healthy:
            await self._refuse(CloseCode.FANOUT_LOST)
            return

        await self.accept()
        self.session = Session(
            cast("Send", self.base_send),
            connection_id=self.connection_id,
            user_id=self.user_id,
            queue_limit=settings.WS_SEND_QUEUE_FRAMES,
            byte_limit=settings.WS_SEND_QUEUE_BYTES,
            on_dead=self._on_dead,
        )
        try:
            await runtime.ensure_started()  # the first socket on a server without lifespan starts it
        except Exception as exc:  # noqa: BLE001
            logger.warning("connect failed", extra={"error": exc.__class__.__name__})
            self.session.close(CloseCode.FANOUT_LOST)
            return
        async with connect_slots.slot():
            if not await self._set_up(self.session):
                return
        metrics.CONNECTS.inc()
        logger.info("connected", extra={"auth": self.scope.get("auth_method")})

    def hello(self) -> Hello:
        return {
            "type": "hello",
            "connection_id": self.connection_id,
            "instance_id": settings.INSTANCE_ID,
            "user": {"id": self.user_id, "username": self.username},
            "heartbeat_interval": settings.WS_HEARTBEAT_INTERVAL_SECONDS,
            "reconnect_window_ms": settings.WS_RECONNECT_WINDOW_MS,
        }

    async def _set_up(self, session: Session) -> bool:
        """The connect work: routing, registry, first-connection hooks. False when it failed
        (the socket is then closed with 1011, and the disconnect that follows undoes it)."""
        step = "topics"  # named in the log line of a failed connect
        try:
            topics = await self.topics()
            session.hold_until_first_frame(list(topics), PRE_RESUME_HOLD_SECONDS)
            # hello is the first frame; the writer starts only once this socket is routed and
            # registered, so a client that has its hello is already reachable everywhere.
            session.reply(dict(self.hello()))
            # Marked first: if routing or the registry fails half-way, the disconnect that
            # follows the 1011 close undoes whatever part of it was done (both are idempotent).
            self.registered = True
            step = "route"
            await router.add(session, topics)
            step = "registry"
            became_online = await get_registry().add(self._registry_entry())
            session.start()
            if became_online:
                step = "first_connection"
                for hook in self.first_connection_hooks:
                    await hook(self.user_id, list(topics))
        except (TimeoutError, ConnectionError, RedisError, DatabaseError) as exc:
            # Expected when Redis or the database is slow or away (a reconnect storm): one
            # line, no traceback to format for each of thousands of sockets.
            logger.warning("connect failed", extra={"error": exc.__class__.__name__, "step": step})
            session.close(CloseCode.FANOUT_LOST)
            return False
        except Exception:
            logger.exception("connect failed", extra={"step": step})
            session.close(CloseCode.FANOUT_LOST)
            return False
        return True

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=int(code))
        metrics.DISCONNECTS.labels(code=metrics.close_code_label(int(code))).inc()
        logger.info("refused", extra={"close_code": int(code)})

    def _registry_entry(self) -> Connection:
        client = self.scope.get("client") or ("", 0)
        agent = ""
        for name, value in self.scope.get("headers", []):
            if name == b"user-agent":
                agent = value.decode("latin-1")[:200]
        now = time.time()
        return Connection(
            connection_id=self.connection_id,
            user_id=self.user_id,
            instance_id=settings.INSTANCE_ID,
            channel=f"{router.bus.channel_name}!{self.connection_id}",
            connected_at=now,
            last_seen=now,
            remote_addr=str(client[0] or ""),
            user_agent=agent,
        )

    async def websocket_disconnect(self, message: WebSocketDisconnectEvent) -> None:
        await self._drain_pipeline()  # frames read before the close finish as they would have
        await self._tear_down(message.get("code", 1000))
        # Not channels' own: it would hop to a worker thread to close database connections this
        # consumer never opened (db_call manages its thread's), once per socket.
        raise StopConsumer

    def _on_dead(self) -> None:
        """A write failed. A client that went away is reported by the server's disconnect event
        (with its real close code) within moments; a transport that is still up never sends one,
        so the socket's cleanup runs after a short wait either way (it is idempotent)."""
        loop = asyncio.get_running_loop()
        loop.call_later(DEAD_CLEANUP_SECONDS, lambda: loop.create_task(self._tear_down(CloseCode.ABNORMAL)))

    async def _tear_down(self, code: int) -> None:
        session = self.session
        if session is not None:
            session.cancel()
        if not self.registered or session is None:
            return
        self.registered = False
        await router.remove(session)
        try:
            await get_registry().remove(self.connection_id, self.user_id)
        except Exception as exc:  # noqa: BLE001
            logger.warning("registry removal failed", extra={"error": exc.__class__.__name__})
        # Our own close code, unless a write failed (then the client's, or 1006 if none came).
        close_code = code if session.closing in (None, CloseCode.ABNORMAL) else session.closing
        metrics.DISCONNECTS.labels(code=metrics.close_code_label(close_code)).inc()
        duration = round(time.monotonic() - self.connected_at, 3)
        logger.info("disconnected", extra={"close_code": close_code, "duration_s": duration})

    # --- outgoing -------------------------------------------------------------------------------

    def reply(self, frame: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.reply(frame)

    def error(self, request_id: str | None, err: dict[str, Any]) -> None:
        metrics.ERRORS.labels(code=err["code"]).inc()
        self.reply({"type": "error", "id": request_id, **err})

    def close_with(self, code: int) -> None:
        if self.session is not None:
            self.session.close(code)

    # --- incoming -------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        session = self.session
        if session is None or session.closing is not None or not self.registered:
            return
        size = len(text_data.encode("utf-8")) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            logger.warning("frame too large", extra={"bytes": size})
            session.close(CloseCode.TOO_BIG)
            return
        now = time.monotonic()
        if now - self.last_touch > TOUCH_INTERVAL_SECONDS:
            self.last_touch = now
            asyncio.get_running_loop().create_task(self._touch())
        request_id: str | None = None
        try:
            if text_data is None:
                raise Invalid("Binary frames are not supported; send JSON text.", code="bad_request")  # noqa: TRY301
            data = validation.parse(text_data)
            if not isinstance(data, dict):
                raise Invalid("A frame is a JSON object.", code="bad_request")  # noqa: TRY301
            raw_id = data.get("id")
            if raw_id is not None:
                if not isinstance(raw_id, str) or len(raw_id) > REQUEST_ID_MAX_CHARS:
                    raise Invalid.field("id", f"Must be a string of at most {REQUEST_ID_MAX_CHARS} characters.")  # noqa: TRY301
                request_id = validation.check_text(raw_id, "id")  # echoed: it must be sendable
            # Deep nesting, NUL or a lone surrogate anywhere else: 400, as over HTTP.
            validation.check_document(text_data, data)
            frame_type = data.get("type")
            handler = self.handlers.get(frame_type) if isinstance(frame_type, str) else None
            if handler is None:
                raise Invalid.field("type", f"Unknown frame type {str(frame_type)[:40]!r}.")  # noqa: TRY301
        except Exception as exc:  # noqa: BLE001
            await self._drain_pipeline()  # the error answers this frame: after the earlier ones
            self._answer(session, request_id, self._failed(exc))
            return
        assert isinstance(frame_type, str)
        metrics.FRAMES_IN.labels(type=frame_type).inc()
        field = self.pipelined.get(frame_type)
        if field is None:
            # Every other frame sees the effects of the frames before it (a resume after sends).
            await self._drain_pipeline()
            self._answer(session, request_id, await self._handle(handler, frame_type, data, request_id))
            return
        await self._pipeline(session, handler, frame_type, data, request_id, f"{frame_type}:{data.get(field)!s}")

    async def _handle(self, handler: Handler, frame_type: str, data: dict[str, Any], request_id: str | None) -> Reply:
        """Run one frame's handler: the reply to send (an ack, an error, or nothing)."""
        try:
            await self.check_budget(frame_type)
            result = await handler(self, data)
        except Exception as exc:  # noqa: BLE001
            return self._failed(exc)
        if result is not None and request_id is not None:
            return "ack", {"type": "ack", "id": request_id, **result}
        return None

    def _failed(self, exc: Exception) -> Reply:
        """The error reply for a frame that failed."""
        if isinstance(exc, ApplicationError):
            if isinstance(exc, AccountInactive):
                return "inactive", exc.as_dict()
            if exc.status in (400, 429):
                return ("rate_strike" if isinstance(exc, RateLimited) else "strike"), exc.as_dict()
            return "error", exc.as_dict()
        fault = dependency_fault(exc)
        if fault is not None:  # Redis or the database away: 503 with retry_after, never a 500
            return "error", fault.as_dict()
        suppressed = _handler_failures.allow(exc)
        if suppressed is not None:
            logger.exception("frame handler failed", exc_info=exc, extra={"suppressed_repeats": suppressed})
        # A frame that fails the server is as abusive when repeated as an invalid one.
        return "strike", internal_error_body()

    def _answer(self, session: Session, request_id: str | None, reply: Reply) -> None:
        if reply is not None:
            kind, body = reply
            if kind == "ack":
                self.reply(body)
            else:
                self.error(request_id, body)
                if kind == "inactive":
                    # The action found the account deactivated before the periodic re-check did
                    # (a bulk update fires no signal): the socket goes now, as the re-check would close it.
                    self.close_with(CloseCode.DEACTIVATED)
                elif kind != "error":  # after the reply, so the last one before a 1008 still goes out
                    self._strike(rate_limited=kind == "rate_strike")
        if session.resuming:  # no handler runs any more: nothing is held for a resume
            session.release_held()

    async def _pipeline(
        self,
        session: Session,
        handler: Handler,
        frame_type: str,
        data: dict[str, Any],
        request_id: str | None,
        key: str,
    ) -> None:
        """Start the frame's handler without waiting for it: a socket's sends do not wait for
        each other's database round trip. A frame waits for the earlier one with the same key
        (the order of one conversation's messages), and its reply for the earlier replies."""
        in_flight = self.in_flight
        if in_flight is None:
            in_flight = self.in_flight = deque()
        while len(in_flight) >= PIPELINE_DEPTH:
            await asyncio.wait([in_flight[0]])
        same_key = next((task for task in reversed(in_flight) if task.get_name() == key), None)
        previous = in_flight[-1] if in_flight else None
        task = asyncio.get_running_loop().create_task(
            self._pipelined(session, handler, frame_type, data, request_id, same_key, previous), name=key
        )
        in_flight.append(task)
        task.add_done_callback(in_flight.remove)

    async def _pipelined(
        self,
        session: Session,
        handler: Handler,
        frame_type: str,
        data: dict[str, Any],
        request_id: str | None,
        same_key: asyncio.Task[None] | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if same_key is not None:
            await asyncio.wait([same_key])
        reply = await self._handle(handler, frame_type, data, request_id)
        if previous is not None:
            await asyncio.wait([previous])
        self._answer(session, request_id, reply)

    async def _drain_pipeline(self) -> None:
        if self.in_flight:
            await asyncio.wait(list(self.in_flight))

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
            self.close_with(CloseCode.POLICY)

    async def _touch(self) -> None:
        try:
            await get_registry().touch(self.connection_id, self.user_id)
        except Exception as exc:  # noqa: BLE001
            logger.debug("registry touch failed", extra={"error": exc.__class__.__name__})


@RealtimeConsumer.handler("ping")
async def on_ping(consumer: RealtimeConsumer, data: dict[str, Any]) -> None:
    frame: dict[str, Any] = {"type": "pong"}
    if data.get("id") is not None:
        frame["id"] = data["id"]
    consumer.reply(frame)
    return None


@on_back_online
async def _first_connection_hooks_again(user_ids: list[int]) -> None:
    """Users whose local sockets a heartbeat wrote back into the registry while Redis no longer
    had them online: the first-connection hooks run again (presence turns them online if the
    grace ended meanwhile; for a user still online they change nothing)."""
    for user_id in user_ids:
        topics = sorted({topic for session in router.by_user.get(user_id, ()) for topic in session.topics})
        for hook in RealtimeConsumer.first_connection_hooks:
            await hook(user_id, topics)
