"""Load-generator processes: real `websockets` clients with `Authorization: Token` headers.

Each worker is a separate process (multiprocessing) running one event loop (uvloop). The
controller (bench/scenarios.py) talks to it over a Pipe: it sends ``(command, args)`` and gets one
reply per command. Every loop here is bounded in count and time.

Roles:

* ``receivers`` - sockets that read ``message.new`` and record latency (now - the send time
  embedded in the body, CLOCK_MONOTONIC is shared by all processes), per step and per
  same-/cross-instance, and seq order per socket (a lean client on websockets' sans-I/O layer);
* ``senders`` - sockets that send ``message.send`` open-loop at a given rate, round-robin;
* ``idle`` - sockets that connect, read ``hello`` and stay idle (S3);
* ``storm`` - sockets that reconnect to another instance when theirs dies and ``resume`` (S4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import time
import traceback
from array import array
from collections import Counter, defaultdict
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

OPEN_TIMEOUT = 20.0


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def open_client(
    url: str, token: str, deflate: bool, timeout: float = OPEN_TIMEOUT
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect with a token and read the ``hello``; ``timeout`` bounds each of the two."""
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Token {token}"},
        open_timeout=timeout,
        ping_interval=None,
        close_timeout=2,
        max_size=2**22,
        max_queue=None,
        compression="deflate" if deflate else None,
    )
    try:
        hello = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    except BaseException:
        await ws.close()
        raise
    if hello.get("type") != "hello":
        await ws.close()
        raise RuntimeError(f"expected hello, got {str(hello)[:200]}")
    return ws, hello


def _field(raw: str, name: str) -> str:
    """The raw value of a top-level-or-nested JSON scalar ``"name":value`` (compact JSON)."""
    key = f'"{name}":'
    i = raw.find(key)
    if i < 0:
        return ""
    i += len(key)
    if raw[i] == '"':
        return raw[i + 1 : raw.find('"', i + 1)]
    j = i
    while j < len(raw) and raw[j] not in ",}":
        j += 1
    return raw[i:j]


def _close_code(exc: ConnectionClosed) -> str:
    return str(exc.rcvd.code) if exc.rcvd is not None else "no-close-frame"


# --- receivers ----------------------------------------------------------------------------------


class LeanClient(asyncio.Protocol):
    """A receive-mostly WebSocket client on websockets' sans-I/O ``ClientProtocol``, driven
    straight from ``data_received``: no task, future or queue per frame, so the load generator
    spends its CPU on the frames rather than on asyncio (it shares the machine with the servers).
    Pings are answered and the close handshake is done by the protocol object."""

    def __init__(self, url: str, token: str, deflate: bool, on_text: Any) -> None:
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.ws = ClientProtocol(parse_uri(url), extensions=extensions, max_size=2**22)
        self.token = token
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[str] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's transports are not asyncio's classes)
        request = self.ws.connect()
        request.headers["Authorization"] = f"Token {self.token}"
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    text = event.data.decode()
                    if self.hello.done():
                        self.on_text(text)
                    else:
                        self.hello.set_result(text)
            elif self.ws.handshake_exc is not None and not self.hello.done():
                self.hello.set_exception(self.ws.handshake_exc)
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        code = str(self.ws.close_rcvd.code) if self.ws.close_rcvd is not None else "no-close-frame"
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"closed before hello ({code})"))
        if not self.closed.done():
            self.closed.set_result(code)

    async def close(self) -> None:
        if self.transport is None or self.closed.done():
            return
        with contextlib.suppress(Exception):
            self.ws.send_close(1000)
            self._flush()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.closed), 2)
        self.transport.close()


async def open_lean(url: str, token: str, deflate: bool, timeout: float, on_text: Any) -> LeanClient:
    u = parse_uri(url)
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: LeanClient(url, token, deflate, on_text), u.host, u.port), timeout
    )
    try:
        hello = json.loads(await asyncio.wait_for(asyncio.shield(proto.hello), timeout))
    except BaseException:
        if proto.transport is not None:
            proto.transport.close()
        raise
    if hello.get("type") != "hello":
        await proto.close()
        raise RuntimeError(f"expected hello, got {str(hello)[:200]}")
    return proto


