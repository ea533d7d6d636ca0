"""Queries prepared once (core/prepared.py): the same rows as the ORM's, converted alike."""

from __future__ import annotations

import uuid

import pytest

from chat.models import Conversation, Participant
from core.prepared import Prepared
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_a_prepared_query_returns_what_the_queryset_returns_for_each_value():
    alice, bob, carol = UserFactory(), UserFactory(), UserFactory()
    ConversationFactory(owner=alice, members=[bob])
    ConversationFactory(owner=bob, members=[carol])

    def build(user_id):
        return Conversation.objects.filter(participants__user_id=user_id).values_list("id", "last_seq").order_by("id")

    prepared = Prepared(build, user_id=-982_451_653)
    assert prepared.prepared_for("default")
    for user in (alice, bob, carol, UserFactory()):
        rows = prepared.rows(user_id=user.pk)
        assert rows == list(build(user.pk))
        # Converted as the ORM converts them: UUIDs, not the driver's or the database's form.
        assert all(isinstance(cid, uuid.UUID) for cid, _ in rows)


def test_a_query_that_cannot_be_prepared_runs_through_the_orm():
    alice, bob = UserFactory(), UserFactory()
    ConversationFactory(owner=alice, members=[bob])
    # A marker the SQL does not hold (True is a constant of the query, not a parameter).
    unplaced = Prepared(
        lambda user_id, flag: Participant.objects.filter(user_id=user_id).values_list("role"), user_id=-7, flag=True
    )
    assert unplaced.rows(user_id=bob.pk, flag=True) == [
        tuple(r) for r in Participant.objects.filter(user_id=bob.pk).values_list("role")
    ]
    assert not unplaced.prepared_for("default")
    # A marker equal to another parameter of the query cannot be told apart from it.
    twice = Prepared(
        lambda a, b: Participant.objects.filter(user_id=a, conversation__participants__user_id=b).values_list(
            "user_id"
        ),
        a=-7,
        b=-7,
    )
    assert twice.rows(a=bob.pk, b=alice.pk) == [(bob.pk,)]
    assert not twice.prepared_for("default")


def test_the_token_lookup_loads_the_users_fields_in_their_places(settings):
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from chat.auth import _user_for_token

    alice = UserFactory(username="alice-prepared")
    token = Token.objects.create(user=alice)
    user = _user_for_token(token.key)
    assert (user.pk, user.username, user.is_active, user.password) == (
        alice.pk,
        "alice-prepared",
        True,
        alice.password,
    )
    assert user.token_created == token.created
    assert user.get_deferred_fields() >= {"email", "last_login"}
    assert _user_for_token("no such token") is None
    settings.TOKEN_TTL_SECONDS = 60
    Token.objects.filter(pk=token.key).update(created=timezone.now() - timedelta(seconds=61))
    assert _user_for_token(token.key) is None


def test_a_resumes_queries_are_prepared_and_load_what_the_orm_loads(settings):
    from chat import selectors, services
    from chat.models import Message

    settings.RATE_LIMIT_BURST, settings.RATE_LIMIT_PER_SECOND = 100_000, 100_000.0
    alice, bob = UserFactory(), UserFactory()
    conv = ConversationFactory(owner=alice, members=[bob])
    for n in range(4):
        services.message_send(sender_id=alice.pk, conversation_id=conv.id, body=f"m{n}", client_msg_id=f"c{n}")
    rows = selectors.messages_after(conversation_id=str(conv.id), after_seq=1, limit=2)
    want = list(Message.objects.filter(conversation=conv, seq__gt=1).order_by("seq")[:2])
    assert [(m.pk, m.seq, m.body, m.client_msg_id, m.sender_id, m.created_at) for m in rows] == [
        (m.pk, m.seq, m.body, m.client_msg_id, m.sender_id, m.created_at) for m in want
    ]
    assert selectors._messages_after_query(2).prepared_for("default")
    assert selectors._ONE_PARTICIPATION.prepared_for("default")
    [(cid, got, truncated)] = selectors.resume_messages(
        user_id=bob.pk, cursors={str(conv.id): 2}, per_conversation=1, total=10
    )
    assert (cid, [m.seq for m in got], truncated) == (str(conv.id), [3], True)
