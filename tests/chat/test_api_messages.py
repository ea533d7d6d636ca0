"""The HTTP API of contract section 3, the messages of a conversation: listing and sending;
success, then 400/401/403/404/429."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings as django_settings

from chat import services
from chat.models import Message
from tests.chat.apiutil import MESSAGE_KEYS, UNKNOWN_ID, conv_url, frames, post_raw
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db


# --- GET /api/conversations/{id}/messages/ ----------------------------------------------------


def seqs(response: Any) -> list[int]:
    assert response.status_code == 200, response.json()
    return [m["seq"] for m in response.json()["results"]]


def test_message_list_in_seq_order(api, conversation, five, user, other_user):
    r = api.get(conv_url(conversation, "messages/"))
    assert seqs(r) == [1, 2, 3, 4, 5]
    body = r.json()
    assert body["has_more"] is False
    first = body["results"][0]
    assert set(first) == MESSAGE_KEYS
    assert first["id"] == str(five[0].id)
    assert first["conversation_id"] == str(conversation.id)
    assert first["sender_id"] == user.pk
    assert first["body"] == "m1"
    assert first["client_msg_id"] is None


def test_message_list_of_empty_conversation(api, conversation):
    r = api.get(conv_url(conversation, "messages/"))
    assert r.json() == {"results": [], "has_more": False}


def test_message_list_pages_backward_from_newest(api, conversation, five):
    url = conv_url(conversation, "messages/")
    r = api.get(url, {"limit": 2})
    assert seqs(r) == [4, 5]
    assert r.json()["has_more"] is True
    r = api.get(url, {"limit": 2, "before_seq": 4})
    assert seqs(r) == [2, 3]
    assert r.json()["has_more"] is True
    r = api.get(url, {"limit": 2, "before_seq": 2})
    assert seqs(r) == [1]
    assert r.json()["has_more"] is False


def test_message_list_pages_forward_after_a_cursor(api, conversation, five):
    url = conv_url(conversation, "messages/")
    r = api.get(url, {"after_seq": 0, "limit": 2})
    assert seqs(r) == [1, 2]
    assert r.json()["has_more"] is True
    r = api.get(url, {"after_seq": 2, "limit": 2})
    assert seqs(r) == [3, 4]
    assert r.json()["has_more"] is True
    r = api.get(url, {"after_seq": 4, "limit": 2})
    assert seqs(r) == [5]
    assert r.json()["has_more"] is False
    r = api.get(url, {"after_seq": 5})
    assert seqs(r) == []
    assert r.json()["has_more"] is False


def test_message_list_between_two_cursors(api, conversation, five):
    r = api.get(conv_url(conversation, "messages/"), {"after_seq": 1, "before_seq": 5, "limit": 2})
    assert seqs(r) == [2, 3]
    assert r.json()["has_more"] is True


def test_message_list_limit_bounds(api, conversation, five):
    url = conv_url(conversation, "messages/")
    assert seqs(api.get(url, {"limit": 200})) == [1, 2, 3, 4, 5]
    assert seqs(api.get(url, {"limit": 1})) == [5]
    for bad in (201, 0, -1, "abc", "1.5"):
        body = assert_error(api.get(url, {"limit": bad}), 400, "invalid")
        assert "limit" in body["errors"]


@pytest.mark.parametrize("name", ["after_seq", "before_seq"])
@pytest.mark.parametrize("value", ["-1", "x", "1e3"])
def test_message_list_with_bad_cursor_is_400(api, conversation, name, value):
    body = assert_error(api.get(conv_url(conversation, "messages/"), {name: value}), 400, "invalid")
    assert name in body["errors"]


def test_message_list_of_someone_elses_conversation_is_403(stranger_api, conversation, five):
    assert_error(stranger_api.get(conv_url(conversation, "messages/")), 403, "not_participant")


@pytest.mark.parametrize("cid", [UNKNOWN_ID, "garbage"])
def test_message_list_of_unknown_conversation_is_404(api, cid):
    assert_error(api.get(conv_url(cid, "messages/")), 404, "not_found")


def test_message_list_needs_authentication(anon, conversation):
    assert_error(anon.get(conv_url(conversation, "messages/")), 401, "not_authenticated")


# --- POST /api/conversations/{id}/messages/ ---------------------------------------------------


def test_send_message_stores_and_broadcasts_it(api, conversation, user, published, django_capture_on_commit_callbacks):
    url = conv_url(conversation, "messages/")
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(url, {"body": "hello"}, format="json")
    assert r.status_code == 201, r.json()
    message = r.json()
    assert set(message) == MESSAGE_KEYS
    assert message["seq"] == 1
    assert message["sender_id"] == user.pk
    assert message["body"] == "hello"
    assert message["conversation_id"] == str(conversation.id)
    stored = Message.objects.get(pk=message["id"])
    assert (stored.seq, stored.body) == (1, "hello")
    conversation.refresh_from_db()
    assert conversation.last_seq == 1
    assert conversation.last_message_at is not None
    new = frames(published, "message.new")
    assert [(g, m["frame"]["message"]) for g, m in new] == [(f"c.{conversation.id}", message)]

    assert api.post(url, {"body": "again"}, format="json").json()["seq"] == 2


def test_send_keeps_the_body_verbatim(api, conversation):
    body = "  two spaces, a tab\t and a newline\n "
    r = api.post(conv_url(conversation, "messages/"), {"body": body}, format="json")
    assert r.json()["body"] == body


def test_repeated_client_msg_id_returns_the_original(api, conversation, published, django_capture_on_commit_callbacks):
    url = conv_url(conversation, "messages/")
    with django_capture_on_commit_callbacks(execute=True):
        first = api.post(url, {"body": "once", "client_msg_id": "c-1"}, format="json")
        again = api.post(url, {"body": "once, edited", "client_msg_id": "c-1"}, format="json")
    assert first.status_code == 201, first.json()
    assert again.status_code == 200, again.json()
    assert again.json() == first.json()
    assert first.json()["client_msg_id"] == "c-1"
    assert Message.objects.filter(conversation=conversation).count() == 1
    assert len(frames(published, "message.new")) == 1
    conversation.refresh_from_db()
    assert conversation.last_seq == 1


def test_client_msg_id_is_scoped_to_the_sender(api, member_api, conversation):
    url = conv_url(conversation, "messages/")
    mine = api.post(url, {"body": "a", "client_msg_id": "same"}, format="json")
    theirs = member_api.post(url, {"body": "b", "client_msg_id": "same"}, format="json")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert [mine.json()["seq"], theirs.json()["seq"]] == [1, 2]


def test_repeated_client_msg_id_after_leaving_is_403(member_api, conversation, other_user):
    url = conv_url(conversation, "messages/")
    assert member_api.post(url, {"body": "a", "client_msg_id": "k"}, format="json").status_code == 201
    services.participant_remove(actor_id=other_user.pk, conversation_id=conversation.id, user_id=other_user.pk)
    assert_error(member_api.post(url, {"body": "a", "client_msg_id": "k"}, format="json"), 403, "not_participant")


def test_body_of_exactly_the_maximum_is_accepted(api, conversation):
    body = "x" * django_settings.MESSAGE_MAX_CHARS
    r = api.post(conv_url(conversation, "messages/"), {"body": body}, format="json")
    assert r.status_code == 201
    assert len(r.json()["body"]) == django_settings.MESSAGE_MAX_CHARS


def test_body_over_the_maximum_is_400(api, conversation):
    body = "x" * (django_settings.MESSAGE_MAX_CHARS + 1)
    r = api.post(conv_url(conversation, "messages/"), {"body": body}, format="json")
    assert "body" in assert_error(r, 400, "invalid")["errors"]
    assert not Message.objects.exists()


def test_body_limit_follows_the_setting(api, conversation, settings):
    settings.MESSAGE_MAX_CHARS = 5
    url = conv_url(conversation, "messages/")
    assert api.post(url, {"body": "12345"}, format="json").status_code == 201
    assert_error(api.post(url, {"body": "123456"}, format="json"), 400, "invalid")


@pytest.mark.parametrize("body", ["", "   ", "\n\t "])
def test_blank_body_is_400(api, conversation, body):
    r = api.post(conv_url(conversation, "messages/"), {"body": body}, format="json")
    assert "body" in assert_error(r, 400, "invalid")["errors"]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"body": None},
        {"body": 123},
        {"body": ["hi"]},
        {"body": {"text": "hi"}},
        {"body": True},
    ],
)
def test_body_missing_or_of_wrong_type_is_400(api, conversation, payload):
    r = api.post(conv_url(conversation, "messages/"), payload, format="json")
    assert "body" in assert_error(r, 400, "invalid")["errors"]
    assert not Message.objects.exists()


@pytest.mark.parametrize("client_msg_id", ["", "x" * 65, 7, ["a"]])
def test_bad_client_msg_id_is_400(api, conversation, client_msg_id):
    r = api.post(conv_url(conversation, "messages/"), {"body": "hi", "client_msg_id": client_msg_id}, format="json")
    assert "client_msg_id" in assert_error(r, 400, "invalid")["errors"]
    assert not Message.objects.exists()


def test_client_msg_id_of_64_characters_is_accepted(api, conversation):
    r = api.post(conv_url(conversation, "messages/"), {"body": "hi", "client_msg_id": "k" * 64}, format="json")
    assert r.status_code == 201
    assert r.json()["client_msg_id"] == "k" * 64


def test_send_with_malformed_json_is_400_bad_request(api, conversation):
    body = assert_error(post_raw(api, conv_url(conversation, "messages/"), '{"body": "hi"'), 400, "bad_request")
    assert body["errors"] == {}


@pytest.mark.parametrize("raw", ['"hello"', "[]", "42", "null"])
def test_send_with_non_object_json_is_400(api, conversation, raw):
    assert_error(post_raw(api, conv_url(conversation, "messages/"), raw), 400, "invalid")
    assert not Message.objects.exists()


def test_send_to_someone_elses_conversation_is_403(stranger_api, conversation):
    r = stranger_api.post(conv_url(conversation, "messages/"), {"body": "hi"}, format="json")
    assert_error(r, 403, "not_participant")
    assert not Message.objects.exists()


@pytest.mark.parametrize("cid", [UNKNOWN_ID, "garbage"])
def test_send_to_unknown_conversation_is_404(api, cid):
    assert_error(api.post(conv_url(cid, "messages/"), {"body": "hi"}, format="json"), 404, "not_found")


def test_send_needs_authentication(anon, conversation):
    assert_error(
        anon.post(conv_url(conversation, "messages/"), {"body": "hi"}, format="json"), 401, "not_authenticated"
    )


def test_send_rate_limit_is_429_with_retry_after(api, member_api, conversation, settings):
    settings.RATE_LIMIT_BURST = 3
    settings.RATE_LIMIT_PER_SECOND = 0.2
    url = conv_url(conversation, "messages/")
    for i in range(3):
        assert api.post(url, {"body": f"m{i}", "client_msg_id": f"k{i}"}, format="json").status_code == 201
    r = api.post(url, {"body": "one too many"}, format="json")
    assert_error(r, 429, "rate_limited")
    # Refill at 0.2/s: the next token is about 5 s away.
    assert 1 <= int(r.headers["Retry-After"]) <= 5
    assert Message.objects.count() == 3
    # A retry of an acknowledged send is not a new send: it still gets its original.
    again = api.post(url, {"body": "m0", "client_msg_id": "k0"}, format="json")
    assert again.status_code == 200
    assert again.json()["seq"] == 1
    # The bucket is per user.
    assert member_api.post(url, {"body": "mine"}, format="json").status_code == 201


def test_send_rate_limit_refills(api, conversation, settings):
    settings.RATE_LIMIT_BURST = 1
    settings.RATE_LIMIT_PER_SECOND = 1
    url = conv_url(conversation, "messages/")
    assert api.post(url, {"body": "a"}, format="json").status_code == 201
    assert_error(api.post(url, {"body": "b"}, format="json"), 429, "rate_limited")
    time.sleep(1.1)
    assert api.post(url, {"body": "c"}, format="json").status_code == 201
