"""The HTTP API of contract section 3, conversations and their participants: success, then
400/401/403/404."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.models import Conversation, Participant
from tests.chat.apiutil import UNKNOWN_ID, conv_url, frames, post_raw, send
from tests.conftest import assert_error, client_for
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db


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


def test_conversation_list_counts_unread_messages_after_the_callers_read_position(api, user, other_user):
    conversation = ConversationFactory(owner=user, members=[other_user])
    for body in ("one", "two", "three"):
        send(other_user, conversation, body)
    [row] = api.get("/api/conversations/").json()["results"]
    assert row["unread"] == 3
    assert api.post(conv_url(conversation, "read/"), {"seq": 2}, format="json").status_code == 200
    [row] = api.get("/api/conversations/").json()["results"]
    assert row["unread"] == 1
    send(user, conversation, "mine")
    [row] = api.get("/api/conversations/").json()["results"]
    assert row["unread"] == 1  # one's own messages are never unread
    [theirs] = client_for(other_user).get("/api/conversations/").json()["results"]
    assert theirs["unread"] == 1


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


@pytest.mark.parametrize("cid", [UNKNOWN_ID, "not-a-uuid", "1", "%00"])
def test_conversation_detail_of_unknown_or_garbage_id_is_404(api, cid):
    assert_error(api.get(conv_url(cid)), 404, "not_found")


def test_conversation_detail_needs_authentication(anon, conversation):
    assert_error(anon.get(conv_url(conversation)), 401, "not_authenticated")


def test_conversation_detail_runs_the_same_queries_for_2_and_20_participants(api, user, django_assert_num_queries):
    small = ConversationFactory(owner=user, members=UserFactory.create_batch(1))
    large = ConversationFactory(owner=user, members=UserFactory.create_batch(19))
    api.get(conv_url(ConversationFactory(owner=user)))  # anything cached per process is loaded
    with CaptureQueriesContext(connection) as at_two:
        r = api.get(conv_url(small))
    assert r.status_code == 200, r.json()
    assert len(r.json()["participants"]) == 2
    with django_assert_num_queries(len(at_two)):
        r = api.get(conv_url(large))
    assert r.status_code == 200, r.json()
    assert len(r.json()["participants"]) == 20


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


@pytest.mark.parametrize("cid", [UNKNOWN_ID, "garbage"])
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


def test_adding_runs_the_same_queries_for_2_and_20_participants(api, user, published, django_assert_num_queries):
    small = ConversationFactory(owner=user, members=UserFactory.create_batch(1))
    large = ConversationFactory(owner=user, members=UserFactory.create_batch(19))
    newcomers = UserFactory.create_batch(3)
    api.post(conv_url(ConversationFactory(owner=user), "participants/"), {"user_id": newcomers[0].pk}, format="json")
    with CaptureQueriesContext(connection) as at_two:
        r = api.post(conv_url(small, "participants/"), {"user_id": newcomers[1].pk}, format="json")
    assert r.status_code == 201, r.json()
    assert len(r.json()["participants"]) == 3
    with django_assert_num_queries(len(at_two)):
        r = api.post(conv_url(large, "participants/"), {"user_id": newcomers[2].pk}, format="json")
    assert r.status_code == 201, r.json()
    assert len(r.json()["participants"]) == 21


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


@pytest.mark.parametrize("cid", [UNKNOWN_ID, "garbage"])
def test_removing_from_unknown_conversation_is_404(api, user, cid):
    assert_error(api.delete(conv_url(cid, f"participants/{user.pk}/")), 404, "not_found")


def test_removing_needs_authentication(anon, conversation, other_user):
    assert_error(anon.delete(conv_url(conversation, f"participants/{other_user.pk}/")), 401, "not_authenticated")
