"""What the operator commands share: they read the Redis registry, so they need cluster mode,
and a Redis failure is one line naming the cause, not a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.management.base import CommandError
from redis.exceptions import RedisError

from core.redis_client import UNAVAILABLE_ERRORS

_REDIS_FAULTS: tuple[type[BaseException], ...] = (RedisError, OSError, *UNAVAILABLE_ERRORS)

T = TypeVar("T")


def require_cluster() -> None:
    if settings.CHAT_MODE != "cluster":
        raise CommandError(
            "single mode: connections live in the server process, not in Redis; "
            "use the admin's Live connections page or GET /api/admin/connections/."
        )


def from_registry(read: Callable[[], T]) -> T:
    try:
        return read()
    except _REDIS_FAULTS as exc:
        raise CommandError(f"Redis unreachable ({exc.__class__.__name__}); check REDIS_HOST / REDIS_PORT.") from None
