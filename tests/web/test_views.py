"""The browser app's Django side: sign-in with the session, the page, static files."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_anonymous_visitor_gets_the_sign_in_form_and_a_csrf_cookie():
    client = Client()
    r = client.get("/")
    assert r.status_code == 200
    assert b'name="password"' in r.content
    assert "csrftoken" in r.cookies


def test_wrong_password_is_a_400_with_the_form_again():
    user = UserFactory()
    r = Client().post("/", {"username": user.username, "password": "wrong"})
    assert r.status_code == 400
    assert b"Wrong username or password." in r.content


def test_inactive_user_cannot_sign_in():
    user = UserFactory(is_active=False)
    r = Client().post("/", {"username": user.username, "password": PASSWORD})
    assert r.status_code == 400


def test_sign_in_sets_the_session_and_the_page_carries_only_id_and_name_as_json():
    user = UserFactory(username="<b>eve</b>")
    client = Client()
    r = client.post("/", {"username": user.username, "password": PASSWORD})
    assert r.status_code == 302 and r["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<b>eve</b>" not in html  # json_script escapes it
    start = html.index('<script id="me" type="application/json">') + len('<script id="me" type="application/json">')
    me = json.loads(html[start : html.index("</script>", start)])
    assert me == {"id": user.pk, "username": "<b>eve</b>"}
    assert client.get("/api/me/").json()["username"] == "<b>eve</b>"


def test_sign_out_needs_post_and_ends_the_session():
    user = UserFactory()
    client = Client()
    client.force_login(user)
    assert client.get("/sign-out/").status_code == 405
    assert client.post("/sign-out/").status_code == 302
    assert b'name="password"' in client.get("/").content


def test_the_sdk_and_the_app_are_served_as_javascript():
    client = Client()
    for path in ("/static/sdk/index.js", "/static/web/app.js"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "javascript" in r["Content-Type"]
