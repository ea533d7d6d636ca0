"""SIGTERM drains an instance as the contract says: health answers 503 "draining" and new
handshakes are refused with HTTP 503 at once, then sockets close with 1012 and the process
exits within 10 s. Real uvicorn and daphne processes, a real signal."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from realtime.registry import instance_conns_key, instances_key
from tests.integration.conftest import open_ws, start_cluster

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def draining_cluster(transactional_db, tmp_path):
    # A notice long enough to look at the draining instance before its sockets close.
    cluster = start_cluster(tmp_path, servers={"u": "uvicorn", "d": "daphne"}, DRAIN_NOTICE_SECONDS="3")
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("instance", ["u", "d"])
async def test_sigterm_tells_the_balancer_first_then_closes_with_1012(draining_cluster, people, instance):
    server = draining_cluster.servers[instance]
    ws = await open_ws(server.ws_url, people["alice"])
    assert (await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/api/health"))[0] == 200

    started = time.monotonic()
    server.signal(signal.SIGTERM)
    status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/api/health")
    assert (status, body["status"]) == (503, "draining")
    assert time.monotonic() - started < 2.5, "health must say so at once"

    headers = {"Authorization": f"Token {people['bob'].token}"}
    if instance == "u":
        # uvicorn speaks the ASGI denial extension: an HTTP 503 the balancer retries elsewhere.
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(server.ws_url, additional_headers=headers, open_timeout=5)
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "1"
    else:
        # daphne has no such extension: accepted and closed with 1012 at once, never routed.
        late = await ws_connect(server.ws_url, additional_headers=headers, open_timeout=5)
        with pytest.raises(Exception):  # noqa: B017, PT011
            await asyncio.wait_for(late.recv(), 5)
        assert late.close_code == 1012
    # The socket that was open before SIGTERM is still fed until the notice ends, then 1012.
    pong = await ws.request({"type": "ping", "id": "p"})
    assert pong["type"] == "pong"
    assert await ws.closed_code(10) == 1012
    assert server.wait(10) is not None
    assert time.monotonic() - started < 10
    r = draining_cluster.redis_client()
    assert r.scard(instance_conns_key(instance)) == 0
    assert r.zscore(instances_key(), instance) is None
    assert "Traceback" not in server.logs()
