"""Two real instances with their connect caches warm: a deleted token, a deactivated user and a
removed participant take effect at once on both. The writes are made by this process (as an
operator's shell or the admin of a third instance would), through the ORM and its signals."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from rest_framework.authtoken.models import Token
from websockets.exceptions import ConnectionClosed

from chat import authcache, services
from chat import topics as topic_cache
from core import guarded_cache, redis_client
from tests.integration.conftest import open_ws

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shared_redis(cluster, settings):
    """This process on the instances' Redis, so its signals invalidate what they cached."""
    settings.REDIS = {**settings.REDIS, **cluster.redis_settings()}
    redis_client.reset_clients()
    yield cluster.redis_client()
    redis_client.reset_clients()


async def _refused_with(url: str, user) -> int | None:
    ws = await open_ws(url, user, hello=False)
    try:
        frame = await ws.recv(5)
        raise AssertionError(f"expected a close, got {frame}")
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def _warm(cluster, user) -> None:
    for server in cluster.servers.values():
        ws = await open_ws(server.ws_url, user)
        await ws.close()


def _auth_cached(redis, token: str) -> bool:
    return redis.get(guarded_cache.keys(authcache._tag(token), authcache.NAME)[0]) is not None


@pytest.mark.redis_topologies
async def test_deleted_token_refused_on_every_instance_with_cache_warm(cluster, people, shared_redis):
    alice = people["alice"]
    await _warm(cluster, alice)
    assert _auth_cached(shared_redis, alice.token)
    await database_sync_to_async(lambda: Token.objects.filter(key=alice.token).delete())()
    for server in cluster.servers.values():
        assert await _refused_with(server.ws_url, alice) == 4401


async def test_deactivated_user_refused_on_every_instance_with_cache_warm(cluster, people, shared_redis):
    bob = people["bob"]
    await _warm(cluster, bob)
    assert _auth_cached(shared_redis, bob.token)

    def deactivate() -> None:
        bob.is_active = False
        bob.save()

    await database_sync_to_async(deactivate)()
    for server in cluster.servers.values():
        assert await _refused_with(server.ws_url, bob) == 4403


@pytest.mark.redis_topologies
async def test_removed_participant_not_routed_on_any_instance_with_cache_warm(cluster, people, shared_redis):
    alice, carol, cid = people["alice"], people["carol"], str(people["conv"].id)
    await _warm(cluster, carol)
    topics_key = guarded_cache.keys(topic_cache._user_tag(carol.pk), topic_cache.TOPICS)[0]
    assert shared_redis.get(topics_key) == cid
    await database_sync_to_async(services.participant_remove)(actor_id=alice.pk, conversation_id=cid, user_id=carol.pk)
    a, b = cluster.servers["a"], cluster.servers["b"]
    carol_a, carol_b = await open_ws(a.ws_url, carol), await open_ws(b.ws_url, carol)
    sender = await open_ws(a.ws_url, alice)
    ack = await sender.request({"type": "message.send", "id": "1", "conversation_id": cid, "body": "after"})
    assert ack["type"] == "ack"
    await sender.expect_type("message.new")  # delivered on the sender's own instance...
    for ws in (carol_a, carol_b):  # ...and to neither of the removed participant's new sockets
        with pytest.raises(TimeoutError):
            await ws.expect(lambda f: f.get("type") == "message.new", timeout=1)
    denied = await carol_b.request({"type": "resume", "id": "r", "cursors": {cid: 0}})
    assert denied["type"] == "error" and denied["code"] == "not_participant"
    await asyncio.gather(*(ws.close() for ws in (carol_a, carol_b, sender)))
