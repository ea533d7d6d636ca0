"""The HTTP API of contract section 3, endpoint by endpoint: success, then 400/401/403/404."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.middleware.csrf import _get_new_csrf_string
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import services
from chat.models import Conversation, Message, Participant
from core import redis_client
from tests.conftest import assert_error, client_for
from tests.factories import PASSWORD, ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db

MESSAGE_KEYS = {"id", "conversation_id", "seq", "sender_id", "body", "client_msg_id", "created_at"}


def conv_url(conversation: Any, suffix: str = "") -> str:
    cid = conversation if isinstance(conversation, str) else conversation.id
    return f"/api/conversations/{cid}/{suffix}"


def post_raw(client: APIClient, url: str, raw: str) -> Any:
    return client.post(url, data=raw, content_type="application/json")


def send(user: Any, conversation: Any, body: str, client_msg_id: str | None = None) -> Message:
    return services.message_send(
        sender_id=user.pk, conversation_id=conversation.id, body=body, client_msg_id=client_msg_id
    ).message


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every event that leaves through chat.events.publish, as (group, layer message)."""
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        "chat.events.publish",
        lambda groups, message: sent.extend((g, {**message, "group": g}) for g in groups),
    )
    return sent


@pytest.fixture
def stranger(db: Any) -> Any:
    return UserFactory()


@pytest.fixture
def stranger_api(stranger: Any) -> APIClient:
    return client_for(stranger)


@pytest.fixture
def member_api(other_user: Any) -> APIClient:
    return client_for(other_user)


def frames(published: list[tuple[str, dict[str, Any]]], type_: str) -> list[tuple[str, dict[str, Any]]]:
    return [(g, m) for g, m in published if m["frame"] and m["frame"]["type"] == type_]


# --- POST /api/auth/token/ ------------------------------------------------------------------


def test_token_login_returns_token_and_user(anon, user):
    r = anon.post("/api/auth/token/", {"username": user.username, "password": PASSWORD}, format="json")
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["token"] == Token.objects.get(user=user).key
    assert body["user"] == {"id": user.pk, "username": user.username, "is_staff": False}
    anon.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert anon.get("/api/me/").json()["id"] == user.pk


def test_token_login_twice_returns_the_same_token(anon, user):
    creds = {"username": user.username, "password": PASSWORD}
    first = anon.post("/api/auth/token/", creds, format="json").json()["token"]
    second = anon.post("/api/auth/token/", creds, format="json").json()["token"]
    assert first == second


def test_token_login_with_wrong_password_is_400(anon, user):
    r = anon.post("/api/auth/token/", {"username": user.username, "password": "nope"}, format="json")
    body = assert_error(r, 400, "invalid")
    assert body["errors"]["non_field_errors"]
    assert "token" not in body


def test_token_login_of_inactive_user_is_400(anon, user):
    user.is_active = False
    user.save(update_fields=["is_active"])
    r = anon.post("/api/auth/token/", {"username": user.username, "password": PASSWORD}, format="json")
    assert_error(r, 400, "invalid")


def test_token_login_without_fields_is_400_naming_them(anon):
    body = assert_error(anon.post("/api/auth/token/", {}, format="json"), 400, "invalid")
    assert set(body["errors"]) == {"username", "password"}


def test_token_login_with_wrong_types_is_400(anon, user):
    r = anon.post("/api/auth/token/", {"username": [user.username], "password": {"a": 1}}, format="json")
    body = assert_error(r, 400, "invalid")
    assert set(body["errors"]) == {"username", "password"}


def test_token_login_with_malformed_json_is_400_bad_request(anon):
    body = assert_error(post_raw(anon, "/api/auth/token/", '{"username": "a",'), 400, "bad_request")
    assert body["errors"] == {}


def test_token_login_with_non_object_json_is_400(anon):
    body = assert_error(post_raw(anon, "/api/auth/token/", '["user", "pass"]'), 400, "invalid")
    assert body["errors"]["non_field_errors"]


