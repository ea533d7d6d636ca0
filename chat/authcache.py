"""Token → user for the WebSocket handshake, from Redis instead of the database.

A reconnect storm authenticates thousands of sockets a second; each would otherwise cost a
database query. The cached entry of a token (under a hash of it, never the token itself) holds
what a socket needs of its user: id, username, whether it is active. It is exact, not merely
fresh (core/guarded_cache.py): ``invalidate_token`` and ``invalidate_user`` run from signals on
token deletion and on every save of a user (deactivation, password or username change), and
from that moment every instance reads the database again. Single mode (no Redis) reads the
database every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from redis.exceptions import RedisError

from core import guarded_cache, redis_client
from realtime.admission import connect_slots

logger = logging.getLogger("chat.authcache")

NAME = "auth"


def _tag(token_key: str) -> str:
    return "t:" + hashlib.sha256(token_key.encode()).hexdigest()[:32]


def partial_user(loaded: dict[str, Any], db: str | None = None) -> Any:
    """A user with only the ``loaded`` fields (by attname), the others deferred: the object lives
    as long as the socket, and a fully built one carries every field."""
    user_model = get_user_model()
    # from_db takes the values in the model's field order.
    names = [f.attname for f in user_model._meta.concrete_fields if f.attname in loaded]
    return user_model.from_db(db, names, [loaded[name] for name in names])


def _user_from(entry: dict[str, Any]) -> Any:
    """The user as the database lookup loads it (id, username and is_active)."""
    user_model = get_user_model()
    loaded = {user_model._meta.pk.attname: entry["id"], user_model.USERNAME_FIELD: entry["name"]}
    user = partial_user({**loaded, "is_active": entry["active"]})
    # What the revocation check compares (a keyed digest, never the password hash itself).
    setattr(user, "password_mark", entry["mark"])  # noqa: B010 (not a field of the model)
    return user


def _entry(user: Any) -> str:
    from .revocation import password_mark

    created = getattr(user, "token_created", None)
    return json.dumps(
        {
            "id": user.pk,
            "name": user.get_username(),
            "active": bool(user.is_active),
            "mark": password_mark(getattr(user, "password", "") or ""),
            "created": created.timestamp() if created is not None else None,
        }
    )


def _expired(entry: dict[str, Any]) -> bool:
    from .authentication import token_cutoff

    cutoff = token_cutoff()
    return cutoff is not None and (entry.get("created") is None or entry["created"] < cutoff.timestamp())


async def user_for_token(token_key: str, load: Callable[[str], Awaitable[Any]]) -> Any:
    """The user of ``token_key`` (None when no such token), from the cache or ``load``. Runs in
    one of the instance's connect slots (realtime.admission): a storm of handshakes would
    otherwise ask Redis all at once, beyond its connection pool."""
    async with connect_slots.slot():
        return await _user_for_token(token_key, load)


async def _user_for_token(token_key: str, load: Callable[[str], Awaitable[Any]]) -> Any:
    if not redis_client.cluster_mode():
        return await load(token_key)
    tag = _tag(token_key)
    try:
        seen = await guarded_cache.read(tag, NAME)
    except RedisError as exc:
        logger.debug("auth cache read failed", extra={"error": exc.__class__.__name__})
        return await load(token_key)
    if seen.value is not None:
        entry = json.loads(seen.value)
        if "mark" in entry:  # an entry of this shape (older ones are read again)
            return None if _expired(entry) else _user_from(entry)
    user = await load(token_key)
    if user is not None:  # unknown tokens are not cached: nothing to invalidate when one appears
        try:
            await guarded_cache.fill(tag, NAME, _entry(user), seen)
        except RedisError as exc:
            logger.debug("auth cache fill failed", extra={"error": exc.__class__.__name__})
    return user


def invalidate_token(token_key: str) -> None:
    """Forget the cached user of one token, on every instance. Raises on a Redis fault."""
    if redis_client.cluster_mode():
        guarded_cache.invalidate_sync(_tag(token_key), NAME)


def invalidate_user(user_id: int) -> None:
    """Forget the cached entries of every token of the user, on every instance."""
    if not redis_client.cluster_mode():
        return
    from rest_framework.authtoken.models import Token

    token_keys = list(Token.objects.filter(user_id=user_id).values_list("key", flat=True))
    guarded_cache.invalidate_many_sync([(_tag(k), NAME) for k in token_keys])


def _now_and_after_commit(func: Callable[[], None]) -> None:
    """Now (a Redis fault fails the write that caused it, rather than leave a stale entry) and
    again after commit (a fill that read the old row between the two is refused)."""
    func()

    def again() -> None:
        try:
            func()
        except RedisError as exc:
            logger.warning("auth cache invalidation failed", extra={"error": exc.__class__.__name__})

    transaction.on_commit(again)


def on_token_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    # Read now: a deletion sets the instance's primary key (the token key) to None afterwards,
    # before the after-commit call runs.
    key = instance.key
    _now_and_after_commit(lambda: invalidate_token(key))


def on_user_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return  # a new user has no token yet; a login changes nothing a socket holds
    user_id = instance.pk
    _now_and_after_commit(lambda: invalidate_user(user_id))


def connect_signals() -> None:
    from django.db.models.signals import post_delete, post_save
    from rest_framework.authtoken.models import Token

    post_delete.connect(on_token_deleted, sender=Token, dispatch_uid="chat-authcache-token")
    post_save.connect(on_user_saved, sender=get_user_model(), dispatch_uid="chat-authcache-user")
