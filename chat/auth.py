"""WebSocket handshake: Origin policy and authentication.

* A handshake with an ``Origin`` header must come from an allowed origin (DJANGO_ALLOWED_HOSTS,
  CSRF_TRUSTED_ORIGINS), else it is refused with HTTP 403. Native clients send no Origin.
* Credentials, in this order: ``Authorization: Token <key>``, ``?ticket=<single-use ticket>``,
  the Django session cookie — the last only together with an allowed Origin, so another site
  cannot ride a browser's cookie (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import functools
from importlib import import_module
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from channels.auth import get_user
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from core.db import db_call
from core.errors import dependency_fault
from core.prepared import Prepared
from realtime.admission import refuse
from realtime.protocol import CloseCode

from . import authcache


class OptionalOriginValidator:
    """The handshake's Host and Origin, checked as Django checks an HTTP request:

    * the Host (or X-Forwarded-Host with ``USE_X_FORWARDED_HOST``) must match ALLOWED_HOSTS,
      else HTTP 403 — as Django's ``get_host()`` refuses it with a 400 over HTTP;
    * an Origin must equal ``scheme://host[:port]`` of the handshake itself (``https`` when the
      socket is ``wss`` or ``SECURE_PROXY_SSL_HEADER`` says so), or one of
      CSRF_TRUSTED_ORIGINS (``https://*.example.com`` matches subdomains of that scheme),
      exactly like ``CsrfViewMiddleware``'s origin check: scheme, host and port all count.

    A missing Origin is let through and marked, because native clients send none; they then
    need a token or a ticket (the session cookie is read only with an allowed Origin)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if await self.check(scope, receive, send):
            return await self.application(scope, receive, send)
        return None

    async def check(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """True when the handshake may go on; else it was refused with HTTP 403."""
        headers = _headers(scope)
        host = self.request_host(scope, headers)
        if host is False:
            await _deny(scope, receive, send)
            return False
        origin = headers.get("origin")
        # The scope is marked in place, not copied: each copy stays alive with its socket, and
        # nothing outside this stack reads the scope after handing it in.
        scope["origin_allowed"] = origin is not None
        if origin is not None and not self.origin_allowed(origin, str(host) or None, self.is_secure(scope, headers)):
            await _deny(scope, receive, send)
            return False
        return True

    @staticmethod
    def request_host(scope: dict[str, Any], headers: dict[str, str]) -> str | bool:
        """The validated host (with port) of the handshake; False when it is not allowed; ""
        when the scope carries none at all (in-process test scopes only: HTTP/1.1 servers
        always pass a Host and the server address)."""
        host = ""
        if settings.USE_X_FORWARDED_HOST and headers.get("x-forwarded-host"):
            host = headers["x-forwarded-host"].split(",")[0].strip()
        elif headers.get("host"):
            host = headers["host"]
        elif scope.get("server"):
            name, port = scope["server"][0], scope["server"][1]
            host = f"{name}:{port}" if port not in (80, 443, None) else str(name)
        if not host:
            return ""
        allowed = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, allowed):
            return False
        return host

    @staticmethod
    def is_secure(scope: dict[str, Any], headers: dict[str, str]) -> bool:
        proxy = settings.SECURE_PROXY_SSL_HEADER
        if proxy:
            name, value = proxy
            header = name.lower().removeprefix("http_").replace("_", "-")
            if header in headers:
                return headers[header].split(",")[0].strip() == value
        return scope.get("scheme") in ("wss", "https")

    @staticmethod
    def origin_allowed(origin: str, host: str | None, secure: bool) -> bool:
        if host is not None and origin == f"{'https' if secure else 'http'}://{host}":
            return True
        trusted = list(settings.CSRF_TRUSTED_ORIGINS)
        if origin in {o for o in trusted if "*" not in o}:
            return True
        try:
            parsed = urlsplit(origin)
        except ValueError:
            return False
        subdomains = [urlsplit(o) for o in trusted if "*" in o]
        return any(
            t.scheme == parsed.scheme and is_same_domain(parsed.netloc, t.netloc.lstrip("*")) for t in subdomains
        )


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        out.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def _deny(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Refuse before accepting: the ASGI server answers the handshake with HTTP 403."""
    await WebsocketDenier()(cast("Any", scope), receive, send)


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


@functools.cache
def _token_user_query() -> Prepared:
    """The token's user, in one join and only the fields a socket uses (the user object lives as
    long as the socket), with the token's creation time; prepared once (core/prepared.py)."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    fields = ("pk", user_model.USERNAME_FIELD, "is_active", "password", "auth_token__created")
    return Prepared(lambda key: user_model.objects.filter(auth_token__key=key).values_list(*fields), key=_KEY_MARKER)


_KEY_MARKER = "token key of a prepared query"


def _user_for_token(key: str) -> Any:
    from django.contrib.auth import get_user_model

    # The password hash is read for the revocation check (chat/revocation.py); an expired
    # token finds nobody (4401).
    from .authentication import token_cutoff

    user_model = get_user_model()
    rows = _token_user_query().rows(using=user_model.objects.db, key=key)
    if not rows:
        return None
    pk, username, active, password, created = rows[0]
    cutoff = token_cutoff()
    if cutoff is not None and created < cutoff:
        return None
    loaded = {user_model._meta.pk.attname: pk, user_model.USERNAME_FIELD: username, "is_active": active}
    user = authcache.partial_user({**loaded, "password": password}, user_model.objects.db)
    # The token's age goes into the auth cache (chat/authcache.py), which expires it the same way.
    user.token_created = created
    return user


def _user_for_ticket(ticket: str) -> Any:
    from django.contrib.auth import get_user_model

    from .services import ws_ticket_consume

    user_id = ws_ticket_consume(ticket=ticket)
    if user_id is None:
        return None
    return get_user_model().objects.filter(pk=user_id).first()


async def authenticate_scope(scope: dict[str, Any]) -> tuple[Any, str, dict[str, str]]:
    """(user or AnonymousUser, method, what the credential was). An inactive user is returned
    as is: the consumer closes with 4403 for it, which tells a client to stop retrying."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() == "token" and key.strip():
            user = await authcache.user_for_token(key.strip(), db_call(_user_for_token))
            return (user or AnonymousUser()), "token", {"auth_token": key.strip()}
        return AnonymousUser(), "token", {}
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tickets = query.get("ticket")
    if tickets:
        user = await db_call(_user_for_ticket)(tickets[0])
        return (user or AnonymousUser()), "ticket", {}
    if scope.get("origin_allowed"):
        session = _session(scope)
        if session is not None:
            return await get_user(cast("Any", {"session": session})), "session", {"auth_session": session.session_key}
    return AnonymousUser(), "none", {}


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
        if await self.check(scope, receive, send):
            return await self.application(scope, receive, send)
        return None

    async def check(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Put the handshake's user into the scope; False when it was refused (503: the
        database or Redis is away)."""
        try:
            user, method, credential = await authenticate_scope(scope)
        except Exception as exc:
            fault = dependency_fault(exc)
            if fault is None:
                raise
            # The database (tokens, sessions) or Redis (tickets) is away: refuse with 503 so
            # that a balancer tries another instance and the client retries, never a 500.
            await refuse(
                scope,
                receive,
                send,
                status=fault.status,
                code=fault.code,
                retry_after=max(1, round(fault.retry_after or 1)),
                detail=fault.detail,
                close_code=CloseCode.FANOUT_LOST,
            )
            return False
        scope.update(user=user, auth_method=method, **credential)  # in place, as the origin check
        return True


def WebSocketAuthStack(application: Any) -> Any:  # noqa: N802 (channels' naming convention)
    return WebSocketAuthMiddleware(application)
