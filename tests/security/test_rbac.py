"""Operator roles over real HTTP (a real server), the admin pages and the commands' effects."""

from __future__ import annotations

import importlib
import json

import pytest
import requests
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from presence import roles
from tests.conftest import operator
from tests.factories import UserFactory
from tests.integration.conftest import token
from tests.security.live import cluster_of, http, session_cookie

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(tmp_path):
    c = cluster_of(tmp_path, servers={"a": "uvicorn"})
    yield c.servers["a"]
    c.stop()


@pytest.fixture
def staff(transactional_db):
    support = operator(UserFactory(is_staff=True), "support")
    op = operator(UserFactory(is_staff=True), "operator")
    bare = UserFactory(is_staff=True)  # staff, but in no role
    target = UserFactory()
    return {"support": support, "operator": op, "bare": bare, "target": target}


def assert_missing(response: requests.Response, permission: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "permission_denied"
    assert body["permission"] == permission
    assert permission in body["detail"]


def test_operator_api_checks_each_permission(server, staff):
    target = staff["target"].pk
    support, op, bare = (token(staff[k]) for k in ("support", "operator", "bare"))

    assert http("GET", server, "/api/admin/connections/", token=support).status_code == 200
    assert http("GET", server, "/api/admin/instances/", token=support).status_code == 200
    assert_missing(http("POST", server, f"/api/admin/users/{target}/disconnect/", token=support), roles.DISCONNECT_USER)

    assert_missing(http("GET", server, "/api/admin/connections/", token=bare), roles.VIEW_CONNECTIONS)
    assert_missing(http("GET", server, "/api/admin/instances/", token=bare), roles.VIEW_INSTANCES)
    assert_missing(http("POST", server, f"/api/admin/users/{target}/disconnect/", token=bare), roles.DISCONNECT_USER)

    r = http("POST", server, f"/api/admin/users/{target}/disconnect/", token=op)
    assert r.status_code == 202 and r.json() == {"closed": 0}


def test_admin_pages_check_the_same_permissions(server, staff, settings):
    def browser(user) -> requests.Session:
        s = requests.Session()
        s.cookies.set(settings.SESSION_COOKIE_NAME, session_cookie(user, settings))
        s.get(server.url + "/admin/", timeout=10)  # the CSRF cookie
        return s

    def disconnect(s: requests.Session) -> requests.Response:
        form = {"user_id": staff["target"].pk, "csrfmiddlewaretoken": s.cookies["csrftoken"]}
        return s.post(server.url + "/admin/presence/connections/disconnect/", data=form, allow_redirects=False)

    with ws_connect(server.ws_url, additional_headers={"Authorization": f"Token {token(staff['target'])}"}) as target:
        assert json.loads(target.recv(timeout=10))["type"] == "hello"
        action = "/admin/presence/connections/disconnect/"

        support = browser(staff["support"])
        page = support.get(server.url + "/admin/presence/connections/", timeout=10)
        assert page.status_code == 200 and staff["target"].username in page.text and action not in page.text
        r = disconnect(support)
        assert r.status_code == 403 and roles.DISCONNECT_USER in r.text

        bare = browser(staff["bare"])
        r = bare.get(server.url + "/admin/presence/connections/", timeout=10)
        assert r.status_code == 403 and roles.VIEW_CONNECTIONS in r.text
        r = bare.get(server.url + "/admin/presence/instances/", timeout=10)
        assert r.status_code == 403 and roles.VIEW_INSTANCES in r.text
        assert "Live connections" not in bare.get(server.url + "/admin/", timeout=10).text

        op = browser(staff["operator"])
        assert op.get(server.url + "/admin/presence/instances/", timeout=10).status_code == 200
        assert action in op.get(server.url + "/admin/presence/connections/", timeout=10).text
        assert disconnect(op).status_code == 302
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                target.recv(timeout=10)
        assert closed.value.rcvd.code == 4000


def test_command_acting_as_an_operator_needs_the_permission(staff):
    with pytest.raises(CommandError, match=roles.DISCONNECT_USER):
        call_command("disconnect_user", staff["target"].username, "--as", staff["support"].username)
    call_command("disconnect_user", staff["target"].username, "--as", staff["operator"].username)


def test_data_migration_creates_the_roles(transactional_db):
    from django.apps import apps

    Group.objects.all().delete()
    importlib.import_module("presence.migrations.0002_operator_roles").create_roles(apps, None)
    perms = {
        g.name: {f"{p.content_type.app_label}.{p.codename}" for p in g.permissions.all()} for g in Group.objects.all()
    }
    assert perms == {name: set(codes) for name, codes in roles.ROLES.items()}
    assert roles.DISCONNECT_USER not in perms["support"]
