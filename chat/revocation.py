"""Revocation reaches live sockets: whatever ends a credential closes the sockets it opened,
on every instance, within about ``CREDENTIAL_CHECK_SECONDS``.

A socket remembers what it was opened with (a :class:`Credential`). Signals (a deactivating
save, a deleted user, a password change) close the sockets at once through the ``disconnect``
control event, on every instance. What fires no signal (``User.objects.filter(...).update(...)``,
a token or session deleted in SQL, another program) raises a counter in the database through
triggers (``CredentialChanges``, chat/migrations/0002). Every instance reads that counter each
``CREDENTIAL_CHECK_SECONDS`` and re-checks all its sockets' credentials, in a few batched
queries, only when it moved; a new socket's credential is checked in the round after it
connected (the token cache may have let it in just before a change), and every socket's once
per ``CREDENTIAL_SWEEP_SECONDS`` (an expired token or session, a database without the
triggers). The steady state costs one tiny query a round, not one lookup per live socket.

Close codes: 4403 for a deactivated user (the client stops retrying), 4401 for a credential
that no longer holds (user deleted, password changed, token deleted or expired, session
ended), so the client signs in again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils.crypto import salted_hmac

from core import pg
from core.db import db_call
from realtime.protocol import CloseCode
from realtime.router import router
from realtime.session import Session

logger = logging.getLogger("chat.revocation")

CLOSE_NOT_AUTHENTICATED = int(CloseCode.NOT_AUTHENTICATED)
CLOSE_DEACTIVATED = int(CloseCode.DEACTIVATED)
BATCH = 500


@dataclass(frozen=True, slots=True)
class Credential:
    user_id: int
    method: str  # "token", "ticket" or "session"
    password_mark: str  # changes whenever the user's password changes
    token_key: str | None = None
    session_key: str | None = None


# connection id -> (session, credential) of this instance's sockets; entries of sockets the
# router no longer holds are dropped by each round.
_tracked: dict[str, tuple[Session, Credential]] = {}


def password_mark(password: str) -> str:
    """A keyed digest of the stored password hash (never the hash itself in memory)."""
    return salted_hmac("chat.revocation.password", password or "", algorithm="sha256").hexdigest()


def credential_for(scope: Mapping[str, Any], user: Any) -> Credential:
    return Credential(
        user_id=int(user.pk),
        method=str(scope.get("auth_method") or "none"),
        # A user from the auth cache carries the mark; one read from the database, the hash.
        password_mark=getattr(user, "password_mark", None) or password_mark(getattr(user, "password", "") or ""),
        token_key=scope.get("auth_token"),
        session_key=scope.get("auth_session"),
    )


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def verdicts(credentials: list[Credential]) -> dict[Credential, int]:
    """The close code for each credential that no longer holds (in the database now)."""
    from rest_framework.authtoken.models import Token

    from .authentication import token_cutoff

    user_model = get_user_model()
    user_ids = sorted({c.user_id for c in credentials})
    users: dict[int, tuple[bool, str]] = {}
    for chunk in _chunks(user_ids):
        for pk, active, password in user_model.objects.filter(pk__in=chunk).values_list("pk", "is_active", "password"):
            users[pk] = (bool(active), password_mark(password))

    keys = sorted({c.token_key for c in credentials if c.token_key})
    live_tokens: set[tuple[str, int]] = set()
    cutoff = token_cutoff()
    for chunk in _chunks(keys):
        qs = Token.objects.filter(key__in=chunk)
        if cutoff is not None:
            qs = qs.filter(created__gte=cutoff)
        live_tokens.update(qs.values_list("key", "user_id"))

    live_sessions = _live_sessions(sorted({c.session_key for c in credentials if c.session_key}))

    out: dict[Credential, int] = {}
    for cred in credentials:
        state = users.get(cred.user_id)
        if state is None:
            out[cred] = CLOSE_NOT_AUTHENTICATED
        elif not state[0]:
            out[cred] = CLOSE_DEACTIVATED
        elif (
            state[1] != cred.password_mark
            or (cred.token_key and (cred.token_key, cred.user_id) not in live_tokens)
            or (cred.session_key and cred.session_key not in live_sessions)
        ):
            out[cred] = CLOSE_NOT_AUTHENTICATED
    return out


def _live_sessions(keys: list[str]) -> set[str]:
    """Session keys that still exist (a logout or a flush ends them). With the database
    engine, one query per batch; with another engine, its own ``exists``."""
    if not keys:
        return set()
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.db":
        from django.contrib.sessions.models import Session
        from django.utils import timezone

        live: set[str] = set()
        for chunk in _chunks(keys):
            live.update(
                Session.objects.filter(session_key__in=chunk, expire_date__gt=timezone.now()).values_list(
                    "session_key", flat=True
                )
            )
        return live
    store = import_module(settings.SESSION_ENGINE).SessionStore
    return {key for key in keys if store().exists(key)}


def track(session: Session, credential: Credential) -> None:
    """Follow this socket's credential until the socket leaves the router."""
    _tracked[session.connection_id] = (session, credential)
    _fresh.add(session.connection_id)


