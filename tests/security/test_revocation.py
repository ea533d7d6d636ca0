"""Revocation reaches live sockets on every instance: two real servers (daphne and uvicorn),
real clients, and changes made straight in the shared database (no signal reaches the servers
from this process, so what closes the sockets is the servers' own re-check)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.models import Session
from rest_framework.authtoken.models import Token

from tests.factories import ConversationFactory, UserFactory
from tests.integration.conftest import open_ws, token
from tests.security.live import cluster_of, session_cookie

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Bounds, not speed targets: the servers re-check every CREDENTIAL_CHECK_SECONDS (1 s).
CLOSE_WITHIN = 4.0

User = get_user_model()


@pytest.fixture
def pair(tmp_path):
    c = cluster_of(tmp_path)
    yield c
    c.stop()


@pytest.fixture
def alice(transactional_db):
    user = UserFactory()
    peer = UserFactory()
    user.conv = ConversationFactory(owner=user, members=[peer])
    user.token = token(user)
    return user


async def token_sockets(cluster, user):
    headers = {"Authorization": f"Token {user.token}"}
    return [await open_ws(s.ws_url, headers=headers) for s in cluster.servers.values()]


async def session_sockets(cluster, cookie, settings):
    out = []
    for server in cluster.servers.values():
        headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}
        out.append(await open_ws(server.ws_url, headers=headers, origin=server.url))
    return out


async def assert_all_closed(sockets, code: int) -> None:
    for ws in sockets:
        assert await ws.closed_code(CLOSE_WITHIN) == code


async def test_bulk_deactivation_closes_sockets_everywhere_with_4403(pair, alice):
    sockets = await token_sockets(pair, alice)
    await database_sync_to_async(lambda: User.objects.filter(pk=alice.pk).update(is_active=False))()
    await assert_all_closed(sockets, 4403)


async def test_deleting_the_user_closes_sockets_everywhere_with_4401(pair, alice):
    sockets = await token_sockets(pair, alice)
    await database_sync_to_async(lambda: User.objects.filter(pk=alice.pk).delete())()
    await assert_all_closed(sockets, 4401)


async def test_deleting_the_token_closes_its_sockets_but_not_the_session_ones(pair, alice, settings):
    by_token = await token_sockets(pair, alice)
    cookie = await database_sync_to_async(session_cookie)(alice, settings)
    by_session = await session_sockets(pair, cookie, settings)
    await database_sync_to_async(lambda: Token.objects.filter(key=alice.token).delete())()
    await assert_all_closed(by_token, 4401)
    for ws in by_session:
        pong = await ws.request({"type": "ping", "id": "p"})
        assert pong["type"] == "pong"
        await ws.close()


def _set_password(user) -> None:
    user.set_password("another-password-entirely")
    user.save()


def _bulk_password(user) -> None:
    User.objects.filter(pk=user.pk).update(password=make_password("another-password-entirely"))


def _end_sessions(user) -> None:
    Session.objects.all().delete()  # a logout, or an operator clearing sessions


@pytest.mark.parametrize("revoke", [_set_password, _bulk_password, _end_sessions])
async def test_password_change_or_ended_session_closes_session_sockets_with_4401(pair, alice, settings, revoke):
    cookie = await database_sync_to_async(session_cookie)(alice, settings)
    sockets = await session_sockets(pair, cookie, settings)
    await database_sync_to_async(revoke)(alice)
    await assert_all_closed(sockets, 4401)


@pytest.fixture
def slow_check(tmp_path):
    """Servers whose periodic re-check is far away: what refuses the action is the action."""
    c = cluster_of(tmp_path, CREDENTIAL_CHECK_SECONDS="120")
    yield c
    c.stop()


def action_frames(cid: str) -> list[dict]:
    return [
        {"type": "message.send", "conversation_id": cid, "body": "after deactivation"},
        {"type": "typing", "conversation_id": cid, "state": "start"},
        {"type": "read", "conversation_id": cid, "seq": 0},
        {"type": "resume", "cursors": {cid: 0}},
        {"type": "status.set", "status": "busy", "text": "after deactivation"},
        {"type": "presence.sync"},
    ]


async def test_every_action_rechecks_that_the_user_is_active(slow_check, alice):
    """A bulk update fires no signal and the periodic re-check is minutes away: the action itself
    finds the account deactivated, refuses it (403 account_inactive) and closes its socket (4403)."""
    cid = str(alice.conv.id)
    frames = action_frames(cid)
    # One socket per action and instance, all opened while the account is active.
    sockets = [(frame, ws) for frame in frames for ws in await token_sockets(slow_check, alice)]
    await database_sync_to_async(lambda: User.objects.filter(pk=alice.pk).update(is_active=False))()
    for n, (frame, ws) in enumerate(sockets):
        reply = await ws.request({**frame, "id": f"{n}-{frame['type']}"})
        assert reply["type"] == "error", reply
        assert reply["status"] == 403 and reply["code"] == "account_inactive", reply
        assert await ws.closed_code(CLOSE_WITHIN) == 4403
    from chat.models import Message
    from presence.models import UserStatus

    assert not await database_sync_to_async(lambda: Message.objects.filter(conversation_id=cid).exists())()
    statuses = await database_sync_to_async(lambda: list(UserStatus.objects.filter(user_id=alice.pk)))()
    assert all(row.status != "busy" for row in statuses)
