"""Brute force and token lifetime, against real servers over HTTP and real sockets."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import requests
from django.utils import timezone
from rest_framework.authtoken.models import Token

from tests.factories import PASSWORD, UserFactory
from tests.integration.conftest import open_ws
from tests.security.live import ahttp, cluster_of, http

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WRONG = "not-the-password"


@pytest.fixture
def two(tmp_path):
    c = cluster_of(tmp_path, LOGIN_RATE_LIMIT_ACCOUNT="5/m burst 5", LOGIN_RATE_LIMIT_ADDRESS="60/m burst 40")
    yield c
    c.stop()


@pytest.fixture
def one(tmp_path):
    c = cluster_of(tmp_path, servers={"a": "uvicorn"}, LOGIN_RATE_LIMIT_ADDRESS="60/m burst 6")
    yield c
    c.stop()


def login(server, username: str, password: str) -> requests.Response:
    return http("POST", server, "/api/auth/token/", {"username": username, "password": password})


def assert_rate_limited(response: requests.Response) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert "token" not in body
    assert int(response.headers["Retry-After"]) >= 1


def test_wrong_passwords_exhaust_the_account_on_every_instance_and_right_ones_do_not(two, transactional_db):
    user = UserFactory()
    a, b = two.servers["a"], two.servers["b"]
    # Correct logins beyond the burst: they give their attempt back.
    tokens = {login(server, user.username, PASSWORD).json()["token"] for server in (a, b, a, b, a, b, a)}
    assert len(tokens) == 1
    # Wrong ones, spread over both instances, share one budget.
    for server in (a, b, a, b, a):
        r = login(server, user.username, WRONG)
        assert r.status_code == 400, r.text
    assert_rate_limited(login(b, user.username, PASSWORD))
    assert_rate_limited(login(a, user.username.upper(), PASSWORD))  # the same account, other case
    # Another account from the same address is not locked by this one.
    other = UserFactory()
    assert login(a, other.username, PASSWORD).status_code == 200


def test_one_address_cannot_spray_many_accounts(one, transactional_db):
    a = one.servers["a"]
    for n in range(6):
        assert login(a, f"nobody{n}", WRONG).status_code == 400
    user = UserFactory()
    assert_rate_limited(login(a, user.username, PASSWORD))


def test_admin_login_is_throttled_like_the_api(two, transactional_db):
    staff = UserFactory(is_staff=True, is_superuser=True)
    a = two.servers["a"]
    browser = requests.Session()
    page = browser.get(a.url + "/admin/login/", timeout=10)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)

    def post(password: str) -> requests.Response:
        form = {"username": staff.username, "password": password, "csrfmiddlewaretoken": csrf, "next": "/admin/"}
        return browser.post(a.url + "/admin/login/", data=form, allow_redirects=False, timeout=10)

    for _ in range(5):
        r = post(WRONG)
        assert r.status_code == 200 and "correct username and password" in r.text
    r = post(PASSWORD)
    assert r.status_code == 429, r.status_code
    assert int(r.headers["Retry-After"]) >= 1
    assert "sessionid" not in browser.cookies


async def test_expired_token_is_401_and_refused_on_the_socket_and_login_issues_a_new_one(one, transactional_db):
    from channels.db import database_sync_to_async

    a = one.servers["a"]
    user = await database_sync_to_async(UserFactory)()
    old = (await ahttp("POST", a, "/api/auth/token/", {"username": user.username, "password": PASSWORD})).json()
    assert (await ahttp("GET", a, "/api/me/", token=old["token"])).status_code == 200

    await database_sync_to_async(
        lambda: Token.objects.filter(key=old["token"]).update(created=timezone.now() - dt.timedelta(days=31))
    )()
    r = await ahttp("GET", a, "/api/me/", token=old["token"])
    assert r.status_code == 401 and r.json()["code"] == "not_authenticated"
    ws = await open_ws(a.ws_url, headers={"Authorization": f"Token {old['token']}"}, hello=False)
    assert await ws.closed_code(5) == 4401

    new = (await ahttp("POST", a, "/api/auth/token/", {"username": user.username, "password": PASSWORD})).json()
    assert new["token"] != old["token"]
    assert (await ahttp("GET", a, "/api/me/", token=new["token"])).status_code == 200


def test_password_change_revokes_the_token(one, transactional_db):
    a = one.servers["a"]
    user = UserFactory()
    old = login(a, user.username, PASSWORD).json()["token"]
    user.set_password("a-brand-new-password")
    user.save()
    r = http("GET", a, "/api/me/", token=old)
    assert r.status_code == 401
    new = login(a, user.username, "a-brand-new-password").json()["token"]
    assert new != old
    assert http("GET", a, "/api/me/", token=new).status_code == 200
