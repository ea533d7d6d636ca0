"""Chat clients for the chaos suite: real ``websockets`` clients through nginx that send about a
message a second with a ``client_msg_id``, re-send what was not acknowledged after every
reconnect, resume by seq, and record everything the invariants and the figures need."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

SEND_INTERVAL_SECONDS = 1.0
RESEND_AFTER_SECONDS = 3.0
DEFAULT_RECONNECT_WINDOW_MS = 500


@dataclass
class Pending:
    cid: str
    body: str
    last_sent: float = 0.0


@dataclass
class Client:
    index: int
    user_id: int
    token: str
    conversations: list[str]
    url: str
    connected: bool = False
    instance: str | None = None
    connected_at: float = 0.0
    reconnects: int = 0
    sent: int = 0
    # Per conversation: the highest seq received in order, and every delivery (seq, id) in order.
    cursor: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    # client_msg_id -> (conversation, seq, message id)
    acked: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    # Times an ack arrived, with the time its message was (last) sent.
    ack_times: list[tuple[float, float]] = field(default_factory=list)
    # (time, instance, close code or None when the connection dropped without a close frame)
    closes: list[tuple[float, str | None, int | None]] = field(default_factory=list)
    handshake_failures: list[tuple[float, str]] = field(default_factory=list)
    error_frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    # The presence of the last acknowledged status.set, and when it was acknowledged.
    status_ack: tuple[float, dict[str, Any]] | None = None
    violations: list[str] = field(default_factory=list)
    _conn: Any = None
    _drop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        for cid in self.conversations:
            self.cursor.setdefault(cid, 0)
            self.deliveries.setdefault(cid, [])

    # --- the client's life -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, sending: asyncio.Event, deadline: float) -> None:
        """Connect, chat and reconnect until ``stop`` (bounded by ``deadline``)."""
        first = True
        failures = 0
        while not stop.is_set() and time.monotonic() < deadline:
            if not first:
                self.reconnects += 1
            first = False
            before = len(self.handshake_failures)
            window = await self._session(stop, sending, deadline)
            if stop.is_set():
                break
            # The contract's reconnect spread: a random wait within the server's window, longer
            # (up to 4 windows) after handshakes that failed in a row.
            failures = failures + 1 if len(self.handshake_failures) > before else 0
            await asyncio.sleep(random.uniform(0, window / 1000) * min(2**failures, 4))

    async def _session(self, stop: asyncio.Event, sending: asyncio.Event, deadline: float) -> int:
        window = DEFAULT_RECONNECT_WINDOW_MS
        try:
            conn = await ws_connect(
                self.url, additional_headers={"Authorization": f"Token {self.token}"}, open_timeout=10, max_size=2**22
            )
        except InvalidStatus as exc:
            self.handshake_failures.append((time.monotonic(), f"http {exc.response.status_code}"))
            return window
        except (OSError, TimeoutError) as exc:
            self.handshake_failures.append((time.monotonic(), exc.__class__.__name__))
            return window
        self._conn = conn
        self._drop = asyncio.Event()
        sender: asyncio.Task[None] | None = None
        try:
            hello = json.loads(await asyncio.wait_for(conn.recv(), 10))
            if hello.get("type") != "hello":
                self.violations.append(f"first frame is {hello.get('type')!r}, not hello")
            self.instance = hello.get("instance_id")
            window = int(hello.get("reconnect_window_ms") or DEFAULT_RECONNECT_WINDOW_MS)
            self.connected, self.connected_at = True, time.monotonic()
            await conn.send(json.dumps({"type": "resume", "id": "resume", "cursors": dict(self.cursor)}))
            for cmid in list(self.pending):
                await self._send(cmid)
            sender = asyncio.create_task(self._send_loop(sending))
            reader = asyncio.create_task(self._read_loop(conn))
            dropper = asyncio.create_task(self._drop.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait(
                [reader, dropper, stopper],
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in (dropper, stopper):
                task.cancel()
            if not reader.done():
                await conn.close()
                await asyncio.wait([reader], timeout=5)
                reader.cancel()
        except ConnectionClosed as exc:
            self._closed(exc)
        except (OSError, TimeoutError) as exc:
            self.closes.append((time.monotonic(), self.instance, None))
            self.handshake_failures.append((time.monotonic(), f"no hello: {exc.__class__.__name__}"))
        finally:
            self.connected = False
            self._conn = None
            if sender is not None:
                sender.cancel()
        return window

    def drop(self) -> None:
        """Close the socket from this side (a network drop, a reconnect burst)."""
        self._drop.set()

    async def set_status(self, status: str, text: str) -> bool:
        """Send ``status.set`` (acknowledged into ``status_ack``); False when not connected."""
        if self._conn is None:
            return False
        frame = {"type": "status.set", "id": f"status-{time.monotonic_ns()}", "status": status, "text": text}
        try:
            await self._conn.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    def _closed(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd else None
        self.closes.append((time.monotonic(), self.instance, code))
        self.connected = False

    async def _read_loop(self, conn: Any) -> None:
        try:
            async for raw in conn:
                self._on_frame(json.loads(raw))
        except ConnectionClosed as exc:
            self._closed(exc)
            return
        # A clean close ends the iteration without an exception.
        rcvd = conn.close_code
        self.closes.append((time.monotonic(), self.instance, rcvd))
        self.connected = False

    async def _send_loop(self, sending: asyncio.Event) -> None:
        n = 0
        while True:
            await asyncio.sleep(SEND_INTERVAL_SECONDS * random.uniform(0.8, 1.2))
            now = time.monotonic()
            for cmid, item in list(self.pending.items()):
                if now - item.last_sent > RESEND_AFTER_SECONDS:
                    await self._send(cmid)
            if not sending.is_set():
                continue
            n += 1
            cid = self.conversations[n % len(self.conversations)]
            cmid = f"c{self.index}-{self.sent}"
            self.sent += 1
            self.pending[cmid] = Pending(cid, f"message {self.sent} from client {self.index}")
            await self._send(cmid)

    async def _send(self, cmid: str) -> None:
        item = self.pending.get(cmid)
        if item is None or self._conn is None:
            return
        item.last_sent = time.monotonic()
        frame = {"type": "message.send", "id": cmid, "conversation_id": item.cid, "body": item.body}
        frame["client_msg_id"] = cmid
        try:  # noqa: SIM105
            await self._conn.send(json.dumps(frame))
        except ConnectionClosed:
            pass  # the reader records the close; the message is re-sent after reconnecting

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        now = time.monotonic()
        if kind == "message.new":
            msg = frame["message"]
            cid, seq = msg["conversation_id"], int(msg["seq"])
            if cid not in self.cursor:
                self.violations.append(f"message.new of foreign conversation {cid}")
                return
            self.deliveries[cid].append((seq, msg["id"]))
            if seq == self.cursor[cid] + 1:
                self.cursor[cid] = seq
            elif seq > self.cursor[cid] + 1:
                self.violations.append(f"gap in {cid[:8]}: got seq {seq} after {self.cursor[cid]}")
        elif kind == "ack" and (frame.get("id") in self.pending or frame.get("id") in self.acked):
            msg = frame.get("message")
            if msg is None:
                return
            cmid = frame["id"]
            entry = (msg["conversation_id"], int(msg["seq"]), msg["id"])
            if cmid in self.acked and self.acked[cmid] != entry:
                self.violations.append(f"client_msg_id {cmid} acked as {self.acked[cmid]} and {entry}")
            item = self.pending.pop(cmid, None)
            if item is not None:
                self.acked[cmid] = entry
                self.ack_times.append((now, item.last_sent))
        elif kind == "ack" and frame.get("id") == "resume":
            return
        elif kind == "ack" and str(frame.get("id", "")).startswith("status-"):
            self.status_ack = (now, frame.get("presence") or {})
        elif kind == "error":
            self.error_frames.append((now, frame))
            status = int(frame.get("status", 0))
            if status >= 500 and status != 503:
                self.violations.append(f"error {status} {frame.get('code')}")
            elif status not in (503, 429):
                self.violations.append(f"unexpected error {status} {frame.get('code')}: {frame.get('detail')}")
            # A send answered 503 or 429 stays pending: the send loop re-sends it.
