"""The HTTP API of contract section 3 around the endpoints: unknown paths, wrong methods, the
OpenAPI schema, unexpected errors, Redis down, and numbers given as strings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat import services
from chat.models import Message
from core import redis_client
from tests.chat.apiutil import UNKNOWN_ID, conv_url
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db


# --- Around the endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/nope/", f"/api/conversations/{UNKNOWN_ID}/nonsense/", "/api/x/y/z/"])
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
