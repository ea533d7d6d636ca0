"""The shipped docker/nginx.conf in front of three uvicorn instances: a rolling restart and a
killed instance never lock new handshakes out while instances are up."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.conftest import start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def _handshake(url: str, token: str) -> str:
    """One new client through nginx: "hello", "close <code>" (refused after the upgrade, a
    draining instance), "http <status>" or the connection error."""
    try:
        async with ws_connect(url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=8) as conn:
            while True:
                frame = json.loads(await asyncio.wait_for(conn.recv(), 5))
                if frame.get("type") == "hello":
                    return "hello"
    except InvalidStatus as exc:
        return f"http {exc.response.status_code}"
    except ConnectionClosed as exc:
        return f"close {exc.rcvd.code if exc.rcvd else None}"
    except (OSError, TimeoutError) as exc:
        return f"error {exc.__class__.__name__}"


async def _hold(url: str, token: str, stop: asyncio.Event) -> None:
    """A long-lived client: keeps a socket open, reconnecting whenever it is closed."""
    while not stop.is_set():
        try:
            async with ws_connect(url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=8) as conn:
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(conn.recv(), 0.5)
                    except TimeoutError:
                        continue
        except Exception:  # closed or refused: reconnect after a pause
            pass
        await asyncio.sleep(0.2)


async def test_rolling_restart_and_sigkill_never_lock_new_handshakes_out(transactional_db, tmp_path, people):
    cluster = start_cluster(tmp_path, servers={"a": "uvicorn", "b": "uvicorn", "c": "uvicorn"}, nginx=True)
    assert cluster.nginx is not None
    lb = f"ws://127.0.0.1:{cluster.nginx.port}/ws/chat/"
    token = people["bob"].token
    stop = asyncio.Event()
    results: list[tuple[float, str, str]] = []
    phase = "steady"

    async def probe() -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            results.append((time.monotonic(), phase, await _handshake(lb, token)))
            await asyncio.sleep(0.1)

    holders = [asyncio.create_task(_hold(lb, token, stop)) for _ in range(6)]
    prober = asyncio.create_task(probe())
    try:
        await asyncio.sleep(1)
        for name, server in cluster.servers.items():
            phase = f"rolling {name}"
            server.signal(signal.SIGTERM)
            await asyncio.to_thread(server.wait, 12)
            server.stop()
            await asyncio.to_thread(server.start)
            await asyncio.sleep(1)
        phase = "after rolling"
        await asyncio.sleep(6)
        phase = "b killed"
        cluster.servers["b"].signal(signal.SIGKILL)
        await asyncio.to_thread(cluster.servers["b"].wait, 5)
        await asyncio.sleep(3)
        cluster.servers["b"].stop()
        await asyncio.to_thread(cluster.servers["b"].start)
        phase = "after kill"
        await asyncio.sleep(6)
    finally:
        stop.set()
        await asyncio.gather(prober, *holders, return_exceptions=True)
        cluster.stop()

    # A draining instance may still have taken a socket and closed it with 1012 (the client
    # reconnects at once); anything else (502 "no live upstreams", a 503 passed through, a
    # refused connect) is a client locked out while two instances were up.
    failed: list[Any] = [(round(t - results[0][0], 1), p, r) for t, p, r in results if r not in ("hello", "close 1012")]
    assert len(results) > 50
    assert {p for _, p, _ in results} >= {"rolling c", "after rolling", "b killed", "after kill"}
    assert not failed, f"{len(failed)} of {len(results)} new handshakes failed: {failed[:20]}"
    assert not [s for s in cluster.nginx.statuses() if s >= 500], "nginx answered a client with 5xx"
