"""Operator pages in the Django admin: live connections and instances from the Redis registry,
and a disconnect that closes a user's sockets on every instance."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from core import redis_client
from harness.processes import AppServer, app_env, start_all, stop_all, wait_registered
from realtime.registry import Connection, RedisRegistry, instances_key
from tests.factories import UserFactory
from tests.integration.conftest import database_url, token

CONNECTIONS = "/admin/presence/connections/"
INSTANCES = "/admin/presence/instances/"
DISCONNECT = "/admin/presence/connections/disconnect/"


def register(instance_id: str, *conns: tuple[str, int]) -> None:
    """Write an instance's heartbeat and connections the way a running instance does."""
    registry = RedisRegistry()
    registry.instance_id = instance_id
    now = time.time()
    for conn_id, user_id in conns:
        conn = Connection(conn_id, user_id, instance_id, f"chan!{conn_id}", now, now, "10.1.2.3", "test-agent")
        async_to_sync(registry.add)(conn)
    async_to_sync(registry.heartbeat)()


def age_instance(instance_id: str, seconds: float) -> None:
    redis_client.get_sync().zadd(instances_key(), {instance_id: time.time() - seconds})


@pytest.fixture
def staff_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def registry_data(db):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    register("inst-a", ("conn-alice-a", alice.pk), ("conn-bob-a", bob.pk))
    register("inst-b", ("conn-alice-b", alice.pk))
    register("ghost", ("conn-bob-ghost", bob.pk))
    age_instance("ghost", 120)
    return {"alice": alice, "bob": bob}


def test_staff_sees_live_connections_per_instance_and_per_user(staff_client, registry_data):
    response = staff_client.get(CONNECTIONS)
    assert response.status_code == 200
    ctx = response.context
    assert (ctx["total"], ctx["users_online"], ctx["instance_count"]) == (4, 2, 3)
    assert [(r["instance_id"], r["connections"], r["alive"]) for r in ctx["per_instance"]] == [
        ("ghost", 1, False),
        ("inst-a", 2, True),
        ("inst-b", 1, True),
    ]
    assert [(r["username"], r["connections"], r["instances"]) for r in ctx["per_user"]] == [
        ("alice", 2, ["inst-a", "inst-b"]),
        ("bob", 2, ["ghost", "inst-a"]),
    ]
    html = response.content.decode()
    for conn_id in ("conn-alice-a", "conn-alice-b", "conn-bob-a", "conn-bob-ghost"):
        assert conn_id in html
    assert "10.1.2.3" in html and "test-agent" in html
    assert html.count('value="Disconnect on every instance"') == 2
    assert 'http-equiv="refresh" content="5"' in html


def test_connections_filter_by_user_and_by_instance(staff_client, registry_data):
    alice = registry_data["alice"]
    by_user = staff_client.get(CONNECTIONS, {"user": alice.pk}).context
    assert sorted(c["connection_id"] for c in by_user["connections"]) == ["conn-alice-a", "conn-alice-b"]
    assert by_user["user_filter"] == "alice"
    by_instance = staff_client.get(CONNECTIONS, {"instance": "inst-a"}).context
    assert sorted(c["connection_id"] for c in by_instance["connections"]) == ["conn-alice-a", "conn-bob-a"]
    assert [r["username"] for r in by_instance["per_user"]] == ["alice", "bob"]


def test_instances_page_shows_heartbeat_age_count_and_state(staff_client, registry_data):
    response = staff_client.get(INSTANCES)
    assert response.status_code == 200
    rows = {i["instance_id"]: i for i in response.context["instances"]}
    assert set(rows) == {"inst-a", "inst-b", "ghost"}
    assert rows["inst-a"]["alive"] and rows["inst-a"]["connections"] == 2 and rows["inst-a"]["heartbeat_age_s"] < 5
    assert not rows["ghost"]["alive"] and rows["ghost"]["heartbeat_age_s"] >= 119
    assert [i["instance_id"] for i in response.context["instances"]][-1] == "ghost"  # dead ones last
    assert (response.context["alive_count"], response.context["dead_count"]) == (2, 1)
    html = response.content.decode()
    assert '<tr class="dead">' in html and "inst-b" in html


def test_admin_index_links_the_operator_pages(staff_client):
    html = staff_client.get("/admin/").content.decode()
    assert f'href="{CONNECTIONS}"' in html and "Live connections" in html
    assert f'href="{INSTANCES}"' in html
    assert reverse("admin:presence_connections") == CONNECTIONS


