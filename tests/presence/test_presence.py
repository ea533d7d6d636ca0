"""Presence: multi-device, grace period, versions, privacy, status (in process, real Redis)."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from presence.models import UserStatus
from tests.chat.wsutil import connect
from tests.conftest import assert_error, client_for
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def trio(settings):
    settings.PRESENCE_GRACE_SECONDS = 0.8
    alice, bob, eve = await database_sync_to_async(lambda: [UserFactory() for _ in range(3)])()
    await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    return alice, bob, eve


async def presence_frames(client, seconds: float, user_id: int) -> list[dict]:
    """Every presence frame about ``user_id`` arriving within ``seconds``."""
    frames = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        try:
            frame = await of(client, user_id, timeout=remaining)
        except TimeoutError:
            break
        frames.append(frame)
    return frames


async def of(client, user_id: int, timeout: float = 3) -> dict:
    """The next presence frame about ``user_id``."""
    return await client.expect(lambda f: f["type"] == "presence" and f["user_id"] == user_id, timeout)


async def test_contact_sees_online_then_offline_after_grace_not_before(trio):
    alice, bob, _ = trio
    b = await connect(bob)
    a = await connect(alice)
    online = await of(b, alice.pk)
    assert online["user_id"] == alice.pk
    assert (online["status"], online["online"]) == ("online", True)
    assert set(online) == {"type", "user_id", "status", "text", "online", "last_seen", "version"}
    await a.close()
    assert await presence_frames(b, 0.4, alice.pk) == []  # still within the grace period
    offline = await of(b, alice.pk, timeout=3)
    assert (offline["user_id"], offline["status"], offline["online"]) == (alice.pk, "offline", False)
    assert offline["version"] > online["version"]
    assert offline["last_seen"]
    await b.close()


async def test_closing_one_of_two_devices_keeps_the_user_online(trio):
    alice, bob, _ = trio
    b = await connect(bob)
    a1 = await connect(alice)
    await of(b, alice.pk)
    a2 = await connect(alice)
    await a1.close()
    assert await presence_frames(b, 1.5, alice.pk) == []
    await a2.close()
    assert (await of(b, alice.pk, timeout=3))["online"] is False
    await b.close()


async def test_reconnect_within_grace_broadcasts_nothing(trio):
    alice, bob, _ = trio
    b = await connect(bob)
    a = await connect(alice)
    await of(b, alice.pk)
    await a.close()
    await asyncio.sleep(0.3)
    a = await connect(alice)
    assert await presence_frames(b, 1.5, alice.pk) == []
    await a.close()
    await b.close()


async def test_stranger_gets_no_presence_and_403(trio):
    alice, _bob, eve = trio
    e = await connect(eve)
    a = await connect(alice)
    await a.request({"type": "status.set", "id": "s", "status": "busy", "text": "meeting"})
    assert await presence_frames(e, 1.0, alice.pk) == []

    def get_status():
        return client_for(eve).get(f"/api/users/{alice.pk}/status/")

    assert_error(await database_sync_to_async(get_status)(), 403, "permission_denied")
    await a.close()
    await e.close()


async def test_status_set_broadcasts_with_growing_version_and_invisible_shows_offline(trio):
    alice, bob, _ = trio
    b = await connect(bob)
    a = await connect(alice)
    first = await of(b, alice.pk)
    ack = await a.request({"type": "status.set", "id": "1", "status": "busy", "text": "in a meeting"})
    assert ack["presence"]["status"] == "busy"
    busy = await of(b, alice.pk)
    assert (busy["status"], busy["text"], busy["online"]) == ("busy", "in a meeting", True)
    assert busy["version"] > first["version"]
    await a.request({"type": "status.set", "id": "2", "status": "invisible"})
    hidden = await of(b, alice.pk)
    assert (hidden["status"], hidden["online"], hidden["text"]) == ("offline", False, "")
    assert hidden["version"] > busy["version"]
    own = await a.expect(lambda f: f["type"] == "presence" and f["status"] == "invisible")
    assert own["status"] == "invisible"
    err = await a.request({"type": "status.set", "id": "3", "status": "sleeping"})
    assert (err["status"], err["code"]) == (400, "invalid")
    await a.close()
    await b.close()


async def test_snapshot_over_socket_and_http(trio):
    alice, bob, _eve = trio
    a = await connect(alice)
    b = await connect(bob)
    await a.request({"type": "status.set", "id": "1", "status": "away"})
    ack = await b.request({"type": "presence.sync", "id": "p"})
    assert [(p["user_id"], p["status"], p["online"]) for p in ack["results"]] == [(alice.pk, "away", True)]

    def http():
        return client_for(bob).get("/api/presence/").json()

    body = await database_sync_to_async(http)()
    assert body["results"] == ack["results"]
    await a.close()
    await b.close()


def test_status_endpoints(db, user, other_user, staff_user):
    ConversationFactory(owner=user, members=[other_user])
    stranger = UserFactory()
    r = client_for(user).put("/api/me/status/", {"status": "away", "text": "lunch"}, format="json")
    assert r.status_code == 200
    assert r.json()["status"] == "offline"  # no live connection: shown offline even to itself
    assert UserStatus.objects.get(user=user).status == "away"
    assert client_for(other_user).get(f"/api/users/{user.pk}/status/").status_code == 200
    assert client_for(staff_user).get(f"/api/users/{user.pk}/status/").status_code == 200
    assert_error(client_for(stranger).get(f"/api/users/{user.pk}/status/"), 403, "permission_denied")
    # An id that does not exist is refused like a stranger's: existence is not revealed.
    assert_error(client_for(user).get("/api/users/999999/status/"), 403, "permission_denied")
    assert_error(client_for(staff_user).get("/api/users/999999/status/"), 404, "not_found")
    assert_error(client_for(user).put("/api/me/status/", {"status": "nap"}, format="json"), 400, "invalid")
    assert_error(client_for(user).put("/api/me/status/", {"text": "x"}, format="json"), 400, "invalid")


async def test_contact_in_several_shared_conversations_gets_each_change_once(trio):
    """The public event goes to each shared conversation's group; the hub delivers it once."""
    alice, bob, _ = trio
    for _ in range(2):
        await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    b1 = await connect(bob)
    b2 = await connect(bob)
    a = await connect(alice)
    # Each change is seen once, however many conversations the contact shares. (The coming
    # online is awaited first: two changes written at once may be published in either order,
    # and a router delivers only what is newer than what it delivered, so the older one can be
    # superseded; clients keep the highest version.)
    came_online = []
    for client in (b1, b2, a):
        frames = await presence_frames(client, 1.0, alice.pk)
        assert [(f["status"], f["online"]) for f in frames] == [("online", True)]
        came_online.append(frames[0]["version"])
    await a.request({"type": "status.set", "id": "1", "status": "busy"})
    for client, before in zip((b1, b2, a), came_online, strict=True):
        frames = await presence_frames(client, 1.0, alice.pk)
        assert [(f["status"], f["online"]) for f in frames] == [("busy", True)]
        assert frames[0]["version"] > before
    for client in (a, b1, b2):
        await client.close()


