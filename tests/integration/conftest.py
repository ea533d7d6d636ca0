"""Multi-instance fixtures: real daphne and uvicorn processes, their own redis-server, the test
run's PostgreSQL database, and real ``websockets`` clients."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from rest_framework.authtoken.models import Token
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from harness.processes import AppServer, Nginx, RedisServer
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.integration

FAST_TIMINGS = {
    "INSTANCE_TTL_SECONDS": "3",
    "INSTANCE_HEARTBEAT_SECONDS": "0.5",
    "PRESENCE_GRACE_SECONDS": "2",
}


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Cluster:
    redis: RedisServer
    servers: dict[str, AppServer]
    work_dir: Path
    env: dict[str, str]
    nginx: Nginx | None = None
    extra: list[AppServer] = field(default_factory=list)

    def redis_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis.port, decode_responses=True, socket_timeout=2)

    def stop(self) -> None:
        for server in [*self.servers.values(), *self.extra]:
            server.stop()
        if self.nginx:
            self.nginx.stop()
        self.redis.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{s.logs()[-4000:]}" for name, s in self.servers.items())


def start_cluster(
    tmp_path: Path, *, servers: dict[str, str], nginx: bool = False, nginx_conf: str | None = None, **env: str
) -> Cluster:
    redis_server = RedisServer().start()
    base_env = {
        "CHAT_MODE": "cluster",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_server.port),
        "DATABASE_URL": database_url(),
        "REDIS_KEY_PREFIX": "chat",
        "LOG_LEVEL": "INFO",
        **FAST_TIMINGS,
        **env,
    }
    from harness.processes import app_env

    full_env = app_env(**base_env)
    started: dict[str, AppServer] = {}
    cluster = Cluster(redis_server, started, tmp_path, full_env)
    try:
        for name, kind in servers.items():
            started[name] = AppServer(kind, name, full_env, tmp_path).start()
        if nginx:
            cluster.nginx = Nginx([s.port for s in started.values()], tmp_path, conf=nginx_conf).start()
    except Exception:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def cluster(transactional_db, tmp_path):
    """Instance "a" under daphne and instance "b" under uvicorn."""
    c = start_cluster(tmp_path, servers={"a": "daphne", "b": "uvicorn"})
    yield c
    c.stop()


@pytest.fixture
def people(transactional_db):
    alice, bob, carol, eve = (UserFactory() for _ in range(4))
    conv = ConversationFactory(owner=alice, members=[bob, carol])
    for user in (alice, bob, carol, eve):
        user.token = token(user)
    return {"alice": alice, "bob": bob, "carol": carol, "eve": eve, "conv": conv}


def token(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


class WS:
    """A real WebSocket client that keeps frames it was not waiting for."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.backlog: list[dict[str, Any]] = []
        self.hello: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        return json.loads(raw)

    async def expect(self, pred, timeout: float = 5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        kept: list[dict[str, Any]] = []
        try:
            while True:
                if self.backlog:
                    frame = self.backlog.pop(0)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("expected frame did not come")
                    frame = json.loads(await asyncio.wait_for(self.conn.recv(), remaining))
                if pred(frame):
                    return frame
                kept.append(frame)
        finally:
            self.backlog = kept + self.backlog

    async def expect_type(self, frame_type: str, timeout: float = 5) -> dict[str, Any]:
        return await self.expect(lambda f: f.get("type") == frame_type, timeout)

    async def request(self, frame: dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        await self.send(frame)
        rid = frame["id"]
        return await self.expect(lambda f: f.get("id") == rid and f["type"] in ("ack", "error", "pong"), timeout)

    async def closed_code(self, timeout: float = 15) -> int | None:
        """Wait for the server to close; frames meanwhile are kept. Returns the close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                raw = await asyncio.wait_for(self.conn.recv(), deadline - time.monotonic())
                self.backlog.append(json.loads(raw))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        raise TimeoutError("socket was not closed")

    async def close(self) -> None:
        await self.conn.close()


async def open_ws(url: str, user=None, *, headers: dict[str, str] | None = None, hello: bool = True, **kw) -> WS:
    hdrs = dict(headers or {})
    if user is not None:
        hdrs["Authorization"] = f"Token {user.token}"
    conn = await ws_connect(url, additional_headers=hdrs, open_timeout=10, max_size=2**22, **kw)
    ws = WS(conn)
    if hello:
        ws.hello = await ws.expect_type("hello", 10)
    return ws
