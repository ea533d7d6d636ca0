"""Redis clients shared by the whole process.

One synchronous client (thread-safe pool) for code that runs in threads (DRF views, services),
and one asyncio client per event loop for consumers and background tasks, as channels_redis
does: an asyncio connection must never be used from a loop other than its own.
Both find the master through Sentinel when ``REDIS_SENTINELS`` is set.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

# Short timeouts: a hung Redis must surface as an error quickly, never hang a request.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0

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


async def close_async() -> None:
    """Close the running loop's client (a private loop that is about to end)."""
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def reset_clients() -> None:
    """Forget every client (tests point the process at a new Redis)."""
    global _sync_client
    with _sync_lock:
        if _sync_client is not None:
            _sync_client.close()
        _sync_client = None
    _async_clients.clear()