# --- Authentication in general ----------------------------------------------------------------


def test_unknown_token_is_401(anon):
    anon.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(anon.get("/api/me/"), 401, "not_authenticated")


def test_token_of_deactivated_user_is_401(api, user):
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert_error(api.get("/api/me/"), 401, "not_authenticated")


def test_401_carries_www_authenticate(anon):
    r = anon.get("/api/me/")
    assert_error(r, 401, "not_authenticated")
    assert r.headers["WWW-Authenticate"].startswith("Token")


def test_session_authentication_works_for_reads(user):
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    r = client.get("/api/me/")
    assert r.status_code == 200
    assert r.json()["id"] == user.pk


def test_session_post_without_csrf_token_is_403(user, other_user):
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    r = client.post("/api/conversations/", {"participant_ids": [other_user.pk]}, format="json")
    body = assert_error(r, 403, "permission_denied")
    assert "CSRF" in body["detail"]
    assert not Conversation.objects.exists()


def test_session_post_with_csrf_token_is_accepted(user, other_user):
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    token = _get_new_csrf_string()
    client.cookies[django_settings.CSRF_COOKIE_NAME] = token
    r = client.post("/api/conversations/", {"participant_ids": [other_user.pk]}, format="json", HTTP_X_CSRFTOKEN=token)
    assert r.status_code == 201, r.json()


# --- POST /api/auth/ws-ticket/ --------------------------------------------------------------


def test_ws_ticket_is_issued_and_single_use(api, user):
    r = api.post("/api/auth/ws-ticket/")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["expires_in"] == 60
    assert isinstance(body["ticket"], str) and len(body["ticket"]) >= 32
    assert services.ws_ticket_consume(ticket=body["ticket"]) == user.pk
    assert services.ws_ticket_consume(ticket=body["ticket"]) is None


def test_ws_tickets_are_distinct(api):
    first = api.post("/api/auth/ws-ticket/").json()["ticket"]
    second = api.post("/api/auth/ws-ticket/").json()["ticket"]
    assert first != second


def test_ws_ticket_lives_sixty_seconds_in_redis(api):
    ticket = api.post("/api/auth/ws-ticket/").json()["ticket"]
    ttl = redis_client.get_sync().ttl(redis_client.key("ticket", ticket))
    assert 55 <= ttl <= 60


def test_expired_ws_ticket_is_refused(api):
    ticket = api.post("/api/auth/ws-ticket/").json()["ticket"]
    # What Redis does when the TTL runs out.
    assert redis_client.get_sync().delete(redis_client.key("ticket", ticket)) == 1
    assert services.ws_ticket_consume(ticket=ticket) is None


def test_ws_ticket_with_short_ttl_expires(api, user, settings):
    settings.WS_TICKET_TTL_SECONDS = 1
    ticket = api.post("/api/auth/ws-ticket/").json()["ticket"]
    time.sleep(1.2)
    assert services.ws_ticket_consume(ticket=ticket) is None


@pytest.mark.parametrize("ticket", ["", "never-issued", "x" * 500])
def test_unknown_ws_ticket_is_refused(ticket):
    assert services.ws_ticket_consume(ticket=ticket) is None


def test_ws_ticket_needs_authentication(anon):
    assert_error(anon.post("/api/auth/ws-ticket/"), 401, "not_authenticated")


# --- GET /api/me/ -----------------------------------------------------------------------------


def test_me_returns_the_caller(api, user):
    r = api.get("/api/me/")
    assert r.status_code == 200
    assert r.json() == {"id": user.pk, "username": user.username, "is_staff": False}


def test_me_shows_staff(staff_user):
    assert client_for(staff_user).get("/api/me/").json()["is_staff"] is True


def test_me_needs_authentication(anon):
    assert_error(anon.get("/api/me/"), 401, "not_authenticated")


# --- GET/POST /api/conversations/ -------------------------------------------------------------


