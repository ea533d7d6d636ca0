"""Admission limits under a real burst of clients against a real uvicorn instance."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from rest_framework.authtoken.models import Token
from websockets.exceptions import InvalidStatus

from tests.factories import UserFactory
from tests.integration.conftest import open_ws, start_cluster
from tests.integration.test_cluster import ahttp

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BURST = 60
RATE = 10


def _users(count: int) -> list:
    users = [UserFactory() for _ in range(count)]
    for user in users:
        user.token = Token.objects.create(user=user).key
    return users


async def _try(url: str, user) -> tuple[str, object]:
    try:
        ws = await open_ws(url, user)
    except InvalidStatus as exc:
        return "refused", exc.response
    return "open", ws


@pytest.fixture
def rate_limited(transactional_db, tmp_path):
    c = start_cluster(tmp_path, servers={"a": "uvicorn"}, WS_MAX_CONNECTS_PER_SECOND=str(RATE), WS_MAX_SOCKETS="0")
    yield c
    c.stop()


@pytest.fixture
def socket_capped(transactional_db, tmp_path, topology_cluster):
    c = start_cluster(
        tmp_path,
        servers={"a": "uvicorn"},
        redis_cluster=topology_cluster,
        WS_MAX_CONNECTS_PER_SECOND="0",
        WS_MAX_SOCKETS="5",
    )
    yield c
    c.stop()


async def test_burst_over_connect_rate_refused_with_503_and_retry_after(rate_limited):
    server = rate_limited.servers["a"]
    users = await database_sync_to_async(_users)(BURST)
    started = time.monotonic()
    results = await asyncio.gather(*(_try(server.ws_url, user) for user in users))
    elapsed = time.monotonic() - started
    opened = [ws for kind, ws in results if kind == "open"]
    refused = [response for kind, response in results if kind == "refused"]
    assert len(opened) + len(refused) == BURST
    # The bucket holds one second's worth and refills at RATE a second while the burst lasts.
    assert 1 <= len(opened) <= RATE + RATE * elapsed + 1
    assert refused
    for response in refused:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1

    status, body = await ahttp("GET", f"{server.url}/api/health")
    assert status == 200 and body["status"] == "degraded", body
    assert all(service["status"] != "down" for service in body["services"].values())  # shedding, not a fault
    for ws in opened:
        await ws.close()

    # Shedding ends with the burst: after the report window, health is ok and connects pass.
    await asyncio.sleep(5.5)
    status, body = await ahttp("GET", f"{server.url}/api/health")
    assert status == 200 and body["status"] == "ok", body
    ws = await open_ws(server.ws_url, users[0])
    await ws.close()


@pytest.mark.redis_topologies
async def test_sockets_over_the_cap_refused_until_one_closes(socket_capped):
    server = socket_capped.servers["a"]
    users = await database_sync_to_async(_users)(7)
    opened = [await open_ws(server.ws_url, user) for user in users[:5]]
    kind, response = await _try(server.ws_url, users[5])
    assert kind == "refused"
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    await opened.pop().close()
    for _ in range(50):  # the server notices the close at once; bounded wait for its disconnect
        kind, ws = await _try(server.ws_url, users[6])
        if kind == "open":
            break
        await asyncio.sleep(0.1)
    assert kind == "open"
    opened.append(ws)
    for ws in opened:
        await ws.close()