async def test_user_without_conversations_still_sees_their_own_status(trio):
    _, _, eve = trio
    e = await connect(eve)
    await e.request({"type": "status.set", "id": "1", "status": "away", "text": "lunch"})
    frames = await presence_frames(e, 1.0, eve.pk)
    assert [(f["status"], f["text"]) for f in frames][-1] == ("away", "lunch")
    await e.close()


async def test_nothing_is_queued_for_firestore_when_it_is_off(trio, settings):
    settings.FIRESTORE_PROJECT_ID = ""
    alice, bob, _ = trio
    b = await connect(bob)
    a = await connect(alice)
    await of(b, alice.pk)
    await a.request({"type": "status.set", "id": "1", "status": "busy"})
    await of(b, alice.pk)
    from presence.models import StatusOutbox

    assert await database_sync_to_async(StatusOutbox.objects.count)() == 0
    for client in (a, b):
        await client.close()


async def test_a_user_taken_offline_while_its_instance_was_reaped_is_online_again_when_written_back(trio):
    """An instance stalled past its TTL (a Redis failover) is reaped by the others while its
    sockets stay open; the grace ends and its users go offline. Its next heartbeat writes the
    sockets back, and the users must be online again, in the database and for their contacts."""
    from core import redis_client
    from realtime.registry import get_registry, instance_conns_key, instance_key

    alice, bob, _ = trio
    b = await connect(bob)
    a = await connect(alice)
    assert (await of(b, alice.pk))["online"] is True
    registry = get_registry()
    # What a reaper does to the connections (the instance's entry stays, so this instance's own
    # heartbeat loop does not write them back yet).
    for conn in list(registry.local.values()):
        await registry._remove_in_user_slot(conn.connection_id, conn.user_id)
    await redis_client.get_async().delete(instance_conns_key(registry.instance_id))
    offline = await of(b, alice.pk, timeout=5)
    assert offline["online"] is False
    # The rest of the reaping; the next heartbeat finds its entry gone and writes back.
    await redis_client.get_async().delete(instance_key(registry.instance_id))
    assert await registry.heartbeat() is True
    back = await of(b, alice.pk, timeout=5)
    assert back["online"] is True and back["version"] > offline["version"]
    row = await database_sync_to_async(UserStatus.objects.get)(user_id=alice.pk)
    assert row.online
    await a.close()
    await b.close()


def test_a_batch_of_users_coming_online_matches_one_at_a_time(transactional_db, settings):
    """went_online_many against went_online, user by user: visible, invisible, already online
    and never seen before, in one batch."""
    from presence import services

    settings.FIRESTORE_PROJECT_ID = ""
    pairs = {kind: (UserFactory(), UserFactory()) for kind in ("visible", "invisible", "online", "new")}
    for kind, users in pairs.items():
        if kind == "new":
            continue
        for user in users:
            UserStatus.objects.update_or_create(
                user_id=user.pk,
                defaults={
                    "status": "invisible" if kind == "invisible" else "away",
                    "online": kind == "online",
                    "version": 4,
                    "public_version": 2,
                },
            )
    batch = {users[0].pk: [] for users in pairs.values()}
    assert services.went_online_many(users=batch) == 3  # all but the one already online
    for users in pairs.values():
        services.went_online(user_id=users[1].pk, conversation_ids=[])
    fields = ("status", "online", "version", "public_version")
    for kind, (batched, single) in pairs.items():
        got, want = UserStatus.objects.get(pk=batched.pk), UserStatus.objects.get(pk=single.pk)
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields], kind
        assert (got.public_last_seen is None) == (want.public_last_seen is None), kind
        assert got.online