def test_conversation_list_holds_only_the_callers_conversations(api, user, other_user, stranger):
    mine = ConversationFactory(owner=user)
    theirs = ConversationFactory(owner=other_user, members=[user])
    ConversationFactory(owner=stranger, members=[other_user])
    r = api.get("/api/conversations/")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 2
    assert {c["id"] for c in body["results"]} == {str(mine.id), str(theirs.id)}


def test_conversation_list_is_paginated(api, user):
    for _ in range(51):
        ConversationFactory(owner=user)
    first = api.get("/api/conversations/").json()
    assert first["count"] == 51
    assert len(first["results"]) == 50
    assert first["next"]
    second = api.get("/api/conversations/?page=2").json()
    assert len(second["results"]) == 1
    assert second["next"] is None
    assert {c["id"] for c in first["results"]}.isdisjoint({c["id"] for c in second["results"]})


def test_conversation_list_puts_the_latest_activity_first(api, user):
    older = ConversationFactory(owner=user)
    newer = ConversationFactory(owner=user)
    send(user, older, "wake up")
    ids = [c["id"] for c in api.get("/api/conversations/").json()["results"]]
    assert ids == [str(older.id), str(newer.id)]


def test_conversation_list_page_out_of_range_is_404(api, user):
    ConversationFactory(owner=user)
    assert_error(api.get("/api/conversations/?page=9"), 404, "not_found")


def test_conversation_list_needs_authentication(anon):
    assert_error(anon.get("/api/conversations/"), 401, "not_authenticated")


