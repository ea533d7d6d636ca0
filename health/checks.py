"""Service checks for /api/health. Each runs with its own timeout, all of them concurrently, so
the endpoint answers within 2 s even when a service accepts connections and never replies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connection

from core import metrics, redis_client
from core.runtime import runtime
from realtime.watchdog import watchdog

logger = logging.getLogger("health")

CHECK_TIMEOUT_SECONDS = 1.5

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


async def check_redis() -> None:
    await redis_client.get_async().ping()


async def check_channel_layer() -> None:
    await runtime.ensure_started()
    await watchdog.probe(timeout=CHECK_TIMEOUT_SECONDS)


async def check_firestore() -> None:
    from presence.firestore import check as firestore_check

    await firestore_check()


async def timed(name: str, check: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_SECONDS)
        status = "ok"
        error = None
    except TimeoutError:
        status, error = "down", "timeout"
    except Exception as exc:
        status, error = "down", exc.__class__.__name__
    result: dict[str, Any] = {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
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

    def add(name: str, check: Callable[[], Awaitable[None]]) -> None:
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