class Receivers:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.clients: list[tuple[str, str, int]] = cfg["clients"]  # (url, token, instance index)
        self.socks: list[LeanClient] = []
        self.lat: dict[int, dict[str, array]] = defaultdict(lambda: {"same": array("d"), "cross": array("d")})
        self.count: Counter[int] = Counter()
        self.out_of_order = 0
        self.gaps = 0
        self.other_frames: Counter[str] = Counter()

    async def connect(self, concurrency: int) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        failures: Counter[str] = Counter()

        async def one(url: str, token: str, inst: int) -> None:
            async with sem:
                try:
                    sock = await open_lean(
                        url,
                        token,
                        self.cfg.get("deflate", False),
                        self.cfg.get("open_timeout", OPEN_TIMEOUT),
                        self.reader(inst),
                    )
                except Exception as exc:
                    failures[type(exc).__name__] += 1
                    return
                self.socks.append(sock)

        await asyncio.gather(*(one(*c) for c in self.clients))
        return {"connected": len(self.socks), "failures": dict(failures)}

    def reader(self, inst: int) -> Any:
        last_seq = 0
        monotonic = time.monotonic

        def on_text(raw: str) -> None:
            nonlocal last_seq
            now = monotonic()
            if '"message.new"' not in raw[:24]:
                self.other_frames[_field(raw, "type")] += 1
                return
            seq = int(_field(raw, "seq") or 0)
            if seq <= last_seq:
                self.out_of_order += 1
            elif last_seq and seq > last_seq + 1:
                self.gaps += 1
            last_seq = max(last_seq, seq)
            body = _field(raw, "body")
            if not body.startswith("b|"):
                return
            _, step, ts, sinst, _ = body.split("|", 4)
            st = int(step)
            self.count[st] += 1
            self.lat[st]["same" if int(sinst) == inst else "cross"].append(now - float(ts))

        return on_text

    def counted(self, step: int) -> int:
        return self.count[step]

    def report(self, step: int) -> dict[str, Any]:
        lat = self.lat.pop(step, {"same": array("d"), "cross": array("d")})
        closed = Counter(s.closed.result() for s in self.socks if s.closed.done())
        return {
            "count": self.count[step],
            "same": lat["same"].tobytes(),
            "cross": lat["cross"].tobytes(),
            "closed": dict(closed),
            "out_of_order": self.out_of_order,
            "gaps": self.gaps,
            "open": sum(1 for s in self.socks if not s.closed.done()),
            "other_frames": dict(self.other_frames),
        }

    async def close(self) -> None:
        for i in range(0, len(self.socks), 500):
            await asyncio.gather(*(s.close() for s in self.socks[i : i + 500]))


# --- senders ------------------------------------------------------------------------------------