def test_create_conversation_makes_the_creator_owner(
    api, user, other_user, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(
            "/api/conversations/",
            {"title": "  Plans  ", "participant_ids": [other_user.pk, other_user.pk, user.pk]},
            format="json",
        )
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["title"] == "Plans"
    assert body["owner_id"] == user.pk
    assert body["last_seq"] == 0
    roles = {p["user_id"]: p["role"] for p in body["participants"]}
    assert roles == {user.pk: "owner", other_user.pk: "member"}
    assert Participant.objects.filter(conversation_id=body["id"]).count() == 2
    joined = {g for g, _ in frames(published, "conversation.joined")}
    assert joined == {f"u.{user.pk}", f"u.{other_user.pk}"}


def test_create_conversation_with_only_the_creator(api, user):
    r = api.post("/api/conversations/", {"participant_ids": []}, format="json")
    assert r.status_code == 201, r.json()
    assert [p["user_id"] for p in r.json()["participants"]] == [user.pk]


def test_create_conversation_without_participant_ids_is_400(api):
    body = assert_error(api.post("/api/conversations/", {"title": "x"}, format="json"), 400, "invalid")
    assert "participant_ids" in body["errors"]


@pytest.mark.parametrize("value", ["1,2", 5, [["1"]], [None], {"id": 1}])
def test_create_conversation_with_wrong_participant_types_is_400(api, value):
    body = assert_error(api.post("/api/conversations/", {"participant_ids": value}, format="json"), 400, "invalid")
    assert any(key.startswith("participant_ids") for key in body["errors"])
    assert not Conversation.objects.exists()


def test_create_conversation_with_unknown_user_is_400(api, other_user):
    r = api.post("/api/conversations/", {"participant_ids": [other_user.pk, 999999]}, format="json")
    body = assert_error(r, 400, "invalid")
    assert "999999" not in json.dumps(body)  # which ids exist is never revealed
    assert not Conversation.objects.exists()


def test_create_conversation_with_inactive_user_is_400(api, other_user):
    other_user.is_active = False
    other_user.save(update_fields=["is_active"])
    r = api.post("/api/conversations/", {"participant_ids": [other_user.pk]}, format="json")
    assert "participant_ids" in assert_error(r, 400, "invalid")["errors"]


@pytest.mark.parametrize("title", ["x" * 201, 42, ["a"]])
def test_create_conversation_with_bad_title_is_400(api, title):
    r = api.post("/api/conversations/", {"title": title, "participant_ids": []}, format="json")
    assert "title" in assert_error(r, 400, "invalid")["errors"]
    assert not Conversation.objects.exists()


def test_create_conversation_with_malformed_json_is_400_bad_request(api):
    assert_error(post_raw(api, "/api/conversations/", "{participant_ids: []}"), 400, "bad_request")


def test_create_conversation_with_non_object_json_is_400(api):
    body = assert_error(post_raw(api, "/api/conversations/", "[1, 2]"), 400, "invalid")
    assert body["errors"]["non_field_errors"]


def test_create_conversation_needs_authentication(anon):
    assert_error(anon.post("/api/conversations/", {"participant_ids": []}, format="json"), 401, "not_authenticated")


# --- GET /api/conversations/{id}/ -------------------------------------------------------------


def test_conversation_detail_for_a_participant(member_api, conversation, user, other_user):
    r = member_api.get(conv_url(conversation))
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == str(conversation.id)
    assert body["owner_id"] == user.pk
    assert {p["user_id"] for p in body["participants"]} == {user.pk, other_user.pk}


def test_conversation_detail_of_someone_elses_conversation_is_403(stranger_api, conversation):
    assert_error(stranger_api.get(conv_url(conversation)), 403, "not_participant")


@pytest.mark.parametrize("cid", [str(uuid.uuid4()), "not-a-uuid", "1", "%00"])
def test_conversation_detail_of_unknown_or_garbage_id_is_404(api, cid):
    assert_error(api.get(conv_url(cid)), 404, "not_found")


def test_conversation_detail_needs_authentication(anon, conversation):
    assert_error(anon.get(conv_url(conversation)), 401, "not_authenticated")


# --- POST /api/conversations/{id}/participants/ -----------------------------------------------


def test_owner_adds_a_participant(api, conversation, stranger, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(conv_url(conversation, "participants/"), {"user_id": stranger.pk}, format="json")
    assert r.status_code == 201, r.json()
    roles = {p["user_id"]: p["role"] for p in r.json()["participants"]}
    assert roles[stranger.pk] == "member"
    assert Participant.objects.filter(conversation=conversation, user=stranger).exists()
    assert [g for g, _ in frames(published, "conversation.joined")] == [f"u.{stranger.pk}"]
    # The new member can read at once.
    assert client_for(stranger).get(conv_url(conversation)).status_code == 200


def test_adding_an_existing_participant_changes_nothing(
    api, conversation, other_user, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(conv_url(conversation, "participants/"), {"user_id": other_user.pk}, format="json")
    assert r.status_code == 200, r.json()
    assert Participant.objects.filter(conversation=conversation).count() == 2
    assert frames(published, "conversation.joined") == []


def test_non_owner_adding_is_403(member_api, conversation, stranger):
    r = member_api.post(conv_url(conversation, "participants/"), {"user_id": stranger.pk}, format="json")
    assert_error(r, 403, "permission_denied")
    assert not Participant.objects.filter(conversation=conversation, user=stranger).exists()


def test_non_participant_adding_is_403(stranger_api, conversation, stranger):
    r = stranger_api.post(conv_url(conversation, "participants/"), {"user_id": stranger.pk}, format="json")
    assert_error(r, 403, "not_participant")
    assert not Participant.objects.filter(conversation=conversation, user=stranger).exists()


@pytest.mark.parametrize("cid", [str(uuid.uuid4()), "garbage"])
def test_adding_to_unknown_conversation_is_404(api, stranger, cid):
    assert_error(api.post(conv_url(cid, "participants/"), {"user_id": stranger.pk}, format="json"), 404, "not_found")


@pytest.mark.parametrize("payload", [{}, {"user_id": "abc"}, {"user_id": None}, {"user_id": [1]}, {"user_id": True}])
def test_adding_with_bad_user_id_is_400(api, conversation, payload):
    body = assert_error(api.post(conv_url(conversation, "participants/"), payload, format="json"), 400, "invalid")
    assert "user_id" in body["errors"]


def test_adding_unknown_user_is_400(api, conversation):
    r = api.post(conv_url(conversation, "participants/"), {"user_id": 999999}, format="json")
    assert "user_id" in assert_error(r, 400, "invalid")["errors"]


def test_adding_inactive_user_is_400(api, conversation, stranger):
    stranger.is_active = False
    stranger.save(update_fields=["is_active"])
    r = api.post(conv_url(conversation, "participants/"), {"user_id": stranger.pk}, format="json")
    assert "user_id" in assert_error(r, 400, "invalid")["errors"]


def test_adding_with_malformed_json_is_400_bad_request(api, conversation):
    assert_error(post_raw(api, conv_url(conversation, "participants/"), "{"), 400, "bad_request")


def test_adding_with_non_object_json_is_400(api, conversation, stranger):
    assert_error(post_raw(api, conv_url(conversation, "participants/"), str(stranger.pk)), 400, "invalid")


def test_adding_needs_authentication(anon, conversation, stranger):
    r = anon.post(conv_url(conversation, "participants/"), {"user_id": stranger.pk}, format="json")
    assert_error(r, 401, "not_authenticated")


# --- DELETE /api/conversations/{id}/participants/{user_id}/ -----------------------------------


def test_member_leaves(member_api, conversation, other_user, user, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = member_api.delete(conv_url(conversation, f"participants/{other_user.pk}/"))
    assert r.status_code == 204
    assert not Participant.objects.filter(conversation=conversation, user=other_user).exists()
    conversation.refresh_from_db()
    assert conversation.owner_id == user.pk
    left = frames(published, "conversation.left")
    assert [(g, m["audience"]["only_user"]) for g, m in left] == [(f"c.{conversation.id}", other_user.pk)]
    assert_error(member_api.get(conv_url(conversation)), 403, "not_participant")


def test_owner_removes_a_member(api, conversation, other_user):
    assert api.delete(conv_url(conversation, f"participants/{other_user.pk}/")).status_code == 204
    assert list(Participant.objects.filter(conversation=conversation).values_list("user_id", flat=True)) == [
        conversation.owner_id
    ]


def test_owner_leaving_passes_ownership_to_longest_standing_participant(api, user):
    conversation = ConversationFactory(owner=user)
    later, earlier = UserFactory(), UserFactory()
    # ``later`` gets the lower row id; only joined_at decides who has stood longest.
    Participant.objects.create(conversation=conversation, user=later)
    Participant.objects.create(conversation=conversation, user=earlier)
    now = timezone.now()
    Participant.objects.filter(conversation=conversation, user=user).update(joined_at=now - timedelta(days=3))
    Participant.objects.filter(conversation=conversation, user=earlier).update(joined_at=now - timedelta(days=2))
    Participant.objects.filter(conversation=conversation, user=later).update(joined_at=now - timedelta(days=1))

    assert api.delete(conv_url(conversation, f"participants/{user.pk}/")).status_code == 204

    body = client_for(earlier).get(conv_url(conversation)).json()
    assert body["owner_id"] == earlier.pk
    roles = {p["user_id"]: p["role"] for p in body["participants"]}
    assert roles == {earlier.pk: "owner", later.pk: "member"}
    # The new owner can add people; the old one is gone.
    newcomer = UserFactory()
    r = client_for(earlier).post(conv_url(conversation, "participants/"), {"user_id": newcomer.pk}, format="json")
    assert r.status_code == 201
    assert_error(api.get(conv_url(conversation)), 403, "not_participant")


def test_last_participant_leaving_leaves_no_owner(api, user):
    conversation = ConversationFactory(owner=user)
    assert api.delete(conv_url(conversation, f"participants/{user.pk}/")).status_code == 204
    conversation.refresh_from_db()
    assert conversation.owner_id is None
    assert not Participant.objects.filter(conversation=conversation).exists()


def test_member_removing_someone_else_is_403(member_api, conversation, user):
    r = member_api.delete(conv_url(conversation, f"participants/{user.pk}/"))
    assert_error(r, 403, "permission_denied")
    assert Participant.objects.filter(conversation=conversation, user=user).exists()


def test_removing_a_non_participant_is_404(api, conversation, stranger):
    assert_error(api.delete(conv_url(conversation, f"participants/{stranger.pk}/")), 404, "not_found")


@pytest.mark.parametrize("target", ["abc", "999999", "1.5"])
def test_removing_unknown_or_garbage_user_is_404(api, conversation, target):
    assert_error(api.delete(conv_url(conversation, f"participants/{target}/")), 404, "not_found")


@pytest.mark.parametrize("target", ["self", "owner", "garbage"])
def test_non_participant_removing_is_403(stranger_api, stranger, conversation, user, target):
    target_id = {"self": stranger.pk, "owner": user.pk, "garbage": "abc"}[target]
    r = stranger_api.delete(conv_url(conversation, f"participants/{target_id}/"))
    assert_error(r, 403, "not_participant")
    assert Participant.objects.filter(conversation=conversation).count() == 2


@pytest.mark.parametrize("cid", [str(uuid.uuid4()), "garbage"])
def test_removing_from_unknown_conversation_is_404(api, user, cid):
    assert_error(api.delete(conv_url(cid, f"participants/{user.pk}/")), 404, "not_found")


def test_removing_needs_authentication(anon, conversation, other_user):
    assert_error(anon.delete(conv_url(conversation, f"participants/{other_user.pk}/")), 401, "not_authenticated")


# --- GET /api/conversations/{id}/messages/ ----------------------------------------------------


@pytest.fixture
def five(conversation, user, other_user) -> list[Message]:
    return [send(user if i % 2 else other_user, conversation, f"m{i}") for i in range(1, 6)]


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


@pytest.mark.parametrize("cid", [str(uuid.uuid4()), "garbage"])
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


@pytest.mark.parametrize("cid", [str(uuid.uuid4()), "garbage"])
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


# --- POST/GET /api/conversations/{id}/read/ ---------------------------------------------------


def test_read_marks_and_broadcasts(api, conversation, five, user, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(conv_url(conversation, "read/"), {"seq": 3}, format="json")
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["conversation_id"] == str(conversation.id)
    assert body["user_id"] == user.pk
    assert body["seq"] == 3
    assert body["read_at"]
    reads = frames(published, "read")
    assert len(reads) == 1
    group, message = reads[0]
    assert group == f"c.{conversation.id}"
    assert message["frame"] == {
        "type": "read",
        "conversation_id": str(conversation.id),
        "user_id": user.pk,
        "seq": 3,
        "read_at": body["read_at"],
    }


def test_read_receipts_list_every_participant(api, member_api, conversation, five, user, other_user):
    marked = api.post(conv_url(conversation, "read/"), {"seq": 4}, format="json").json()
    r = member_api.get(conv_url(conversation, "read/"))
    assert r.status_code == 200
    assert r.json() == {
        "receipts": sorted(
            [
                {"user_id": user.pk, "seq": 4, "read_at": marked["read_at"]},
                {"user_id": other_user.pk, "seq": 0, "read_at": None},
            ],
            key=lambda x: x["user_id"],
        )
    }


def test_read_marker_never_moves_back(api, conversation, five, user, published, django_capture_on_commit_callbacks):
    url = conv_url(conversation, "read/")
    first = api.post(url, {"seq": 4}, format="json").json()
    with django_capture_on_commit_callbacks(execute=True):
        lower = api.post(url, {"seq": 2}, format="json")
        same = api.post(url, {"seq": 4}, format="json")
    assert lower.status_code == 200
    assert (lower.json()["seq"], lower.json()["read_at"]) == (4, first["read_at"])
    assert (same.json()["seq"], same.json()["read_at"]) == (4, first["read_at"])
    assert frames(published, "read") == []
    receipts = {x["user_id"]: x["seq"] for x in api.get(url).json()["receipts"]}
    assert receipts[user.pk] == 4
    assert api.post(url, {"seq": 5}, format="json").json()["seq"] == 5


def test_read_past_the_last_message_is_400(api, conversation, five, user):
    r = api.post(conv_url(conversation, "read/"), {"seq": 6}, format="json")
    assert "seq" in assert_error(r, 400, "invalid")["errors"]
    assert Participant.objects.get(conversation=conversation, user=user).last_read_seq == 0


@pytest.mark.parametrize("payload", [{}, {"seq": -1}, {"seq": "abc"}, {"seq": None}, {"seq": [1]}, {"seq": 1.5}])
def test_read_with_bad_seq_is_400(api, conversation, five, payload):
    r = api.post(conv_url(conversation, "read/"), payload, format="json")
    assert "seq" in assert_error(r, 400, "invalid")["errors"]


def test_read_with_malformed_json_is_400_bad_request(api, conversation):
    assert_error(post_raw(api, conv_url(conversation, "read/"), "seq=1"), 400, "bad_request")


def test_read_with_non_object_json_is_400(api, conversation):
    assert_error(post_raw(api, conv_url(conversation, "read/"), "[1]"), 400, "invalid")


def test_read_of_someone_elses_conversation_is_403(stranger_api, conversation, five):
    assert_error(stranger_api.post(conv_url(conversation, "read/"), {"seq": 1}, format="json"), 403, "not_participant")
    assert_error(stranger_api.get(conv_url(conversation, "read/")), 403, "not_participant")


@pytest.mark.parametrize("cid", [str(uuid.uuid4()), "garbage"])
def test_read_of_unknown_conversation_is_404(api, cid):
    assert_error(api.post(conv_url(cid, "read/"), {"seq": 0}, format="json"), 404, "not_found")
    assert_error(api.get(conv_url(cid, "read/")), 404, "not_found")


def test_read_needs_authentication(anon, conversation):
    assert_error(anon.post(conv_url(conversation, "read/"), {"seq": 0}, format="json"), 401, "not_authenticated")
    assert_error(anon.get(conv_url(conversation, "read/")), 401, "not_authenticated")


# --- POST /api/conversations/{id}/typing/ -----------------------------------------------------


@pytest.mark.parametrize("state", ["start", "stop"])
def test_typing_is_broadcast_to_the_others(
    api, conversation, user, state, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(conv_url(conversation, "typing/"), {"state": state}, format="json")
    assert r.status_code == 202, r.json()
    assert r.json() == {"broadcast": True}
    typing = frames(published, "typing")
    assert len(typing) == 1
    group, message = typing[0]
    assert group == f"c.{conversation.id}"
    assert message["audience"]["exclude_user"] == user.pk
    assert message["frame"] == {
        "type": "typing",
        "conversation_id": str(conversation.id),
        "user_id": user.pk,
        "state": state,
    }


def test_typing_in_a_large_conversation_is_not_broadcast(
    api, conversation, settings, published, django_capture_on_commit_callbacks
):
    settings.TYPING_MAX_PARTICIPANTS = 1
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(conv_url(conversation, "typing/"), {"state": "start"}, format="json")
    assert r.status_code == 202
    assert r.json() == {"broadcast": False}
    assert frames(published, "typing") == []


@pytest.mark.parametrize(
    "payload", [{}, {"state": "dancing"}, {"state": ""}, {"state": None}, {"state": 1}, {"state": ["start"]}]
)
def test_typing_with_bad_state_is_400(api, conversation, payload):
    r = api.post(conv_url(conversation, "typing/"), payload, format="json")
    assert "state" in assert_error(r, 400, "invalid")["errors"]


def test_typing_with_malformed_json_is_400_bad_request(api, conversation):
    assert_error(post_raw(api, conv_url(conversation, "typing/"), "{'state': 'start'}"), 400, "bad_request")


def test_typing_with_non_object_json_is_400(api, conversation):
    assert_error(post_raw(api, conv_url(conversation, "typing/"), '"start"'), 400, "invalid")


def test_typing_in_someone_elses_conversation_is_403(stranger_api, conversation):
    r = stranger_api.post(conv_url(conversation, "typing/"), {"state": "start"}, format="json")
    assert_error(r, 403, "not_participant")


@pytest.mark.parametrize("cid", [str(uuid.uuid4()), "garbage"])
def test_typing_in_unknown_conversation_is_404(api, cid):
    assert_error(api.post(conv_url(cid, "typing/"), {"state": "start"}, format="json"), 404, "not_found")


def test_typing_needs_authentication(anon, conversation):
    r = anon.post(conv_url(conversation, "typing/"), {"state": "start"}, format="json")
    assert_error(r, 401, "not_authenticated")


# --- Around the endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/nope/", f"/api/conversations/{uuid.uuid4()}/nonsense/", "/api/x/y/z/"])
def test_unknown_api_path_is_a_json_404(api, path):
    r = api.get(path)
    assert r["Content-Type"].startswith("application/json")
    assert r.json() == {"status": 404, "code": "not_found", "detail": "Not found."}


def test_unknown_api_path_is_a_json_404_for_anonymous_callers(anon):
    assert_error(anon.get("/api/does-not-exist/"), 404, "not_found")


def test_wrong_method_is_405_in_the_envelope(api):
    r = api.delete("/api/me/")
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"
    assert r.json()["status"] == 405


def test_openapi_schema_describes_the_endpoints(api):
    r = api.get("/api/schema/", {"format": "json"})
    assert r.status_code == 200
    schema = json.loads(r.content)
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    assert {
        "/api/auth/token/",
        "/api/auth/ws-ticket/",
        "/api/me/",
        "/api/conversations/",
        "/api/conversations/{conversation_id}/",
        "/api/conversations/{conversation_id}/participants/",
        "/api/conversations/{conversation_id}/participants/{user_id}/",
        "/api/conversations/{conversation_id}/messages/",
        "/api/conversations/{conversation_id}/read/",
        "/api/conversations/{conversation_id}/typing/",
    } <= paths
    messages = schema["paths"]["/api/conversations/{conversation_id}/messages/"]
    assert {"get", "post"} <= set(messages)
    assert {p["name"] for p in messages["get"]["parameters"]} >= {"after_seq", "before_seq", "limit"}


def test_unexpected_error_is_500_without_a_trace(api, conversation, monkeypatch, caplog):
    def explode(**kwargs: Any) -> None:
        raise RuntimeError("secret internals at /srv/app/chat/services.py")

    monkeypatch.setattr(services, "typing_set", explode)
    r = api.post(conv_url(conversation, "typing/"), {"state": "start"}, format="json")
    assert r.status_code == 500
    assert r.json() == {"status": 500, "code": "internal_error", "detail": "Internal server error."}
    assert b"secret internals" not in r.content
    assert any(rec.exc_info and "secret internals" in str(rec.exc_info[1]) for rec in caplog.records)


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the process's Redis client at a port where nothing listens."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from harness.processes import free_port

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(redis_client, "get_sync", lambda: dead)


def test_ws_ticket_without_redis_is_503(api, redis_down):
    assert_error(api.post("/api/auth/ws-ticket/"), 503, "unavailable")


def test_send_without_redis_is_503_and_stores_nothing(api, conversation, redis_down):
    assert_error(api.post(conv_url(conversation, "messages/"), {"body": "hi"}, format="json"), 503, "unavailable")
    assert not Message.objects.exists()


@pytest.mark.parametrize(("path", "payload"), [("read/", {"seq": "1"}), ("participants/", {"user_id": "2"})])
def test_numbers_given_as_strings_are_refused_like_on_the_socket(api, conversation, path, payload):
    body = assert_error(api.post(conv_url(conversation, path), payload, format="json"), 400, "invalid")
    assert list(body["errors"]) == list(payload)
