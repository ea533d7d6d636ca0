"""The HTTP API of contract section 3, read receipts and typing: success, then
400/401/403/404."""

from __future__ import annotations

import pytest

from chat.models import Participant
from tests.chat.apiutil import UNKNOWN_ID, conv_url, frames, post_raw
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db


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


@pytest.mark.parametrize("cid", [UNKNOWN_ID, "garbage"])
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


@pytest.mark.parametrize("cid", [UNKNOWN_ID, "garbage"])
def test_typing_in_unknown_conversation_is_404(api, cid):
    assert_error(api.post(conv_url(cid, "typing/"), {"state": "start"}, format="json"), 404, "not_found")


def test_typing_needs_authentication(anon, conversation):
    r = anon.post(conv_url(conversation, "typing/"), {"state": "start"}, format="json")
    assert_error(r, 401, "not_authenticated")
