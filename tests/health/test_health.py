"""/api/health on real daphne and uvicorn instances while their database or Redis is up, refused,
killed or hung (accepts connections and never answers)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.processes import AppServer, RedisServer, SilentListener, app_env, closed_port, start_all, stop_all
from tests.factories import UserFactory
from tests.health.conftest import Reply, get
from tests.integration.conftest import database_url, open_ws, token

# One database mode for the whole module: pytest-django runs tests grouped by mode, which would
# otherwise split the module and start its servers twice.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The contract's bound is 2 s; the margin absorbs a loaded test machine.
BOUND_SECONDS = 3.5
DB_PASSWORD = "pw-Zq81-never-shown"
DB_USER = "chat_operator"
DB_NAME = "chat_production_db"
SERVICES = {"database", "redis", "channel_layer", "firestore"}


def env(**extra: str) -> dict[str, str]:
    return app_env(CHAT_MODE="cluster", REDIS_HOST="127.0.0.1", LOG_LEVEL="WARNING", **extra)


@pytest.fixture(scope="module")
def instances(django_db_setup, tmp_path_factory):
    """Every instance these tests need, started at once. Each has what its test breaks to itself."""
    log_dir: Path = tmp_path_factory.mktemp("health")
    shared_redis = RedisServer().start()
    own_redis = RedisServer().start()
    hung_db, hung_redis = SilentListener(), SilentListener()
    single_env = app_env(
        REDIS_PORT=str(closed_port()), DATABASE_URL=f"sqlite:///{log_dir / 'single.sqlite3'}", LOG_LEVEL="WARNING"
    )
    for name in ("REDIS_HOST", "CHAT_MODE"):
        single_env.pop(name, None)  # the embedded default: no Redis configured, none on the port
    servers = {
        "ok": AppServer("daphne", "h-ok", env(REDIS_PORT=str(shared_redis.port), DATABASE_URL=database_url()), log_dir),
        "redis": AppServer(
            "uvicorn", "h-redis", env(REDIS_PORT=str(own_redis.port), DATABASE_URL=database_url()), log_dir
        ),
        "db_hung": AppServer(
            "daphne",
            "h-db-hung",
            env(
                REDIS_PORT=str(shared_redis.port),
                DATABASE_URL=f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{hung_db.port}/{DB_NAME}",
            ),
            log_dir,
        ),
        "db_refused": AppServer(
            "uvicorn",
            "h-db-refused",
            env(
                REDIS_PORT=str(shared_redis.port),
                DATABASE_URL=f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{closed_port()}/{DB_NAME}",
            ),
            log_dir,
        ),
        "redis_hung": AppServer(
            "daphne", "h-redis-hung", env(REDIS_PORT=str(hung_redis.port), DATABASE_URL=database_url()), log_dir
        ),
        "single": AppServer("uvicorn", "h-single", single_env, log_dir),
    }
    try:
        start_all(list(servers.values()))
        yield {**servers, "own_redis": own_redis, "hung_db": hung_db, "hung_redis": hung_redis}
    finally:
        stop_all(list(servers.values()))
        for thing in (shared_redis, own_redis):
            thing.stop()
        for listener in (hung_db, hung_redis):
            listener.close()


def health(server: AppServer, path: str = "/api/health") -> Reply:
    reply = get(server, path)
    assert reply.elapsed < BOUND_SECONDS, f"{path} took {reply.elapsed:.2f}s"
    assert reply.headers["content-type"].startswith("application/json")
    return reply


def assert_shape(reply: Reply, *, status: str, mode: str, instance_id: str) -> dict:
    body = reply.json()
    assert set(body) == {"status", "instance_id", "mode", "services", "connections"}
    assert (body["status"], body["mode"], body["instance_id"]) == (status, mode, instance_id)
    assert set(body["services"]) == SERVICES
    for name, service in body["services"].items():
        assert service["status"] in {"ok", "down", "disabled"}, name
        if service["status"] == "disabled":
            assert service["latency_ms"] is None, name
        else:
            assert isinstance(service["latency_ms"], int | float) and service["latency_ms"] >= 0, name
        # A failure is named by a bare identifier, never by a message that could carry an address.
        assert re.fullmatch(r"[A-Za-z_]+", service.get("error", "x")), service
    assert isinstance(body["connections"]["local"], int)
    assert set(body["connections"]) == {"local"}
    return body


def statuses(body: dict) -> dict[str, str]:
    return {name: s["status"] for name, s in body["services"].items()}


def assert_nothing_internal(reply: Reply, *extra: str) -> None:
    text = reply.text
    for secret in (DB_PASSWORD, DB_USER, DB_NAME, "127.0.0.1", "localhost", "Traceback", 'File "', *extra):
        assert secret not in text, f"{secret!r} leaked into the public health body"
    hostname = socket.gethostname()
    if len(hostname) > 3:
        assert hostname not in text


def test_healthy_cluster_instance_reports_ok(instances):
    body = assert_shape(health(instances["ok"]), status="ok", mode="cluster", instance_id="h-ok")
    assert statuses(body) == {"database": "ok", "redis": "ok", "channel_layer": "ok", "firestore": "disabled"}
    assert body["connections"]["local"] == 0


@pytest.mark.parametrize("path", ["/api/health", "/api/health/"])
def test_health_answers_with_and_without_slash_without_redirect(instances, path):
    reply = health(instances["ok"], path)
    assert reply.status == 200
    assert_shape(reply, status="ok", mode="cluster", instance_id="h-ok")


def test_live_answers_200_even_when_the_database_hangs(instances):
    for name in ("ok", "db_hung"):
        for path in ("/api/health/live", "/api/health/live/"):
            reply = get(instances[name], path)
            assert reply.status == 200, (name, path, reply.text)
            assert reply.json()["status"] == "ok"
            assert reply.elapsed < 1.0


@pytest.fixture
def member(transactional_db):
    user = UserFactory()
    user.token = token(user)
    return user


async def test_local_connections_are_counted(instances, member):
    user = member
    server = instances["ok"]
    assert (await asyncio.to_thread(health, server)).json()["connections"]["local"] == 0
    ws = await open_ws(server.ws_url, user)
    second = await open_ws(server.ws_url, user)

    async def local_becomes(n: int) -> None:
        # hello leaves before the socket is registered with the instance: allow a moment.
        deadline = time.monotonic() + 5
        while (await asyncio.to_thread(health, server)).json()["connections"]["local"] != n:
            assert time.monotonic() < deadline, f"local connections never became {n}"
            await asyncio.sleep(0.05)

    await local_becomes(2)
    await ws.close()
    await local_becomes(1)
    await second.close()
    await local_becomes(0)


def test_hung_database_answers_503_within_bound_every_time(instances):
    server = instances["db_hung"]
    # Concurrent probes (a load balancer and an operator): none waits on another's hung ping.
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: health(server), range(4)))
    for reply in replies:
        assert reply.status == 503
        body = assert_shape(reply, status="unavailable", mode="cluster", instance_id="h-db-hung")
        assert statuses(body) == {"database": "down", "redis": "ok", "channel_layer": "ok", "firestore": "disabled"}
        assert_nothing_internal(reply, str(instances["hung_db"].port))
    assert instances["hung_db"].accepted, "the instance never reached the hung database"
    # Later probes still answer within the bound: hung pings do not pile up.
    reply = health(server)
    assert reply.status == 503
    scrape = get(server, "/metrics").text
    assert re.search(r'chat_health_check_failures_total\{service="database"\} [1-9]', scrape)


def test_refused_database_answers_503(instances):
    reply = health(instances["db_refused"], "/api/health/")
    assert reply.status == 503
    body = assert_shape(reply, status="unavailable", mode="cluster", instance_id="h-db-refused")
    assert body["services"]["database"]["status"] == "down"
    assert (body["services"]["redis"]["status"], body["services"]["channel_layer"]["status"]) == ("ok", "ok")
    assert_nothing_internal(reply)


def test_hung_redis_answers_503_within_bound(instances):
    reply = health(instances["redis_hung"])
    assert reply.status == 503
    body = assert_shape(reply, status="unavailable", mode="cluster", instance_id="h-redis-hung")
    assert statuses(body) == {"database": "ok", "redis": "down", "channel_layer": "down", "firestore": "disabled"}
    assert_nothing_internal(reply, str(instances["hung_redis"].port))


def wait_for_status(server: AppServer, code: int, timeout: float) -> Reply:
    deadline = time.monotonic() + timeout
    while True:
        reply = health(server)
        if reply.status == code or time.monotonic() > deadline:
            return reply
        time.sleep(0.3)


def test_redis_frozen_recovered_then_killed(instances):
    server, redis_server = instances["redis"], instances["own_redis"]
    reply = health(server)
    assert reply.status == 200, reply.text
    assert statuses(reply.json())["redis"] == "ok"

    redis_server.freeze()
    try:
        reply = health(server)
        assert reply.status == 503
        body = assert_shape(reply, status="unavailable", mode="cluster", instance_id="h-redis")
        assert statuses(body) == {"database": "ok", "redis": "down", "channel_layer": "down", "firestore": "disabled"}
    finally:
        redis_server.thaw()
    reply = wait_for_status(server, 200, 15)
    assert reply.status == 200, reply.text
    assert_shape(reply, status="ok", mode="cluster", instance_id="h-redis")

    redis_server.stop()
    reply = health(server)
    assert reply.status == 503
    body = assert_shape(reply, status="unavailable", mode="cluster", instance_id="h-redis")
    assert statuses(body)["redis"] == "down" and statuses(body)["channel_layer"] == "down"
    assert statuses(body)["database"] == "ok"
    assert_nothing_internal(reply, str(redis_server.port))


def test_single_mode_without_redis_reports_single_and_redis_disabled(instances):
    reply = health(instances["single"])
    assert reply.status == 200, reply.text
    body = assert_shape(reply, status="ok", mode="single", instance_id="h-single")
    assert statuses(body) == {"database": "ok", "redis": "disabled", "channel_layer": "ok", "firestore": "disabled"}