class Senders:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.clients: list[tuple[str, str, int]] = cfg["clients"]
        self.conv: str = cfg["conversation_id"]
        self.socks: list[tuple[ClientConnection, int]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.sent_at: dict[str, float] = {}
        self.ack_lat: dict[int, array] = defaultdict(lambda: array("d"))
        self.acks: Counter[int] = Counter()
        self.errors: dict[int, Counter[str]] = defaultdict(Counter)
        self.deliveries: Counter[int] = Counter()  # message.new frames the sender sockets got
        self.closed: Counter[str] = Counter()

    async def connect(self, concurrency: int) -> dict[str, Any]:
        for url, token, inst in self.clients:
            ws, _ = await open_client(url, token, self.cfg.get("deflate", False), self.cfg.get("open_timeout", 120))
            self.socks.append((ws, inst))
            self.tasks.append(asyncio.get_running_loop().create_task(self.read(ws)))
        return {"connected": len(self.socks)}

    async def read(self, ws: ClientConnection) -> None:
        monotonic = time.monotonic
        try:
            async for raw in ws:
                now = monotonic()
                assert isinstance(raw, str)
                head = raw[:24]
                if '"message.new"' in head:
                    body = _field(raw, "body")
                    if body.startswith("b|"):
                        self.deliveries[int(body.split("|", 2)[1])] += 1
                elif '"ack"' in head or '"error"' in head:
                    rid = _field(raw, "id")
                    step = int(rid.split("-", 1)[0]) if rid[:1].isdigit() else -1
                    sent = self.sent_at.pop(rid, None)
                    if '"ack"' in head:
                        self.acks[step] += 1
                        if sent is not None:
                            self.ack_lat[step].append(now - sent)
                    else:
                        self.errors[step][_field(raw, "code") or "?"] += 1
        except ConnectionClosed as exc:
            self.closed[_close_code(exc)] += 1
        except Exception as exc:
            self.closed[f"error:{type(exc).__name__}"] += 1

    async def step(self, step: int, rate: float, duration: float, n_senders: int, ack_wait: float) -> dict[str, Any]:
        socks = self.socks[: max(1, min(n_senders, len(self.socks)))]
        total = max(1, round(rate * duration))
        monotonic = time.monotonic
        t0 = monotonic() + 0.05
        max_behind = 0.0
        for i in range(total):
            target = t0 + i / rate
            delay = target - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_behind = max(max_behind, -delay)
            ws, inst = socks[i % len(socks)]
            rid = f"{step}-{i}"
            now = monotonic()
            self.sent_at[rid] = now
            try:
                await ws.send(
                    f'{{"type":"message.send","id":"{rid}","conversation_id":"{self.conv}",'
                    f'"body":"b|{step}|{now:.6f}|{inst}|{i}"}}'
                )
            except ConnectionClosed:
                self.errors[step]["socket-closed"] += 1
        elapsed = monotonic() - t0
        deadline = monotonic() + ack_wait
        while monotonic() < deadline and self.acks[step] + sum(self.errors[step].values()) < total:
            await asyncio.sleep(0.02)
        lat = sorted(self.ack_lat.pop(step, array("d")))
        return {
            "sent": total,
            "send_elapsed": elapsed,
            "max_behind_s": max_behind,
            "acks": self.acks[step],
            "errors": dict(self.errors[step]),
            "ack_p50_ms": _pct(lat, 50) * 1000,
            "ack_p99_ms": _pct(lat, 99) * 1000,
            "closed": dict(self.closed),
        }

    def counted(self, step: int) -> int:
        return self.deliveries[step]

    def pending(self) -> int:
        """Sends not answered yet (a saturated server is still working through them)."""
        return len(self.sent_at)

    async def close(self) -> None:
        await _close_all([ws for ws, _ in self.socks])


# --- idle sockets (S3) --------------------------------------------------------------------------


class Idle:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.clients: list[tuple[str, str]] = cfg["clients"]  # (url, token)
        self.urls = {token: url for url, token in self.clients}
        self.socks: list[ClientConnection] = []
        self.sock_tokens: list[str] = []  # the token of each of socks
        self.next = 0

    async def connect(self, upto: int, concurrency: int) -> dict[str, Any]:
        """Connect clients[next:upto]; each waits for its hello."""
        sem = asyncio.Semaphore(concurrency)
        failures: Counter[str] = Counter()
        batch = self.clients[self.next : upto]
        self.next = max(self.next, upto)
        first_done: list[float] = []

        async def one(url: str, token: str) -> None:
            async with sem:
                try:
                    ws, _ = await open_client(
                        url, token, self.cfg.get("deflate", False), self.cfg.get("open_timeout", OPEN_TIMEOUT)
                    )
                except Exception as exc:
                    failures[type(exc).__name__] += 1
                    return
                self.socks.append(ws)
                self.sock_tokens.append(token)
                first_done.append(time.monotonic())

        t0 = time.monotonic()
        await asyncio.gather(*(one(*c) for c in batch))
        return {
            "started": t0,
            "finished": max(first_done) if first_done else time.monotonic(),
            "connected": len(batch) - sum(failures.values()),
            "failures": dict(failures),
            "open": sum(1 for ws in self.socks if ws.close_code is None),
        }

    async def cycle(self, concurrency: int) -> dict[str, Any]:
        """Close each socket and open it again at once, ``concurrency`` at a time: returning
        users, each away for a moment (well within its presence grace)."""
        sem = asyncio.Semaphore(concurrency)
        failures: Counter[str] = Counter()
        pairs = list(zip(self.socks, self.sock_tokens, strict=True))
        self.socks, self.sock_tokens = [], []
        done: list[float] = []

        async def one(ws: ClientConnection, token: str) -> None:
            async with sem:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 3)
                try:
                    new, _ = await open_client(
                        self.urls[token], token, self.cfg.get("deflate", False),
                        self.cfg.get("open_timeout", OPEN_TIMEOUT),
                    )  # fmt: skip
                except Exception as exc:
                    failures[type(exc).__name__] += 1
                    return
                self.socks.append(new)
                self.sock_tokens.append(token)
                done.append(time.monotonic())

        t0 = time.monotonic()
        await asyncio.gather(*(one(ws, token) for ws, token in pairs))
        return {
            "started": t0,
            "finished": max(done) if done else time.monotonic(),
            "connected": len(done),
            "failures": dict(failures),
        }

    async def close(self) -> None:
        await _close_all(self.socks)


# --- reconnect storm (S4) -----------------------------------------------------------------------


