"""The shipped uvicorn WebSocket protocol (realtime/uvicorn_protocol.py) on a real uvicorn server
over real sockets: frames, refusals, closes and flow control as uvicorn's own, with less kept
per idle socket (no handshake request or response, no queue or event objects)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import weakref
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from harness.processes import free_port
from realtime.uvicorn_protocol import Flag, Inbox, WebSocketProtocol


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text") or ""
        if text == "close":
            await send({"type": "websocket.close", "code": 4000})
            return
        if text.startswith("many:"):  # a burst larger than the transport's buffer
            for i in range(int(text[5:])):
                await send({"type": "websocket.send", "text": f"{i}:" + "x" * 16000})
            continue
        await send({"type": "websocket.send", "text": text.upper()})


@contextlib.asynccontextmanager
async def serving():
    port = free_port()
    config = uvicorn.Config(echo_app, host="127.0.0.1", port=port, ws=WebSocketProtocol, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started
    try:
        yield server, f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_frames_go_both_ways_and_the_idle_socket_keeps_no_handshake_objects():
    async with serving() as (server, url), websockets.connect(url + "/echo") as ws:
        await ws.send("hello")
        assert await ws.recv() == "HELLO"
        (proto,) = list(server.server_state.connections)
        assert isinstance(proto, WebSocketProtocol)
        assert proto.request is None and proto.response is None
        assert isinstance(proto.queue, Inbox) and proto.queue.items is None
        assert isinstance(proto.writable, Flag) and proto.writable.waiters is None
        for word in ("a", "b", "c"):
            await ws.send(word)
        assert [await ws.recv() for _ in range(3)] == ["A", "B", "C"]


async def test_the_handshake_request_is_freed_once_the_socket_is_open(monkeypatch):
    requests: list[weakref.ref[Any]] = []
    original = WebSocketProtocol.handle_connect

    def handle_connect(self: WebSocketProtocol, event: Any) -> None:
        requests.append(weakref.ref(event))
        original(self, event)

    monkeypatch.setattr(WebSocketProtocol, "handle_connect", handle_connect)
    async with serving() as (_, url), websockets.connect(url + "/echo") as ws:
        await ws.send("x")
        assert await ws.recv() == "X"
        gc.collect()
        assert len(requests) == 1 and requests[0]() is None
        await ws.send("y" * 100_000)  # frames still parse, large ones too
        assert await ws.recv() == "Y" * 100_000


async def test_the_server_closes_with_its_code_and_refuses_before_accepting():
    async with serving() as (_, url):
        async with websockets.connect(url + "/echo") as ws:
            await ws.send("close")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url + "/refuse"):
                pass
        assert refused.value.response.status_code == 403


async def test_a_client_that_stops_reading_pauses_the_sender_which_resumes_when_it_reads():
    async with serving() as (server, url):
        # A client over a plain stream (websockets' sans-I/O client) with a small receive buffer
        # that stops reading: the server's kernel buffer fills, then its transport's, and the
        # transport pauses the protocol's writes until the client reads again.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        client = ClientProtocol(parse_uri(url + "/echo"), max_size=None)
        client.send_request(client.connect())
        writer.write(b"".join(client.data_to_send()))
        while client.state is not State.OPEN:
            client.receive_data(await reader.read(4096))
        client.events_received()  # the handshake's response
        client.send_text(b"many:2000")
        writer.write(b"".join(client.data_to_send()))
        (proto,) = list(server.server_state.connections)
        for _ in range(250):
            if not proto.writable.is_set():
                break
            await asyncio.sleep(0.02)
        assert not proto.writable.is_set() and proto.writable.waiters
        received: list[str] = []
        while len(received) < 2000:
            client.receive_data(await asyncio.wait_for(reader.read(1 << 20), 10))
            received += [event.data.decode() for event in client.events_received() if event.opcode is Opcode.TEXT]
        assert [r.split(":")[0] for r in received] == [str(i) for i in range(2000)]
        assert proto.writable.is_set() and proto.writable.waiters is None
        writer.close()


async def test_the_client_going_away_reaches_the_app_as_a_disconnect():
    async with serving() as (server, url):
        ws = await websockets.connect(url + "/echo")
        await ws.send("x")
        assert await ws.recv() == "X"
        (proto,) = list(server.server_state.connections)
        await ws.close()
        for _ in range(200):
            if not server.server_state.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.server_state.connections and proto.disconnected


async def test_inbox_hands_items_to_one_reader_in_order():
    inbox = Inbox()
    assert inbox.empty() and inbox.qsize() == 0
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await reader == 1
    assert inbox.qsize() == 1 and await inbox.get() == 2
    assert inbox.empty() and inbox.items is None


async def test_flag_wakes_every_waiter_and_forgets_a_cancelled_one():
    flag = Flag()
    assert flag.is_set() and await flag.wait()
    flag.clear()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    assert flag.waiters is not None and len(flag.waiters) == 2
    flag.set()
    assert await asyncio.gather(*waiters[1:]) == [True, True]
    assert flag.waiters is None
