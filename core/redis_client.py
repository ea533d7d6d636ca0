"""Redis clients shared by the whole process.

One synchronous client (thread-safe pool) for code that runs in threads (DRF views, services),
and one asyncio client per event loop for consumers and background tasks, as channels_redis
does: an asyncio connection must never be used from a loop other than its own.
Both find the master through Sentinel when ``REDIS_SENTINELS`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

logger = logging.getLogger("chat.redis")
T = TypeVar("T")

# Short timeouts: a hung Redis must surface as an error quickly, never hang a request.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0

# How long a call that can wait out a failover (a send's rate limit, a ticket) keeps retrying:
# Sentinel's down-after plus its election, or a managed Redis's endpoint switch.
FAILOVER_WAIT_SECONDS = 2.0
# Errors worth retrying on a fresh connection: the server went away or hung, or it was demoted
# to a replica (READONLY; a fresh connection finds the new master through Sentinel, or through
# the endpoint's DNS on a managed service).
RETRYABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)

_sync_client: redis.Redis | None = None
_sync_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def cluster_mode() -> bool:
    return bool(settings.CHAT_MODE == "cluster")


def key(*parts: object) -> str:
    """A key under the configured prefix: ``key("conn", id)`` -> ``chat:conn:<id>``."""
    return ":".join([settings.REDIS_KEY_PREFIX, *(str(p) for p in parts)])


def _common_kwargs() -> dict[str, Any]:
    cfg: dict[str, Any] = settings.REDIS
    return {
        "password": cfg["password"],
        "db": cfg["db"],
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 10,
        "decode_responses": True,
        # redis-py's default retries ten times, each up to SOCKET_TIMEOUT: about 25 s against a
        # frozen master. One quick retry on a fresh connection (a pooled connection the server
        # closed); longer waits are the caller's choice (with_failover_retry).
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        "retry_on_error": list(RETRYABLE),
    }


def get_sync() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        with _sync_lock:
            if _sync_client is None:
                cfg: dict[str, Any] = settings.REDIS
                if cfg["sentinels"]:
                    from redis.sentinel import Sentinel

                    sentinel = Sentinel(cfg["sentinels"], socket_timeout=SOCKET_TIMEOUT)
                    _sync_client = sentinel.master_for(cfg["sentinel_master"], **_common_kwargs())
                else:
                    _sync_client = redis.Redis(host=cfg["host"], port=cfg["port"], ssl=cfg["ssl"], **_common_kwargs())
    return _sync_client


def get_async() -> aioredis.Redis:
    """The asyncio client of the running event loop."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        cfg: dict[str, Any] = settings.REDIS
        if cfg["sentinels"]:
            from redis.asyncio.sentinel import Sentinel as AioSentinel

            sentinel = AioSentinel(cfg["sentinels"], socket_timeout=SOCKET_TIMEOUT)
            client = sentinel.master_for(cfg["sentinel_master"], **_common_kwargs())
        else:
            client = aioredis.Redis(host=cfg["host"], port=cfg["port"], ssl=cfg["ssl"], **_common_kwargs())
        _async_clients[loop] = client
    return client


def reset_clients() -> None:
    """Forget every client (tests point the process at a new Redis)."""
    global _sync_client
    with _sync_lock:
        if _sync_client is not None:
            _sync_client.close()
        _sync_client = None
    _async_clients.clear()


def _log_retry(exc: Exception, attempt: int) -> None:
    logger.info("redis call failed; retrying", extra={"error": exc.__class__.__name__, "attempt": attempt})


def with_failover_retry(call: Callable[[redis.Redis], T], *, wait: float = FAILOVER_WAIT_SECONDS) -> T:
    """``call(client)``, retried on a Redis fault for up to ``wait`` seconds (a failover about to
    end succeeds instead of failing); the last error is raised after that."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        client = get_sync()
        try:
            return call(client)
        except RETRYABLE as exc:
            attempt += 1
            if time.monotonic() >= deadline:
                raise
            _log_retry(exc, attempt)
            if isinstance(exc, ReadOnlyError):
                # A master demoted in place: pooled connections would go on hitting the replica.
                client.connection_pool.disconnect()
            time.sleep(min(0.1 * attempt, 0.5, max(0.0, deadline - time.monotonic())))


async def with_failover_retry_async(
    call: Callable[[aioredis.Redis], Awaitable[T]], *, wait: float = FAILOVER_WAIT_SECONDS
) -> T:
    """The asyncio form of :func:`with_failover_retry`."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        client = get_async()
        try:
            return await call(client)
        except RETRYABLE as exc:
            attempt += 1
            if time.monotonic() >= deadline:
                raise
            _log_retry(exc, attempt)
            if isinstance(exc, ReadOnlyError):
                await client.connection_pool.disconnect()
            await asyncio.sleep(min(0.1 * attempt, 0.5, max(0.0, deadline - time.monotonic())))
