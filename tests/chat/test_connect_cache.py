"""The connect path from Redis: no database query for a returning user, and every change that
matters to a socket (a deleted token, a deactivated user, a participant added or removed) takes
effect on the next connect with the caches warm."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db.backends.utils import CursorWrapper
from rest_framework.authtoken.models import Token

from chat import authcache, services
from chat import topics as topic_cache
from chatproject.asgi import application
from core import guarded_cache, redis_client
from tests.chat.wsutil import Client, token_for
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

_probed: contextvars.ContextVar[bool] = contextvars.ContextVar("probed", default=False)


class QueryCount:
    def __init__(self) -> None:
        self.count = 0
        self.statements: list[str] = []


@pytest.fixture
def queries(monkeypatch) -> Iterator[QueryCount]:
    """Counts the queries of code running in a probed context: the socket's application task
    and the database threads it calls (asgiref carries the context into them), not the
    runtime's loops (started in a fresh context) or the test's own set-up."""
    counter = QueryCount()
    original = CursorWrapper._execute_with_wrappers

    def counting(self, sql, params, many, executor):
        if _probed.get():
            counter.count += 1
            counter.statements.append(sql[:80])
        return original(self, sql, params, many, executor)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counting)
    yield counter


async def probed_application(scope, receive, send):
    _probed.set(True)  # in the application's own task (the communicator starts it in a fresh context)
    await application(scope, receive, send)


async def probed_connect(token: str) -> Client | int:
    """Connect with the token; the Client, or the close code when refused."""
    headers = [(b"authorization", f"Token {token}".encode())]
    communicator = WebsocketCommunicator(probed_application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    client = Client(communicator)
    first = await client.recv(5)
    if first["type"] == "__closed__":
        return int(first["code"])
    assert first["type"] == "hello", first
    client.hello = first
    return client


@pytest.fixture
async def trio():
    alice, bob, eve = await database_sync_to_async(lambda: [UserFactory() for _ in range(3)])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    return alice, bob, eve, conv


def _cached_user(token: str) -> str | None:
    return redis_client.get_sync().get(guarded_cache.keys(authcache._tag(token), authcache.NAME)[0])


def _cached_topics(user_id: int) -> str | None:
    return redis_client.get_sync().get(guarded_cache.keys(topic_cache._user_tag(user_id), topic_cache.TOPICS)[0])


async def _send(user_id: int, conversation_id: object, body: str) -> None:
    await database_sync_to_async(services.message_send)(sender_id=user_id, conversation_id=conversation_id, body=body)


async def test_returning_user_connects_with_no_database_query(trio, queries):
    alice, bob, _eve, conv = trio
    token = await token_for(alice)
    first = await probed_connect(token)
    assert isinstance(first, Client)
    assert queries.count > 0  # cold: the token and the conversations come from the database
    await first.close()

    queries.count, queries.statements = 0, []
    second = await probed_connect(token)
    assert isinstance(second, Client)
    assert queries.count == 0, queries.statements
    assert second.hello["user"] == {"id": alice.pk, "username": alice.username}
    # Subscribed to the user's conversation from the cached list, with the cached seq.
    await _send(bob.pk, conv.pk, "hi")
    frame = await second.expect_type("message.new")
    assert frame["message"]["seq"] == 1 and frame["message"]["body"] == "hi"
    await second.close()


async def test_cached_seq_follows_sends(trio):
    alice, bob, _eve, conv = trio
    client = await probed_connect(await token_for(alice))
    assert isinstance(client, Client)
    for n in range(3):
        await _send(bob.pk, conv.pk, f"m{n}")
    for _ in range(3):
        await client.expect_type("message.new")
    await client.close()
    seq_key = guarded_cache.keys(topic_cache._conversation_tag(conv.pk), topic_cache.SEQ)[0]
    assert redis_client.get_sync().get(seq_key) == "3"


async def test_deleted_token_refused_at_once_with_cache_warm(trio):
    alice, *_ = trio
    token = await token_for(alice)
    warm = await probed_connect(token)
    assert isinstance(warm, Client)
    await warm.close()
    assert _cached_user(token) is not None
    await database_sync_to_async(lambda: Token.objects.filter(user=alice).delete())()
    assert _cached_user(token) is None
    assert await probed_connect(token) == 4401


async def test_deactivated_user_refused_at_once_with_cache_warm(trio):
    alice, *_ = trio
    token = await token_for(alice)
    warm = await probed_connect(token)
    assert isinstance(warm, Client)
    await warm.close()
    assert _cached_user(token) is not None

    def deactivate() -> None:
        alice.is_active = False
        alice.save()

    await database_sync_to_async(deactivate)()
    assert await probed_connect(token) == 4403


async def test_removed_participant_not_subscribed_on_next_connect(trio):
    alice, bob, _eve, conv = trio
    token = await token_for(bob)
    warm = await probed_connect(token)
    assert isinstance(warm, Client)
    await warm.close()
    assert _cached_topics(bob.pk) == str(conv.pk)
    await database_sync_to_async(services.participant_remove)(
        actor_id=alice.pk, conversation_id=conv.pk, user_id=bob.pk
    )
    client = await probed_connect(token)
    assert isinstance(client, Client)
    await _send(alice.pk, conv.pk, "after removal")
    assert await client.nothing(0.5)
    assert _cached_topics(bob.pk) == ""
    await client.close()


async def test_created_conversation_subscribed_on_next_connect(trio):
    alice, _bob, eve, _conv = trio
    token = await token_for(eve)
    warm = await probed_connect(token)
    assert isinstance(warm, Client)
    await warm.close()
    assert _cached_topics(eve.pk) == ""
    # conversation_create adds its members with bulk_create (no signals): the service invalidates.
    conv = await database_sync_to_async(services.conversation_create)(creator_id=alice.pk, participant_ids=[eve.pk])
    client = await probed_connect(token)
    assert isinstance(client, Client)
    await _send(alice.pk, conv.pk, "welcome")
    frame = await client.expect_type("message.new")
    assert frame["message"]["conversation_id"] == str(conv.pk)
    await client.close()


def test_fill_that_read_before_an_invalidation_is_refused(redis_server):
    import asyncio

    async def scenario() -> tuple[bool, str | None]:
        seen = await guarded_cache.read("u:1", "topics")  # a reader misses...
        guarded_cache.invalidate_sync("u:1", "topics")  # ...the fact changes meanwhile...
        stored = await guarded_cache.fill("u:1", "topics", "stale", seen)  # ...its fill is refused
        return stored, (await guarded_cache.read("u:1", "topics")).value

    assert asyncio.run(scenario()) == (False, None)
    redis_client.reset_clients()
