"""Multi-instance fixtures: real daphne and uvicorn processes, their own redis-server (or the
session's Redis Cluster), the test run's PostgreSQL database, and real ``websockets`` clients.

A test marked ``redis_topologies`` runs once per Redis topology: ``single`` (a redis-server of
its own, as every other integration test) and ``cluster`` (the instances on the session's 6-node
Redis Cluster with ``REDIS_CLUSTER=true``, emptied and healed before the test). The mark goes on
the tests whose behaviour goes through Redis and differs by topology: cross-instance delivery of
an HTTP send, resume on the other instance, the registry (operator views and disconnects, a
killed instance reaped, deregistration on SIGTERM), presence finished by another instance, the
socket cap and the connect caches' invalidation. Faults of one topology's own processes stay in
that topology's tests (the cluster's: test_redis_cluster_e2e.py, with health). The cluster runs
add about 90 s; ``-m "not rediscluster"`` leaves them out."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from django.conf import settings
from rest_framework.authtoken.models import Token
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from harness.processes import AppServer, Nginx, RedisServer, stop_all
from harness.redis_cluster import RedisCluster
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.integration

TOPOLOGIES = ("single", "cluster")

FAST_TIMINGS = {
    "INSTANCE_TTL_SECONDS": "3",
    "INSTANCE_HEARTBEAT_SECONDS": "0.5",
    "PRESENCE_GRACE_SECONDS": "2",
}


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("redis_topologies") is None:
        return
    if "redis_topology" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: marked redis_topologies without a Redis fixture")
    params = [
        pytest.param("single", id="single"),
        pytest.param("cluster", id="cluster", marks=pytest.mark.rediscluster),
    ]
    metafunc.parametrize("redis_topology", params, indirect=True)


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> str:
    """``single`` unless the test is marked ``redis_topologies`` (then each in turn)."""
    topology = str(getattr(request, "param", "single"))
    assert topology in TOPOLOGIES
    return topology


@pytest.fixture
def topology_cluster(request: pytest.FixtureRequest, redis_topology: str) -> RedisCluster | None:
    """The session's Redis Cluster, healed and emptied, when the test runs on the cluster."""
    if redis_topology != "cluster":
        return None
    return request.getfixturevalue("redis_cluster")


@dataclass
class Cluster:
    redis: RedisServer | None  # this test's own redis-server; None on the session's Redis Cluster
    servers: dict[str, AppServer]
    work_dir: Path
    env: dict[str, str]
    nginx: Nginx | None = None
    extra: list[AppServer] = field(default_factory=list)
    redis_cluster: RedisCluster | None = None
    _cluster_client: redis.cluster.RedisCluster | None = field(default=None, init=False, repr=False)

    def redis_client(self) -> redis.Redis | redis.cluster.RedisCluster:
        """A client of the instances' Redis (the cluster protocol on a cluster)."""
        if self.redis_cluster is not None:
            if self._cluster_client is None:
                host, port = self.redis_cluster.startup
                self._cluster_client = redis.cluster.RedisCluster(
                    host=host, port=port, decode_responses=True, socket_timeout=2
                )
            return self._cluster_client
        assert self.redis is not None
        return redis.Redis(host="127.0.0.1", port=self.redis.port, decode_responses=True, socket_timeout=2)

    def redis_settings(self) -> dict[str, Any]:
        """What ``settings.REDIS`` takes to put this process on the instances' Redis."""
        if self.redis_cluster is not None:
            host, port = self.redis_cluster.startup
            return {"host": host, "port": port, "cluster": True, "db": 0}
        assert self.redis is not None
        return {"host": "127.0.0.1", "port": self.redis.port, "cluster": False}

    def stop(self) -> None:
        # Each instance drains for DRAIN_NOTICE_SECONDS before it exits: all at once, not in turn.
        stop_all([*self.servers.values(), *self.extra])
        if self.nginx:
            self.nginx.stop()
        if self._cluster_client is not None:
            self._cluster_client.close()
        if self.redis is not None:
            self.redis.stop()  # the session's cluster outlives the test

    def dump_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{s.logs()[-4000:]}" for name, s in self.servers.items())


def start_cluster(
    tmp_path: Path,
    *,
    servers: dict[str, str],
    nginx: bool = False,
    nginx_conf: str | None = None,
    redis_cluster: RedisCluster | None = None,
    **env: str,
) -> Cluster:
    """Instances on a redis-server of their own, or on ``redis_cluster`` when one is given."""
    redis_server: RedisServer | None = None
    if redis_cluster is not None:
        host, port = redis_cluster.startup
        redis_env = {"REDIS_CLUSTER": "true", "REDIS_HOST": host, "REDIS_PORT": str(port)}
    else:
        redis_server = RedisServer().start()
        redis_env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port)}
    base_env = {
        "CHAT_MODE": "cluster",
        **redis_env,
        "DATABASE_URL": database_url(),
        "REDIS_KEY_PREFIX": "chat",
        "LOG_LEVEL": "INFO",
        **FAST_TIMINGS,
        **env,
    }
    from harness.processes import app_env

    full_env = app_env(**base_env)
    started: dict[str, AppServer] = {}
    cluster = Cluster(redis_server, started, tmp_path, full_env, redis_cluster=redis_cluster)
    try:
        # Started in turn: at once, two Django imports on this suite's two shared cores measured
        # no faster.
        for name, kind in servers.items():
            started[name] = AppServer(kind, name, full_env, tmp_path).start()
        if nginx:
            cluster.nginx = Nginx([s.port for s in started.values()], tmp_path, conf=nginx_conf).start()
        if redis_cluster is not None:
            for server in started.values():
                _wait_on_redis_cluster(server)
    except Exception:
        cluster.stop()
        raise
    return cluster


def _wait_on_redis_cluster(server: AppServer, timeout: float = 10) -> None:
    """The instance speaks the cluster protocol: its health reports the cluster's state (a run
    that fell back to one Redis would prove nothing about the cluster)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/api/health", timeout=3) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        except OSError:
            body = {}
        redis_health = body.get("services", {}).get("redis", {})
        if redis_health.get("cluster_state") == "ok" and len(redis_health.get("masters", [])) == 3:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"instance {server.instance_id} not on the Redis Cluster: {body}")
        time.sleep(0.2)


@pytest.fixture
def cluster(transactional_db, tmp_path, topology_cluster):
    """Instance "a" under daphne and instance "b" under uvicorn."""
    c = start_cluster(tmp_path, servers={"a": "daphne", "b": "uvicorn"}, redis_cluster=topology_cluster)
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
