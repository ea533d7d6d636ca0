"""A frozen Redis and a stopped PostgreSQL under a real uvicorn instance: every answer is 503
``unavailable`` with ``retry_after`` (HTTP, WebSocket frames and handshakes), never a 500, and
the instance recovers by itself once the dependency is back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.processes import ROOT, AppServer, PostgresServer, RedisServer, app_env
from tests.integration.conftest import FAST_TIMINGS, open_ws, start_cluster
from tests.integration.test_cluster import ahttp, send_frame

pytestmark = [pytest.mark.integration]

# Migrated and seeded in one process: one Django start-up instead of two.
_SEED = """
import json
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from chat.models import Conversation, Participant
User = get_user_model()
alice = User.objects.create_user("alice", password="pw")
bob = User.objects.create_user("bob", password="pw")
conv = Conversation.objects.create(title="faults", owner=alice)
Participant.objects.create(conversation=conv, user=alice, role=Participant.Role.OWNER)
Participant.objects.create(conversation=conv, user=bob)
print(json.dumps({"alice": Token.objects.create(user=alice).key, "bob": Token.objects.create(user=bob).key,
                  "conv": str(conv.id)}))
"""


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL cluster of this module's own, migrated and seeded: it is stopped and started
    by the test, which must never happen to the shared server."""
    pg = PostgresServer().start()
    try:
        env = app_env(DATABASE_URL=pg.url(), CHAT_MODE="single", LOG_LEVEL="WARNING")
        seeded = json.loads(_manage(env, "shell", "-c", _SEED).strip().splitlines()[-1])
        yield pg, seeded
    finally:
        pg.destroy()


def _is_unavailable(frame: dict[str, Any]) -> bool:
    return (
        frame.get("type") == "error"
        and frame.get("status") == 503
        and frame.get("code") == "unavailable"
        and isinstance(frame.get("retry_after"), (int, float))
        and frame["retry_after"] > 0
    )


def _assert_http_unavailable(status: int, body: Any) -> None:
    assert status == 503, (status, body)
    assert body["code"] == "unavailable" and body["retry_after"] > 0, body


async def _send_until_acked(ws_factory, cid: str, client_msg_id: str, timeout: float) -> tuple[dict, list[dict]]:
    """Send (re-sending the same client_msg_id) until acknowledged; returns the ack and every
    error answered meanwhile."""
    deadline = time.monotonic() + timeout
    errors: list[dict] = []
    ws = None
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        try:
            if ws is None:
                ws = await ws_factory()
            reply = await ws.request(send_frame(cid, "after the fault", f"retry-{attempt}", client_msg_id), 15)
        except (ConnectionClosed, InvalidStatus, OSError, TimeoutError) as exc:
            errors.append({"exception": repr(exc)})
            ws = None
            await asyncio.sleep(0.5)
            continue
        if reply["type"] == "ack":
            await ws.close()
            return reply, errors
        errors.append(reply)
        await asyncio.sleep(0.5)
    raise AssertionError(f"no ack within {timeout}s: {errors[-5:]}")


async def test_stopped_postgres_answers_503_everywhere_and_recovers_without_restart(own_postgres, tmp_path: Path):
    pg, seeded = own_postgres
    redis_server = RedisServer().start()
    env = app_env(
        CHAT_MODE="cluster",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_server.port),
        DATABASE_URL=pg.url() + "?connect_timeout=2",
        LOG_LEVEL="INFO",
        **FAST_TIMINGS,
    )
    server = AppServer("uvicorn", "pg-fault", env, tmp_path).start()
    cid, alice = seeded["conv"], seeded["alice"]
    headers = {"Authorization": f"Token {alice}"}
    try:
        ws = await open_ws(server.ws_url, headers=headers)
        assert (await ws.request(send_frame(cid, "before", "0", "before-0")))["type"] == "ack"

        pg.stop("fast")
        # A frame on an open socket: 503, and the socket stays open.
        reply = await ws.request(send_frame(cid, "during", "1", "during-1"), 15)
        assert _is_unavailable(reply), reply
        assert (await ws.request({"type": "ping", "id": "p"}))["type"] == "pong"
        # HTTP: a write and a read.
        url = f"{server.url}/api/conversations/{cid}/messages/"
        _assert_http_unavailable(*await ahttp("POST", url, alice, {"body": "during", "client_msg_id": "during-2"}))
        _assert_http_unavailable(*await ahttp("GET", f"{server.url}/api/conversations/", alice))
        # A new handshake is served from the token and topic caches, or, when it needs the
        # database, refused with HTTP 503 and Retry-After (a balancer moves on): never a 500.
        try:
            late = await open_ws(server.ws_url, headers=headers)
        except InvalidStatus as refused:
            assert refused.response.status_code == 503  # noqa: PT017
            assert refused.response.headers.get("Retry-After")  # noqa: PT017
        else:
            assert late.hello["type"] == "hello"
            await late.close()

        pg.start()
        ack, errors = await _send_until_acked(lambda: open_ws(server.ws_url, headers=headers), cid, "during-1", 30)
        assert ack["message"]["client_msg_id"] == "during-1" and ack["message"]["body"] == "after the fault"
        assert all(_is_unavailable(e) or "exception" in e for e in errors), errors
        assert server.proc is not None and server.proc.poll() is None, "the instance must not have restarted"
        status, body = await ahttp("GET", url, alice)
        assert status == 200 and [m["seq"] for m in body["results"]] == [1, 2]
    finally:
        server.stop()
        redis_server.stop()
        if not (pg.data / "postmaster.pid").exists():
            pg.start()
    assert "frame handler failed" not in server.logs()


@pytest.mark.django_db(transaction=True)
async def test_frozen_redis_answers_503_and_sends_recover_after_thaw(tmp_path: Path, people):
    cluster = start_cluster(tmp_path, servers={"a": "uvicorn"})
    server = cluster.servers["a"]
    cid, alice = str(people["conv"].id), people["alice"]
    try:
        ws = await open_ws(server.ws_url, alice)
        assert (await ws.request(send_frame(cid, "before", "0", "before-0")))["type"] == "ack"

        cluster.redis.freeze()
        # The send waits out what could be a failover, then answers 503 (the socket itself is
        # closed with 1011 by the watchdog a few seconds later: its fan-out path is gone).
        reply = await ws.request(send_frame(cid, "during", "1", "during-1"), 15)
        assert _is_unavailable(reply), reply
        url = f"{server.url}/api/conversations/{cid}/messages/"
        _assert_http_unavailable(*await ahttp("POST", url, alice.token, {"body": "x", "client_msg_id": "d2"}, 15))
        _assert_http_unavailable(*await ahttp("POST", f"{server.url}/api/auth/ws-ticket/", alice.token, timeout=15))

        cluster.redis.thaw()
        ack, errors = await _send_until_acked(lambda: open_ws(server.ws_url, alice), cid, "during-1", 30)
        assert ack["message"]["client_msg_id"] == "during-1"
        assert all(_is_unavailable(e) or "exception" in e for e in errors), errors
        assert server.proc is not None and server.proc.poll() is None
    finally:
        cluster.redis.thaw() if cluster.redis.proc else None
        cluster.stop()
    assert "frame handler failed" not in server.logs()
