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
    for user in (alice, bob, carol, UserFactory()):
        rows = prepared.rows(user_id=user.pk)
        assert rows == list(build(user.pk))
        # Converted as the ORM converts them: UUIDs, not the driver's or the database's form.
        assert all(isinstance(cid, uuid.UUID) for cid, _ in rows)


def test_a_prepared_query_refuses_markers_it_cannot_place():
    # A marker the SQL does not hold (True is a constant of the query, not a parameter).
    with pytest.raises(ValueError, match="exactly once"):
        Prepared(lambda user_id, flag: Participant.objects.filter(user_id=user_id), user_id=-7, flag=True).rows()
    # A marker equal to another parameter of the query cannot be told apart from it.
    with pytest.raises(ValueError, match="not exactly one marker"):
        Prepared(
            lambda a, b: Participant.objects.filter(user_id=a, conversation__participants__user_id=b), a=-7, b=-7
        ).rows()


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
