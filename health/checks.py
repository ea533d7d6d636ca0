"""Service checks for /api/health. Each runs with its own timeout, all of them concurrently, so
the endpoint answers within 2 s even when a service accepts connections and never replies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio.cluster as aiocluster
from django.conf import settings
from django.db import connection
from redis import exceptions as redis_exceptions

from core import metrics, redis_client
from core.runtime import runtime
from realtime.watchdog import watchdog

logger = logging.getLogger("health")

CHECK_TIMEOUT_SECONDS = 1.5
MASTER_TIMEOUT_SECONDS = 0.8

# The database ping blocks a thread. Its own two threads, so a hung database ties up at most
# these (until the driver's connect_timeout) instead of the loop's default executor, which also
# resolves host names for Redis connections; a ping queued behind them is cancelled by the
# timeout before it starts.
_db_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-db")


def _db_ping() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # This runs in a throw-away thread: never leave its connection behind.
        connection.close()


async def check_database() -> None:
    await asyncio.get_running_loop().run_in_executor(_db_executor, _db_ping)


class CheckFailed(Exception):
    """A check that reached its service and found it unfit; ``details`` go into the result."""

    def __init__(self, error: str, details: dict[str, Any]) -> None:
        super().__init__(error)
        self.error = error
        self.details = details


async def check_redis() -> dict[str, Any] | None:
    client = redis_client.get_async()
    if isinstance(client, aiocluster.RedisCluster):
        return await _check_redis_cluster(client)
    await client.ping()
    await _refuse_a_cluster_node(client)
    return None


async def _refuse_a_cluster_node(client: redis_client.AsyncClient) -> None:
    """A node of a Redis Cluster spoken to as one Redis (REDIS_CLUSTER off) answers PING, and
    even the channel layer's probe, but every key of another node's slots fails with MOVED: no
    socket could get its hello. That is ``down``, never ``ok``. CLUSTER INFO fails on a Redis
    without cluster support (and for a user not allowed it), which is the one-Redis case."""
    try:
        info = await client.execute_command("CLUSTER INFO")
    except redis_exceptions.ResponseError:
        return
    if isinstance(info, dict) and "cluster_state" in info:
        raise CheckFailed(
            "cluster_node_without_redis_cluster",
            {"detail": "this Redis is a node of a Redis Cluster: set REDIS_CLUSTER=true"},
        )


async def _master_status(client: aiocluster.RedisCluster, node: aiocluster.ClusterNode) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        # Shorter than the whole check: a hung master shows as down next to the others' state.
        async with asyncio.timeout(MASTER_TIMEOUT_SECONDS):
            info = await client.execute_command("CLUSTER INFO", target_nodes=node)
        result: dict[str, Any] = {"status": "ok", "cluster_state": str(info.get("cluster_state", "unknown"))}
    except TimeoutError:
        result = {"status": "down", "error": "timeout"}
    except Exception as exc:  # noqa: BLE001
        result = {"status": "down", "error": exc.__class__.__name__}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


_background: set[asyncio.Task[None]] = set()


async def _refresh_slot_map(client: aiocluster.RedisCluster) -> None:
    try:
        async with asyncio.timeout(5):
            await client.nodes_manager.initialize()
    except Exception as exc:  # noqa: BLE001
        logger.warning("redis cluster slot map refresh failed", extra={"error": exc.__class__.__name__})


async def _check_redis_cluster(client: aiocluster.RedisCluster) -> dict[str, Any]:
    """Every master answers and reports ``cluster_state:ok``. A cluster that lost slots says
    ``fail`` (commands on those slots fail), which is ``down``, never ``ok``."""
    if not client.nodes_manager.slots_cache:
        await client.initialize()
    masters = client.get_primaries()
    statuses = await asyncio.gather(*(_master_status(client, node) for node in masters))
    by_name = {node.name: status for node, status in zip(masters, statuses, strict=True)}
    states = {s.get("cluster_state") for s in statuses if s["status"] == "ok"}
    details: dict[str, Any] = {"cluster_state": "ok" if states == {"ok"} else "fail", "masters": by_name}
    if any(s["status"] != "ok" for s in statuses):
        # A master gone (a failover under way, or done while this client still had the old
        # map): read the slot map again, in the background so this answer is not delayed, and
        # the next check sees the promoted replica.
        task = asyncio.get_running_loop().create_task(_refresh_slot_map(client))
        _background.add(task)
        task.add_done_callback(_background.discard)
        raise CheckFailed("master_unreachable", details)
    if details["cluster_state"] != "ok":
        raise CheckFailed("cluster_state_fail", details)
    return details


async def check_channel_layer() -> None:
    await runtime.ensure_started()
    await watchdog.probe(timeout=CHECK_TIMEOUT_SECONDS)


async def check_firestore() -> None:
    from presence.firestore import check as firestore_check

    await firestore_check()


async def timed(name: str, check: Callable[[], Awaitable[dict[str, Any] | None]]) -> dict[str, Any]:
    started = time.perf_counter()
    details: dict[str, Any] | None = None
    try:
        details = await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_SECONDS)
        status = "ok"
        error = None
    except TimeoutError:
        status, error = "down", "timeout"
    except CheckFailed as exc:
        status, error, details = "down", exc.error, exc.details
    except Exception as exc:  # noqa: BLE001
        status, error = "down", exc.__class__.__name__
    result: dict[str, Any] = {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    if details:
        result.update(details)
    if error:
        # The exception class only: messages may carry hostnames or credentials.
        result["error"] = error
        metrics.HEALTH_CHECK_FAILURES.labels(service=name).inc()
        logger.warning("health check failed", extra={"service": name, "error": error})
    return result


def disabled() -> dict[str, Any]:
    return {"status": "disabled", "latency_ms": None}


async def run_all() -> dict[str, dict[str, Any]]:
    cluster = settings.CHAT_MODE == "cluster"
    names: list[str] = []
    tasks: list[Awaitable[dict[str, Any]]] = []

    def add(name: str, check: Callable[[], Awaitable[dict[str, Any] | None]]) -> None:
        names.append(name)
        tasks.append(timed(name, check))

    add("database", check_database)
    if cluster:
        add("redis", check_redis)
    add("channel_layer", check_channel_layer)
    if settings.FIRESTORE_PROJECT_ID:
        add("firestore", check_firestore)
    results = dict(zip(names, await asyncio.gather(*tasks), strict=True))
    results.setdefault("redis", disabled())
    results.setdefault("firestore", disabled())
    return {k: results[k] for k in ("database", "redis", "channel_layer", "firestore")}
