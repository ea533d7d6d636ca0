"""The cap on live sockets per client address (``WS_MAX_SOCKETS_PER_ADDRESS``), counted across
instances and users in Redis, with the address taken from X-Forwarded-For only when the peer
is a trusted proxy. Real sockets from distinct loopback source addresses, on both servers."""

from __future__ import annotations

import asyncio
import socket

import pytest
from channels.db import database_sync_to_async
from websockets.exceptions import ConnectionClosedError

from chat.socket_cap import client_address
from tests.factories import UserFactory
from tests.integration.conftest import open_ws, token

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CAP = 2
PROXY = "127.0.0.3"
SERVERS = {"daphne": "daphne", "uvicorn": "uvicorn"}
SERVER_ENV = {"WS_MAX_SOCKETS_PER_ADDRESS": str(CAP), "TRUSTED_PROXIES": f"{PROXY},10.255.0.0/16"}
KINDS = list(SERVERS)


async def users(n: int) -> list:
    def make() -> list:
        made = [UserFactory() for _ in range(n)]
        for user in made:
            user.token = token(user)
        return made

    return await database_sync_to_async(make)()


async def connect_from(source: str, server, user, xff: str | None = None, *, hello: bool = True):
    """A socket whose TCP peer address (as the server sees it) is ``source``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    headers = {"X-Forwarded-For": xff} if xff else None
    return await open_ws(server.ws_url, user, headers=headers, sock=sock, hello=hello)


async def refused(source: str, server, user, xff: str | None = None) -> int | None:
    ws = await connect_from(source, server, user, xff, hello=False)
    return await ws.closed_code(5)


@pytest.mark.parametrize("kind", KINDS)
async def test_sockets_per_address_are_capped_across_instances_and_users(app, kind):
    source = "127.0.0.11" if kind == "daphne" else "127.0.0.12"
    here, there = app.servers[kind], app.servers[next(k for k in KINDS if k != kind)]
    first, second, third = await users(3)
    held = [await connect_from(source, here, first), await connect_from(source, there, second)]
    # The address holds its cap across both instances: a third user from it is refused on either.
    assert await refused(source, here, third) == 4429
    assert await refused(source, there, third) == 4429
    # Another address is not affected.
    elsewhere = await connect_from("127.0.0.13" if kind == "daphne" else "127.0.0.14", here, third)
    assert (await elsewhere.request({"type": "ping", "id": "p"}))["type"] == "pong"
    # A freed slot is given back once the server has handled the disconnect.
    await held.pop().close()
    again, codes = None, []
    for _ in range(30):
        try:
            again = await connect_from(source, here, third)
            break
        except ConnectionClosedError as exc:
            codes.append(exc.rcvd.code if exc.rcvd else None)
            await asyncio.sleep(0.1)
    assert set(codes) <= {4429}, codes
    assert again is not None, "the freed slot was never given back"
    for ws in [*held, again, elsewhere]:
        await ws.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_forwarded_for_counts_only_from_a_trusted_proxy(app, kind):
    server = app.servers[kind]
    untrusted = "127.0.0.21" if kind == "daphne" else "127.0.0.22"
    client = "10.0.1.1" if kind == "daphne" else "10.0.2.1"
    other_client = "10.0.1.2" if kind == "daphne" else "10.0.2.2"
    people = await users(6)
    # From a peer that is not a trusted proxy the header is ignored: each client it names still
    # counts against the peer's own address.
    held = [
        await connect_from(untrusted, server, people[0], xff="10.9.0.1"),
        await connect_from(untrusted, server, people[1], xff="10.9.0.2"),
    ]
    assert await refused(untrusted, server, people[2], xff="10.9.0.3") == 4429
    # Through the trusted proxy, each client address counts on its own, however many share it.
    held += [
        await connect_from(PROXY, server, people[2], xff=client),
        await connect_from(PROXY, server, people[3], xff=f"203.0.113.9, {client}"),  # a forged hop on the left
    ]
    assert await refused(PROXY, server, people[4], xff=client) == 4429
    # A chain through a second trusted proxy still names the same client.
    assert await refused(PROXY, server, people[4], xff=f"{client}, 10.255.3.4") == 4429
    # The client cannot move itself to a fresh address by prepending one: only the proxy's hop counts.
    assert await refused(PROXY, server, people[4], xff=f"{other_client}, {client}") == 4429
    held.append(await connect_from(PROXY, server, people[5], xff=other_client))
    for ws in held:
        await ws.close()


def test_client_address_from_the_scope(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1", "10.1.0.0/16"]

    def scope(peer: str, *xff: str) -> dict:
        return {"client": [peer, 5000], "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}

    assert client_address(scope("192.0.2.7", "198.51.100.1")) == "192.0.2.7"  # not a trusted peer
    assert client_address(scope("127.0.0.1")) == "127.0.0.1"  # no header
    assert client_address(scope("127.0.0.1", "198.51.100.1, 10.1.2.3")) == "198.51.100.1"
    assert client_address(scope("127.0.0.1", "198.51.100.2", "198.51.100.1")) == "198.51.100.1"  # two headers
    assert client_address(scope("127.0.0.1", "10.1.2.3, 10.1.9.9")) == "10.1.2.3"  # only proxies: the first
    # IPv6 counts by the /64 (one host's usual share); an IPv4-mapped address as the IPv4 one.
    assert client_address(scope("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert client_address(scope("::ffff:192.0.2.9")) == "192.0.2.9"
    assert client_address({"client": None}) == ""
