"""WebSocket handshake: Origin policy and authentication.

* A handshake with an ``Origin`` header must come from an allowed origin (DJANGO_ALLOWED_HOSTS,
  CSRF_TRUSTED_ORIGINS), else it is refused with HTTP 403. Native clients send no Origin.
* Credentials, in this order: ``Authorization: Token <key>``, ``?ticket=<single-use ticket>``,
  the Django session cookie — the last only together with an allowed Origin, so another site
  cannot ride a browser's cookie (cross-site WebSocket hijacking).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.auth import get_user
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.utils.http import is_same_domain

from core.db import db_call

from . import authcache


class OptionalOriginValidator(OriginValidator):
    """Like channels' AllowedHostsOriginValidator, but a missing Origin is let through (and
    marked), because native clients send none; they then need a token or a ticket."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins=[])

    def allowed_patterns(self) -> list[str]:
        patterns = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not patterns:
            patterns = ["localhost", "127.0.0.1", "[::1]"]
        for origin in settings.CSRF_TRUSTED_ORIGINS:
            host = urlparse(origin).hostname
            if host:
                patterns.append(host)
        return patterns

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None or not parsed_origin.hostname:
            return False
        return any(
            pattern == "*" or is_same_domain(parsed_origin.hostname, pattern.lstrip("[").rstrip("]"))
            for pattern in self.allowed_patterns()
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # The scope is marked in place, not copied: each copy stays alive with its socket, and
        # nothing outside this stack reads the scope after handing it in (uvicorn, daphne and
        # the admission gate make one per connection).
        origin = dict(scope.get("headers", [])).get(b"origin")
        if origin is None:
            scope["origin_allowed"] = False
            return await self.application(scope, receive, send)
        scope["origin_allowed"] = True
        return await super().__call__(scope, receive, send)


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _user_for_token(key: str) -> Any:
    from django.contrib.auth import get_user_model

    # One join, and only the fields the socket uses (the user object lives as long as the
    # socket): cheaper to build than select_related, and a smaller object per connection.
    user_model = get_user_model()
    fields = ("pk", user_model.USERNAME_FIELD, "is_active")
    return user_model.objects.filter(auth_token__key=key).only(*fields).first()


def _user_for_ticket(ticket: str) -> Any:
    from django.contrib.auth import get_user_model

    from .services import ws_ticket_consume

    user_id = ws_ticket_consume(ticket=ticket)
    if user_id is None:
        return None
    return get_user_model().objects.filter(pk=user_id).first()


async def authenticate_scope(scope: dict[str, Any]) -> tuple[Any, str]:
    """(user or AnonymousUser, method). An inactive user is returned as is: the consumer closes
    with 4403 for it, which tells a client to stop retrying."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() == "token" and key.strip():
            user = await authcache.user_for_token(key.strip(), db_call(_user_for_token))
            return (user or AnonymousUser()), "token"
        return AnonymousUser(), "token"
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tickets = query.get("ticket")
    if tickets:
        user = await db_call(_user_for_ticket)(tickets[0])
        return (user or AnonymousUser()), "ticket"
    if scope.get("origin_allowed"):
        session = _session(scope)
        if session is not None:
            return await get_user({"session": session}), "session"
    return AnonymousUser(), "none"


def _session(scope: dict[str, Any]) -> Any:
    """The Django session named by the cookie, read here rather than through channels'
    SessionMiddleware, which would wrap every frame this socket sends (it only needs the user)."""
    key = parse_cookie(_header(scope, b"cookie")).get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    return import_module(settings.SESSION_ENGINE).SessionStore(key)


class WebSocketAuthMiddleware:
    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        user, method = await authenticate_scope(scope)
        scope["user"], scope["auth_method"] = user, method  # in place, as OptionalOriginValidator
        return await self.application(scope, receive, send)


def WebSocketAuthStack(application: Any) -> Any:  # noqa: N802 (channels' naming convention)
    return WebSocketAuthMiddleware(application)
