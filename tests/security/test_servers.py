"""The socket limits hold alike under both servers of the contract, each started with the
contract's own command (daphne with no flags): a frame or message over ``WS_MAX_FRAME_BYTES``
is closed with 1009, and a client that stops reading is closed with 4008 while the others keep
receiving."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket

import pytest
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import open_ws, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LIMIT = 1048576  # 1 MiB: daphne's own default limit, the size it used to drop with 1006
SERVERS = {"uvicorn": "uvicorn", "daphne": "daphne"}
SERVER_ENV = {
    "WS_MAX_FRAME_BYTES": str(LIMIT),
    "WS_SEND_QUEUE_FRAMES": "20",
    "MESSAGE_MAX_CHARS": "60000",
    "RATE_LIMIT_MESSAGES": "1000/s burst 1000",
}
KINDS = list(SERVERS)


def frame_of(size: int, cid: str) -> str:
    """A ``message.send`` frame of exactly ``size`` bytes."""
    head, tail = json.dumps({"type": "message.send", "conversation_id": cid, "id": "big", "body": ""}).split('""')
    pad = size - len(head) - len(tail) - 2
    return f'{head}"{"x" * pad}"{tail}'


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [LIMIT + 10, 3 * LIMIT])
async def test_frame_over_the_limit_is_closed_with_1009(app, people, kind, size):
    ws = await open_ws(app.servers[kind].ws_url, people["alice"])
    text = frame_of(size, people["cid"])
    assert len(text.encode()) == size
    assert await send_until_closed(ws, text) == 1009


async def send_until_closed(ws, message) -> int | None:
    """Send, then wait for the close; the server may close while the client is still sending."""
    try:
        await ws.conn.send(message)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    return await ws.closed_code(15)


@pytest.mark.parametrize("kind", KINDS)
async def test_message_over_the_limit_in_small_fragments_is_closed_with_1009(app, people, kind):
    ws = await open_ws(app.servers[kind].ws_url, people["alice"])
    text = frame_of(2 * LIMIT, people["cid"])
    fragments = [text[i : i + LIMIT // 4] for i in range(0, len(text), LIMIT // 4)]
    assert len(fragments) == 8
    assert await send_until_closed(ws, fragments) == 1009


@pytest.mark.parametrize("kind", KINDS)
async def test_frame_at_the_limit_is_read_and_answered(app, people, kind):
    ws = await open_ws(app.servers[kind].ws_url, people["alice"])
    await ws.send(frame_of(LIMIT, people["cid"]))
    error = await ws.expect(lambda f: f.get("id") == "big", 15)
    assert (error["type"], error["status"]) == ("error", 400)  # the body is over MESSAGE_MAX_CHARS
    assert (await ws.request({"type": "ping", "id": "p"}))["type"] == "pong"
    await ws.close()


@pytest.fixture(scope="module")
def byte_bound_app(django_db_setup, tmp_path_factory):
    """The same servers with a queue bounded by bytes long before its frame count."""
    env = {**SERVER_ENV, "WS_SEND_QUEUE_FRAMES": "1000", "WS_SEND_QUEUE_BYTES": "262144"}
    cluster = start_cluster(tmp_path_factory.mktemp("bytes"), servers=SERVERS, **env)
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bound", ["frames", "bytes"])
async def test_slow_reader_is_closed_with_4008_and_others_keep_receiving(request, people, kind, bound):
    server = request.getfixturevalue("app" if bound == "frames" else "byte_bound_app").servers[kind]
    cid = people["cid"]
    overflows_before = server.logs().count("outgoing queue overflow")
    # A client that stops reading: its small incoming queue fills, it stops reading the socket,
    # TCP backs up (a small fixed receive buffer, no autotuning up to tcp_rmem's tens of MB),
    # and the server's queue for it overflows.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", server.port))
    slow = await open_ws(server.ws_url, people["bob"], max_queue=1, sock=sock)
    alice = await open_ws(server.ws_url, people["alice"])
    overflowed = False
    for i in range(400):
        # Random text: permessage-deflate would shrink a repeated character to nothing.
        ack = await alice.request(
            {"type": "message.send", "id": f"m{i}", "conversation_id": cid, "body": secrets.token_urlsafe(44000)}
        )
        assert ack["type"] == "ack"
        if i % 5 == 4:
            await asyncio.sleep(0.05)  # the server's writes run between the sends
        if server.logs().count("outgoing queue overflow") > overflows_before:
            overflowed = True
            break
    assert overflowed, "the server kept queueing for a client that does not read"
    # The slow client now drains what was buffered and finds the 4008 close at the end.
    assert await slow.closed_code(30) == 4008
    # The sender (a reader that keeps up) got every ack and keeps receiving.
    ack = await alice.request({"type": "message.send", "id": "last", "conversation_id": cid, "body": "after"})
    frame = await alice.expect(lambda f: f.get("type") == "message.new" and f["message"]["body"] == "after", 20)
    assert frame["message"]["seq"] == ack["message"]["seq"]
    await alice.close()