# Databases whose migration installed the triggers behind CredentialChanges.
TRIGGER_VENDORS = {"postgresql", "sqlite"}


def generation() -> int | None:
    """The credential-change counter (None on a database without the triggers)."""
    from django.db import connection

    from .models import CredentialChanges

    if connection.vendor not in TRIGGER_VENDORS:
        return None
    return CredentialChanges.objects.filter(pk=1).values_list("generation", flat=True).first() or 0


async def check_local(only: set[str] | None = None) -> int:
    """Close this instance's sockets (those of ``only`` connection ids, if given) whose
    credential no longer holds; returns how many."""
    live = {s.connection_id for sessions in router.by_user.values() for s in sessions}
    for connection_id in [c for c in _tracked if c not in live]:
        _tracked.pop(connection_id, None)
    by_credential: dict[Credential, list[Session]] = defaultdict(list)
    entries = _tracked.values() if only is None else [_tracked[c] for c in only if c in _tracked]
    for session, cred in list(entries):
        if session.closing is None:
            by_credential[cred].append(session)
    if not by_credential:
        return 0
    revoked = await _verdicts(list(by_credential))
    closed = 0
    for cred, code in revoked.items():
        for session in by_credential[cred]:
            session.close(code)
            closed += 1
    if closed:
        logger.info("closed sockets of revoked credentials", extra={"count": closed})
    return closed


_verdicts = db_call(verdicts)
_generation_orm = db_call(generation)


def _generation_sql() -> str:
    from .models import CredentialChanges

    return f"SELECT generation FROM {CredentialChanges._meta.db_table} WHERE id = 1"  # noqa: S608


async def _generation() -> int | None:
    """:func:`generation`, read on the loop's own connections when it can (core/pg.py): the
    round's one query, every second on every instance, without a hop to a worker thread."""
    statements = pg.available()
    if statements is None:
        return await _generation_orm()
    row = await statements.fetchone(_generation_sql(), {})
    return int(row[0]) if row else 0


# Connection ids tracked since the last round: their credentials are checked in the next one.
_fresh: set[str] = set()


@dataclass
class Rounds:
    """What one instance's check loop has seen: the counter, and when all sockets were checked."""

    seen: int | None = None
    swept_at: float = -1e18
    started: bool = False


async def check_round(state: Rounds) -> int:
    """One round: every socket when the counter moved (or the sweep is due), else the sockets
    that connected since the last round. Returns how many sockets were closed."""
    global _fresh
    fresh, _fresh = _fresh, set()
    try:
        current = await _generation()  # read before the check: a change during it is seen next round
        now = time.monotonic()
        full = (
            current is None
            or not state.started
            or current != state.seen
            or now - state.swept_at >= settings.CREDENTIAL_SWEEP_SECONDS
        )
        closed = await check_local(None if full else fresh)
    except BaseException:
        _fresh |= fresh  # checked in the next round instead
        raise
    if full:
        state.seen, state.swept_at, state.started = current, now, True
    return closed


async def run_credential_check_loop() -> None:
    """Background loop of every instance: re-check the credentials of its live sockets."""
    state = Rounds()
    while True:
        await asyncio.sleep(settings.CREDENTIAL_CHECK_SECONDS)
        try:
            await check_round(state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.warning("credential check failed", extra={"error": exc.__class__.__name__})