class Storm:
    """Clients, each in one small conversation. When their instance dies they reconnect to the
    next instance in ``urls`` (no jitter unless asked: the harshest storm), send ``resume`` with
    their last seen seq and wait for its ack. A sender socket in all their conversations sends
    one message to each before and after the kill."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.urls: list[str] = cfg["urls"]
        self.clients: list[tuple[int, str, str]] = cfg["clients"]  # (instance index, token, conversation)
        self.jitter: float = cfg.get("jitter", 0.0)
        self.timeout: float = cfg.get("open_timeout", OPEN_TIMEOUT)
        self.state: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.sender: ClientConnection | None = None
        self.stop = asyncio.Event()

    async def _open(self, url: str, token: str) -> ClientConnection:
        ws, _ = await open_client(url, token, self.cfg.get("deflate", False), self.timeout)
        return ws

    async def connect(self, concurrency: int) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        failures: Counter[str] = Counter()
        ready: list[dict[str, Any]] = []

        async def one(inst: int, token: str, conv: str) -> None:
            async with sem:
                try:
                    ws = await self._open(self.urls[inst], token)
                except Exception as exc:
                    failures[type(exc).__name__] += 1
                    return
            ready.append(
                {
                    "inst": inst,
                    "token": token,
                    "conv": conv,
                    "ws": ws,
                    "last_seq": 0,
                    "dropped_at": None,
                    "resumed_at": None,
                    "attempts": 0,
                    "missing": 0,
                    "error": None,
                    "reconnected_to": None,
                    "close_code": None,
                    "reopened_at": None,
                }
            )

        await asyncio.gather(*(one(*c) for c in self.clients))
        self.state = ready
        for st in self.state:
            self.tasks.append(asyncio.get_running_loop().create_task(self.run_client(st)))
        if self.cfg.get("sender_token"):
            self.sender = await self._open(self.urls[self.cfg["sender_instance"]], self.cfg["sender_token"])
        return {"connected": len(ready), "failures": dict(failures)}

    @staticmethod
    def _live(st: dict[str, Any], raw: Any) -> None:
        if isinstance(raw, str) and '"message.new"' in raw[:24]:
            seq = int(_field(raw, "seq") or 0)
            if st["last_seq"] and seq > st["last_seq"] + 1:
                st["missing"] += seq - st["last_seq"] - 1
            st["last_seq"] = max(st["last_seq"], seq)

    async def run_client(self, st: dict[str, Any]) -> None:
        ws: ClientConnection = st.pop("ws")
        try:
            async for raw in ws:
                self._live(st, raw)
        except ConnectionClosed:
            pass
        except Exception as exc:
            st["error"] = repr(exc)[:200]
        if self.stop.is_set():
            return
        st["dropped_at"] = time.monotonic()
        st["close_code"] = ws.close_code if ws.close_code is not None else "no-close-frame"
        if ws.close_reason:
            st["close_code"] = f"{st['close_code']} {ws.close_reason}"
        # Reconnect to the next instance in the list: bounded attempts, capped backoff.
        idx = st["inst"]
        backoff = 0.1
        if self.jitter:
            await asyncio.sleep(random.uniform(0, self.jitter))
        deadline = time.monotonic() + self.cfg.get("give_up_after", 60.0)
        while not self.stop.is_set() and time.monotonic() < deadline and st["attempts"] < 50:
            idx = (idx + 1) % len(self.urls)
            st["attempts"] += 1
            try:
                ws = await self._open(self.urls[idx], st["token"])
            except Exception as exc:
                st["error"] = type(exc).__name__
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, 2.0)
                continue
            st["reopened_at"] = time.monotonic()
            try:
                after = st["last_seq"]
                await ws.send(json.dumps({"type": "resume", "id": "resume", "cursors": {st["conv"]: after}}))
                got: list[int] = []
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    async for raw in ws:
                        assert isinstance(raw, str)
                        head = raw[:24]
                        if '"message.new"' in head:
                            got.append(int(_field(raw, "seq") or 0))
                        elif '"ack"' in head and _field(raw, "id") == "resume":
                            st["resumed_at"] = time.monotonic()
                            st["reconnected_to"] = idx
                            resumed = json.loads(raw).get("resumed", {}).get(st["conv"], after)
                            st["missing"] += len(set(range(after + 1, int(resumed) + 1)) - set(got))
                            st["last_seq"] = max([after, int(resumed), *got])
                            break
                        elif '"error"' in head:
                            st["error"] = _field(raw, "code")
                            break
            except (ConnectionClosed, TimeoutError) as exc:
                st["error"] = type(exc).__name__
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, 2.0)
                continue
            if st["resumed_at"] is None:
                return
            st["ws"] = ws
            with contextlib.suppress(Exception):
                async for raw in ws:
                    self._live(st, raw)
            return

    async def send_round(self, conversations: list[str], timeout: float = 120.0, window: int = 5) -> dict[str, Any]:
        """One message to each conversation, at most ``window`` unanswered at a time (the server
        reads a socket's frames one by one, and a pong queued behind many frames arrives late);
        waits for the acks. When the server closes the sender socket it reconnects (to the same
        instance) and sends the unanswered ones again with the same ``client_msg_id``.
        Returns the acked seq per conversation."""
        assert self.sender is not None
        ids: dict[str, tuple[int, str]] = {}
        seqs: dict[str, int] = {}
        errors: Counter[str] = Counter()
        todo = list(enumerate(conversations))
        tag = time.monotonic_ns()
        reconnects = 0
        deadline = time.monotonic() + timeout
        while (todo or ids) and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    while todo or ids:
                        while todo and len(ids) < window:
                            i, conv = todo.pop(0)
                            rid = f"storm-{tag}-{i}"
                            ids[rid] = (i, conv)
                            frame = {"type": "message.send", "id": rid, "conversation_id": conv, "body": f"s{i}",
                                     "client_msg_id": rid}  # fmt: skip
                            await self.sender.send(json.dumps(frame))
                        raw = await self.sender.recv()
                        assert isinstance(raw, str)
                        head = raw[:24]
                        if '"ack"' not in head and '"error"' not in head:
                            continue
                        entry = ids.pop(_field(raw, "id"), None)
                        if entry is None:
                            continue
                        if '"ack"' in head:
                            seqs[entry[1]] = int(_field(raw, "seq") or 0)
                        else:
                            errors[_field(raw, "code")] += 1
            except TimeoutError:
                errors["timeout"] += 1
                break
            except ConnectionClosed as exc:
                errors[f"sender closed {_close_code(exc)}: {exc.rcvd.reason if exc.rcvd else ''}"] += 1
                if reconnects >= 5:
                    break
                reconnects += 1
                todo = sorted(ids.values()) + todo
                ids.clear()
                with contextlib.suppress(Exception):
                    self.sender = await self._open(self.urls[self.cfg["sender_instance"]], self.cfg["sender_token"])
        return {"seqs": seqs, "errors": dict(errors), "unanswered": len(ids) + len(todo)}

    def status(self, seqs: dict[str, int] | None = None) -> dict[str, Any]:
        seqs = seqs or {}
        return {
            "clients": len(self.state),
            "at_seq": sum(1 for st in self.state if st["last_seq"] >= seqs.get(st["conv"], 0)),
            "dropped": sum(1 for st in self.state if st["dropped_at"] is not None),
            "resumed": sum(1 for st in self.state if st["resumed_at"] is not None),
        }

    def report(self) -> dict[str, Any]:
        keys = (
            "inst",
            "conv",
            "dropped_at",
            "resumed_at",
            "attempts",
            "missing",
            "error",
            "last_seq",
            "reconnected_to",
            "close_code",
            "reopened_at",
        )
        return {"clients": [{k: st[k] for k in keys} for st in self.state]}

    async def close(self) -> None:
        self.stop.set()
        socks = [st["ws"] for st in self.state if st.get("ws") is not None]
        if self.sender is not None:
            socks.append(self.sender)
        await _close_all(socks)
        for t in self.tasks:
            t.cancel()


# --- plumbing -----------------------------------------------------------------------------------


def _pct(values: list[float] | array, p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return float(values[k])


async def _close_all(socks: list[ClientConnection]) -> None:
    async def one(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 3)

    for i in range(0, len(socks), 500):
        await asyncio.gather(*(one(ws) for ws in socks[i : i + 500]))


ROLES = {"receivers": Receivers, "senders": Senders, "idle": Idle, "storm": Storm}


async def _serve(role: str, cfg: dict[str, Any], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    worker = ROLES[role](cfg)
    cpu0 = cpu_seconds()
    while True:
        # The controller always answers within its own deadlines; this bounds an orphaned worker.
        if not await loop.run_in_executor(None, conn.poll, cfg.get("idle_timeout", 900)):
            break
        cmd, kwargs = await loop.run_in_executor(None, conn.recv)
        if cmd == "exit":
            await worker.close()
            conn.send({"ok": True, "cpu_s": cpu_seconds() - cpu0})
            break
        try:
            if cmd == "cpu":
                result: Any = {"cpu_s": cpu_seconds() - cpu0}
            else:
                result = getattr(worker, cmd)(**kwargs)
                if asyncio.iscoroutine(result):
                    result = await result
            conn.send({"ok": True, "result": result})
        except Exception as exc:
            conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})


def worker_main(role: str, cfg: dict[str, Any], conn: Connection) -> None:
    import uvloop

    raise_nofile()
    uvloop.run(_serve(role, cfg, conn))