def test_registry_outage_shows_a_message_not_a_500(staff_client, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from presence import selectors

    def down() -> None:
        raise RedisConnectionError("Error 111 connecting to 10.0.0.5:6379")

    monkeypatch.setattr(selectors, "cluster_connections", down)
    response = staff_client.get(CONNECTIONS)
    assert response.status_code == 200
    html = response.content.decode()
    assert "The connection registry is unreachable (ConnectionError)." in html
    assert "10.0.0.5" not in html


@pytest.mark.parametrize("path", [CONNECTIONS, INSTANCES])
def test_non_staff_and_anonymous_are_sent_to_the_login(db, user, path):
    anonymous = Client()
    member = Client()
    member.force_login(user)
    for client in (anonymous, member):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
        response = client.post(DISCONNECT, {"user_id": user.pk})
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")


def test_disconnect_of_unknown_user_says_so(staff_client, db):
    response = staff_client.post(DISCONNECT, {"user_id": "999999", "next": "https://evil.example/"}, follow=True)
    assert response.redirect_chain[0][0] == CONNECTIONS  # never an off-site redirect
    assert "Nobody disconnected: No such user." in response.content.decode()


# --- against real instances --------------------------------------------------------------------


@pytest.fixture
def instances(transactional_db, tmp_path):
    """Two real instances on this test run's Redis and database, so the admin pages served by
    the test client read the registry those instances write."""
    env = app_env(DATABASE_URL=database_url(), LOG_LEVEL="WARNING")
    servers = [AppServer("daphne", "adm-a", env, tmp_path), AppServer("uvicorn", "adm-b", env, tmp_path)]
    try:
        start_all(servers)
        yield servers
    finally:
        stop_all(servers)


def open_socket(stack: ExitStack, server: AppServer, user) -> tuple[ClientConnection, dict]:
    conn = stack.enter_context(
        connect(server.ws_url, additional_headers={"Authorization": f"Token {token(user)}"}, open_timeout=10)
    )
    while (frame := json.loads(conn.recv(timeout=10)))["type"] != "hello":
        pass
    return conn, frame


def close_code(conn: ClientConnection, timeout: float = 5) -> int | None:
    deadline = time.monotonic() + timeout
    try:
        while True:
            conn.recv(timeout=max(0.01, deadline - time.monotonic()))
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


def still_open(conn: ClientConnection) -> bool:
    conn.send(json.dumps({"type": "ping", "id": "p"}))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frame = json.loads(conn.recv(timeout=5))
        if frame.get("type") == "pong":
            return True
    return False


@pytest.mark.integration
def test_disconnect_action_closes_the_users_sockets_on_every_instance(instances, staff_user, user, other_user):
    a, b = instances
    with ExitStack() as stack:
        on_a, hello_a = open_socket(stack, a, user)
        on_b, hello_b = open_socket(stack, b, user)
        bystander, _ = open_socket(stack, b, other_user)

        wait_registered(redis_client.get_sync(), user.pk, 2)
        wait_registered(redis_client.get_sync(), other_user.pk, 1)
        client = Client()
        client.force_login(staff_user)
        page = client.get(CONNECTIONS, {"user": user.pk})
        assert page.status_code == 200
        listed = {(c["connection_id"], c["instance_id"]) for c in page.context["connections"]}
        assert listed == {(hello_a["connection_id"], "adm-a"), (hello_b["connection_id"], "adm-b")}

        # A member who is not staff cannot use the action.
        member = Client()
        member.force_login(other_user)
        assert member.post(DISCONNECT, {"user_id": user.pk}).status_code == 302
        assert still_open(on_a) and still_open(on_b)

        response = client.post(DISCONNECT, {"user_id": user.pk, "next": f"{CONNECTIONS}?user={user.pk}"}, follow=True)
        assert response.redirect_chain[0][0] == f"{CONNECTIONS}?user={user.pk}"
        assert f"Closing 2 connection(s) of {user.username} on every instance" in response.content.decode()
        assert close_code(on_a) == 4000
        assert close_code(on_b) == 4000
        assert still_open(bystander)

        deadline = time.monotonic() + 5
        while client.get(CONNECTIONS, {"user": user.pk}).context["connections"]:
            assert time.monotonic() < deadline, "closed sockets still listed"
            time.sleep(0.1)
