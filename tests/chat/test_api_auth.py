"""The HTTP API of contract section 3, authentication: token login, the WebSocket ticket and
/api/me/; success, then 400/401/403."""

from __future__ import annotations

import time

import pytest
from django.conf import settings as django_settings
from django.middleware.csrf import _get_new_csrf_string
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import services
from chat.models import Conversation
from core import redis_client
from tests.chat.apiutil import post_raw
from tests.conftest import assert_error, client_for
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


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
