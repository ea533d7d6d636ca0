"""One socket's outgoing side: a bounded queue, a writer that runs only while frames wait, close.

Frames are sent eagerly when nothing is queued (the transport almost always takes the bytes at
once, and then no task was needed); a send that has to wait is finished by the writer task, and
frames pushed meanwhile queue behind it, in order. A client that reads too slowly overflows the
queue (``WS_SEND_QUEUE_FRAMES`` frames or ``WS_SEND_QUEUE_BYTES`` bytes, whichever comes first)
and is closed with 4008 instead of growing this process's memory. An idle socket holds no task.

Every failed write ends in a closed socket: the session tries to close the transport, and
``on_dead`` (the consumer's cleanup: routing, registry, presence) runs whether or not a
disconnect event ever follows, so a socket is never left open and deaf.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from core import metrics

from . import wire
from .protocol import CloseCode, encode

logger = logging.getLogger("realtime.session")

Send = Callable[[dict[str, Any]], Awaitable[None]]
NOTHING_HELD: frozenset[str] = frozenset()


class Session:
    __slots__ = (
        "_on_dead",
        "byte_limit",
        "closing",
        "connection_id",
        "drain_mark",
        "drain_waiter",
        "pre_resume",
        "pre_resume_timeout",
        "pre_resume_timer",
        "proto",
        "queue",
        "queue_limit",
        "queued_bytes",
        "ready",
        "resuming",
        "send",
        "sent_seq",
        "topics",
        "user_id",
        "writer",
    )

    def __init__(
        self,
        send: Send,
        *,
        connection_id: str,
        user_id: int,
        queue_limit: int,
        on_dead: Callable[[], None],
        byte_limit: int = 0,
    ) -> None:
        self.send = send  # the server's send: no wrapper layers per frame
        # The server's protocol when frames can go straight to its transport (realtime/wire.py).
        self.proto = wire.direct_protocol(send)
        self.connection_id = connection_id
        self.user_id = user_id
        self.topics: set[str] = set()  # the conversations this socket receives
        # Made when a frame has to wait and dropped once the writer empties it: an idle socket
        # holds no deque (760 bytes each).
        self.queue: deque[str] | None = None
        self.queue_limit = queue_limit
        self.byte_limit = byte_limit  # 0: frames only
        self.queued_bytes = 0
        self.writer: asyncio.Task[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.drain_mark = 0
        self.closing: int | None = None
        self.ready = False  # frames are written once the socket is routed and registered
        self.sent_seq: dict[str, int] = {}
        self.resuming: dict[str, list[tuple[int, str]]] = {}
        # Streams held since connect until the client's first frame (see hold_until_first_frame);
        # a shared empty one otherwise (an idle socket would keep an empty set of 216 bytes).
        self.pre_resume: set[str] | frozenset[str] = NOTHING_HELD
        self.pre_resume_timer: asyncio.TimerHandle | None = None
        self.pre_resume_timeout = 0.0
        self._on_dead = on_dead

    # --- pushing ------------------------------------------------------------------------------

    def push(self, text: str, frame_type: str) -> None:
        """Send one encoded frame, or queue it behind the frames still being written; overflow
        of the queue closes the socket with 4008 (slow consumer)."""
        if self.closing is not None:
            return
        if self.writer is None and self.ready and not self.queue:
            metrics.frame_out(frame_type)
            proto = self.proto
            if proto is not None and wire.can_write(proto):
                try:
                    proto.transport.write(wire.text_frame(text))
                except Exception as exc:  # noqa: BLE001
                    self._write_failed(exc)
                return
            self._send_eagerly(text)
            return
        size = encoded_size(text)
        if self.queue is None:
            self.queue = deque()
            self.queued_bytes = 0
        elif len(self.queue) >= self.queue_limit or (
            # One frame larger than the bound still goes out when nothing waits before it.
            self.byte_limit and self.queue and self.queued_bytes + size > self.byte_limit
        ):
            logger.warning("outgoing queue overflow", extra={"queued": len(self.queue), "bytes": self.queued_bytes})
            self.close(CloseCode.SLOW_CONSUMER)
            return
        self.queue.append(text)
        self.queued_bytes += size
        metrics.frame_out(frame_type)
        if self.ready:
            self._start_writer()

    def reply(self, frame: dict[str, Any]) -> None:
        self.push(encode(frame), frame["type"])

    def push_sequenced(self, stream: str, seq: int, text: str) -> None:
        """A frame of an ordered stream: each seq once, held while the stream is being resumed."""
        held = self.resuming.get(stream)
        if held is not None:
            held.append((seq, text))
            return
        if seq <= self.sent_seq.get(stream, 0):
            return
        self.sent_seq[stream] = seq
        self.push(text, "message.new")

    def hold_until_first_frame(self, streams: list[str], timeout: float) -> None:
        """Hold the live frames of ``streams`` until the client's first frame has been handled
        (or ``timeout``): a client that reconnects sends ``resume`` first, and a frame committed
        while it was away, sent before the resume is read, would overtake the missed ones the
        resume sends (out of seq order). The wait is counted from ``hello`` going out (see
        start), not from the connect: a busy server or client must not eat into it."""
        self.pre_resume = set(streams)
        for stream in streams:
            self.resuming.setdefault(stream, [])
        self.pre_resume_timeout = timeout

    def take_over_held(self, stream: str) -> None:
        """A resume of ``stream`` holds its live frames from now on, and releases them itself."""
        if isinstance(self.pre_resume, set):
            self.pre_resume.discard(stream)
        self.resuming.setdefault(stream, [])

    def release_held(self, everything: bool = True) -> None:
        """Send what is held, in seq order: the streams held since connect (the timer), or every
        held stream (once a client frame was handled: no resume is running any more)."""
        if self.pre_resume_timer is not None:
            self.pre_resume_timer.cancel()
            self.pre_resume_timer = None
        streams = list(self.resuming) if everything else list(self.pre_resume)
        self.pre_resume = NOTHING_HELD
        for stream in streams:
            for seq, text in sorted(self.resuming.pop(stream, None) or ()):
                self.push_sequenced(stream, seq, text)
        if not self.resuming:
            self.resuming = {}  # an emptied dict keeps its table

    def start(self) -> None:
        """Routed and registered: write what was queued (hello first) and send eagerly from now on."""
        self.ready = True
        self._start_writer()
        if self.pre_resume and self.pre_resume_timer is None:  # still held: no frame came yet
            self.pre_resume_timer = asyncio.get_running_loop().call_later(
                self.pre_resume_timeout, self.release_held, False
            )

    def _send_eagerly(self, text: str) -> None:
        coro = self.send({"type": "websocket.send", "text": text})
        try:
            blocker = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001
            self._write_failed(exc)
            return
        self.writer = asyncio.get_running_loop().create_task(self._write_loop((coro, blocker)))  # type: ignore[arg-type]

    # --- closing ------------------------------------------------------------------------------

    def close(self, code: int) -> None:
        """Close as soon as the writer gets to it; frames still queued are dropped (the client
        resumes by seq after reconnecting)."""
        if self.closing is not None:
            return
        self.closing = int(code)
        self.queue = None
        self.queued_bytes = 0
        self._release_drain_waiter()
        # With no writer running, one starts to close now; a running one closes when its
        # current send returns.
        self._start_writer()

    def cancel(self) -> None:
        """The socket is gone: stop writing."""
        if self.pre_resume_timer is not None:
            self.pre_resume_timer.cancel()
        if self.writer is not None:
            self.writer.cancel()

    # --- the writer ---------------------------------------------------------------------------

    def _start_writer(self) -> None:
        if self.writer is None and (self.queue or self.closing is not None):
            self.writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self, started: tuple[Coroutine[Any, Any, Any], Any] | None = None) -> None:
        """Finish a send that had to wait (``started``), send what is queued, then end: the next
        push sends eagerly again or starts a new writer."""
        try:
            if started is not None:
                await finish_started(*started)
            send, proto = self.send, self.proto
            while (queue := self.queue) and self.closing is None:
                if proto is not None and wire.can_write(proto):
                    # Everything queued in one write (the transport takes it all, or pauses
                    # us before the next one).
                    frames = [wire.text_frame(text) for text in queue]
                    queue.clear()
                    self.queued_bytes = 0
                    proto.transport.write(b"".join(frames))
                else:
                    text = queue.popleft()
                    self.queued_bytes -= encoded_size(text)
                    await send({"type": "websocket.send", "text": text})
                if self.drain_waiter is not None and not self._over_drain_mark(queue):
                    self._release_drain_waiter()
            self.queue = None  # empty (or closing): the next wait makes a new one
            self.queued_bytes = 0
            if self.closing is not None:
                await send({"type": "websocket.close", "code": self.closing})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._write_failed(exc)
        finally:
            self.writer = None
            self._release_drain_waiter()

    def _write_failed(self, exc: Exception) -> None:
        """Nothing more can be written on this socket. If the transport is still up (the frame
        could not be encoded, say), close it; either way the socket's cleanup runs now, without
        waiting for a disconnect event that a healthy transport never sends."""
        logger.info("write failed; closing the socket", extra={"error": exc.__class__.__name__})
        already_closing = self.closing is not None and self.closing != CloseCode.ABNORMAL
        self.closing = CloseCode.ABNORMAL if self.closing is None else self.closing
        self.queue = None
        self.queued_bytes = 0
        if not already_closing:
            asyncio.get_running_loop().create_task(self._close_transport())
        self._on_dead()

    async def _close_transport(self) -> None:
        try:
            await self.send({"type": "websocket.close", "code": CloseCode.FANOUT_LOST})
        except Exception as exc:  # the transport is gone as well  # noqa: BLE001
            logger.debug("close after a failed write failed", extra={"error": exc.__class__.__name__})

    # --- resume pacing ------------------------------------------------------------------------

    def _release_drain_waiter(self) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _over_drain_mark(self, queue: deque[str]) -> bool:
        return len(queue) > self.drain_mark or bool(self.byte_limit and self.queued_bytes > self.byte_limit // 2)

    async def drain_below(self, size: int) -> None:
        """Wait until the writer has sent all but ``size`` queued frames (and, with a byte bound,
        until at most half of it is queued), so a resume never overflows a reader that keeps up."""
        self.drain_mark = size
        while self.queue is not None and self._over_drain_mark(self.queue) and self.closing is None:
            if self.writer is None:
                self._start_writer()
            self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter


def encoded_size(text: str) -> int:
    """The bytes ``text`` takes on the wire (most frames are ASCII: no encoding needed)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


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
