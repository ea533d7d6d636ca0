"""Two real instances (daphne and uvicorn) on one Redis and one PostgreSQL, real clients."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from realtime.registry import instance_conns_key, instances_key, user_conns_key
from tests.integration.conftest import open_ws

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def http(method: str, url: str, token: str | None = None, body: Any = None, timeout: float = 5) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


async def ahttp(*args: Any, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(http, *args, **kw)


def send_frame(cid: str, body: str, rid: str, client_msg_id: str | None = None) -> dict[str, Any]:
    frame = {"type": "message.send", "id": rid, "conversation_id": cid, "body": body}
    if client_msg_id:
        frame["client_msg_id"] = client_msg_id
    return frame


async def test_message_typing_and_read_cross_instances(cluster, people):
    a, b = cluster.servers["a"], cluster.servers["b"]
    cid = str(people["conv"].id)
    alice = await open_ws(a.ws_url, people["alice"])
    bob = await open_ws(b.ws_url, people["bob"])
    assert alice.hello["instance_id"] == "a" and bob.hello["instance_id"] == "b"

    ack = await alice.request(send_frame(cid, "hello bob", "1"))
    assert ack["type"] == "ack"
    got = await bob.expect_type("message.new")
    assert got["message"] == ack["message"]

    await bob.request({"type": "typing", "id": "t", "conversation_id": cid, "state": "start"})
    typing = await alice.expect_type("typing")
    assert (typing["user_id"], typing["state"]) == (people["bob"].pk, "start")

    await bob.request({"type": "read", "id": "r", "conversation_id": cid, "seq": 1})
    read = await alice.expect_type("read")
    assert (read["user_id"], read["seq"]) == (people["bob"].pk, 1)

    # Authorization on the real servers too.
    eve = await open_ws(b.ws_url, people["eve"])
    err = await eve.request(send_frame(cid, "let me in", "e"))
    assert (err["status"], err["code"]) == (403, "not_participant")
    err = await eve.request(send_frame("7f0c1c8e-0000-4000-8000-000000000000", "x", "e2"))
    assert (err["status"], err["code"]) == (404, "not_found")
    for ws in (alice, bob, eve):
        await ws.close()


@pytest.mark.redis_topologies
async def test_http_send_reaches_sockets_on_both_instances(cluster, people):
    cid = str(people["conv"].id)
    bob = await open_ws(cluster.servers["a"].ws_url, people["bob"])
    carol = await open_ws(cluster.servers["b"].ws_url, people["carol"])
    status, msg = await ahttp(
        "POST", f"{cluster.servers['b'].url}/api/conversations/{cid}/messages/", people["alice"].token, {"body": "hi"}
    )
    assert status == 201
    assert (await bob.expect_type("message.new"))["message"] == msg
    assert (await carol.expect_type("message.new"))["message"] == msg
    await bob.close()
    await carol.close()


async def test_idempotent_send_is_broadcast_once_across_instances(cluster, people):
    cid = str(people["conv"].id)
    alice = await open_ws(cluster.servers["a"].ws_url, people["alice"])
    bob = await open_ws(cluster.servers["b"].ws_url, people["bob"])
    first = await alice.request(send_frame(cid, "once", "1", client_msg_id="k1"))
    again = await alice.request(send_frame(cid, "once", "2", client_msg_id="k1"))
    assert again["message"]["id"] == first["message"]["id"]
    # The same client_msg_id through the other instance, over HTTP.
    status, body = await ahttp(
        "POST",
        f"{cluster.servers['b'].url}/api/conversations/{cid}/messages/",
        people["alice"].token,
        {"body": "once", "client_msg_id": "k1"},
    )
    assert status == 200 and body["id"] == first["message"]["id"]
    await bob.expect_type("message.new")
    with pytest.raises(TimeoutError):
        await bob.expect_type("message.new", timeout=1.0)
    await alice.close()
    await bob.close()


@pytest.mark.redis_topologies
async def test_resume_after_reconnecting_to_the_other_instance(cluster, people):
    cid = str(people["conv"].id)
    alice = await open_ws(cluster.servers["a"].ws_url, people["alice"])
    bob = await open_ws(cluster.servers["a"].ws_url, people["bob"])
    await alice.request(send_frame(cid, "m1", "1"))
    last_seen = (await bob.expect_type("message.new"))["message"]["seq"]
    await bob.close()
    for i in range(2, 6):
        await alice.request(send_frame(cid, f"m{i}", str(i)))
    bob = await open_ws(cluster.servers["b"].ws_url, people["bob"])
    await bob.send({"type": "resume", "id": "r", "cursors": {cid: last_seen}})
    bodies = []
    while True:
        frame = await bob.recv()
        if frame.get("type") == "ack":
            break
        if frame.get("type") == "message.new":
            bodies.append(frame["message"]["body"])
    assert bodies == ["m2", "m3", "m4", "m5"]
    await alice.close()
    await bob.close()


async def test_foreign_origin_gets_http_403_and_missing_origin_needs_credentials(cluster, people):
    for server in cluster.servers.values():
        with pytest.raises(InvalidStatus) as info:
            await open_ws(server.ws_url, people["alice"], headers={"Origin": "https://evil.example"})
        assert info.value.response.status_code == 403
        anonymous = await open_ws(server.ws_url, hello=False)
        assert await anonymous.closed_code(5) == 4401


async def test_a_handshake_on_a_path_with_no_socket_is_refused_never_a_500(cluster, people):
    """uvicorn answers 404 with the contract's body; daphne, which cannot answer a handshake with
    a response, closes it before accepting (its HTTP 403)."""
    for name, want in (("a", 403), ("b", 404)):
        url = cluster.servers[name].ws_url.replace("/ws/chat/", "/ws/elsewhere/")
        with pytest.raises(InvalidStatus) as info:
            await open_ws(url, people["alice"])
        assert info.value.response.status_code == want, name
        if want == 404:
            assert json.loads(info.value.response.body)["code"] == "not_found"
        # The instance is unharmed: the real path still works.
        ws = await open_ws(cluster.servers[name].ws_url, people["alice"])
        await ws.close()


@pytest.mark.parametrize("instance", ["a", "b"])
async def test_frame_over_limit_closes_1009(cluster, people, instance):
    ws = await open_ws(cluster.servers[instance].ws_url, people["alice"])
    await ws.send({"type": "message.send", "conversation_id": str(people["conv"].id), "body": "x" * 70000})
    assert await ws.closed_code(5) == 1009


@pytest.mark.redis_topologies
async def test_operator_disconnect_closes_sockets_on_every_instance(cluster, people, staff_token):
    bob_a = await open_ws(cluster.servers["a"].ws_url, people["bob"])
    bob_b = await open_ws(cluster.servers["b"].ws_url, people["bob"])
    status, body = await ahttp("GET", f"{cluster.servers['a'].url}/api/me/connections/", people["bob"].token)
    assert status == 200
    assert {c["instance_id"] for c in body["results"]} == {"a", "b"}
    status, body = await ahttp("GET", f"{cluster.servers['b'].url}/api/admin/connections/", staff_token)
    assert status == 200 and body["total"] == 2 and body["by_instance"] == {"a": 1, "b": 1}
    status, _ = await ahttp("GET", f"{cluster.servers['b'].url}/api/admin/connections/", people["bob"].token)
    assert status == 403
    status, body = await ahttp(
        "POST", f"{cluster.servers['a'].url}/api/admin/users/{people['bob'].pk}/disconnect/", staff_token
    )
    assert status == 202 and body == {"closed": 2}
    assert await bob_a.closed_code(5) == 4000
    assert await bob_b.closed_code(5) == 4000


@pytest.fixture
def staff_token(transactional_db):
    from tests.conftest import operator
    from tests.factories import UserFactory
    from tests.integration.conftest import token

    return token(operator(UserFactory(is_staff=True)))


def registry_conns(cluster, instance_id: str) -> set[str]:
    return set(cluster.redis_client().smembers(instance_conns_key(instance_id)))


@pytest.mark.redis_topologies
async def test_sigkill_instance_is_reaped_and_clients_resume_on_the_survivor(cluster, people):
    cid = str(people["conv"].id)
    alice = await open_ws(cluster.servers["b"].ws_url, people["alice"])
    bob = await open_ws(cluster.servers["a"].ws_url, people["bob"])
    await alice.request(send_frame(cid, "before", "0"))
    seen = (await bob.expect_type("message.new"))["message"]["seq"]
    assert registry_conns(cluster, "a")

    cluster.servers["a"].signal(signal.SIGKILL)
    killed_at = time.monotonic()
    for i in range(3):
        await alice.request(send_frame(cid, f"while-dead-{i}", f"d{i}"))

    ttl = float(cluster.env["INSTANCE_TTL_SECONDS"])
    while registry_conns(cluster, "a") or cluster.redis_client().zscore(instances_key(), "a") is not None:
        assert time.monotonic() - killed_at < 2 * ttl + 1, "dead instance not reaped within 2 x TTL"
        await asyncio.sleep(0.2)
    bob_conns = cluster.redis_client().zrange(user_conns_key(people["bob"].pk), 0, -1)
    assert bob_conns == []

    bob = await open_ws(cluster.servers["b"].ws_url, people["bob"])
    await bob.send({"type": "resume", "id": "r", "cursors": {cid: seen}})
    bodies = []
    while (frame := await bob.recv())["type"] != "ack":
        if frame["type"] == "message.new":
            bodies.append(frame["message"]["body"])
    assert bodies == ["while-dead-0", "while-dead-1", "while-dead-2"]
    await alice.close()
    await bob.close()


@pytest.mark.redis_topologies
@pytest.mark.parametrize("instance", ["a", "b"])
async def test_sigterm_closes_with_1012_deregisters_and_exits(cluster, people, instance):
    server = cluster.servers[instance]
    ws = await open_ws(server.ws_url, people["alice"])
    assert registry_conns(cluster, instance)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert await ws.closed_code(10) == 1012
    assert server.wait(10) is not None
    assert time.monotonic() - started < 10
    assert registry_conns(cluster, instance) == set()
    assert cluster.redis_client().zscore(instances_key(), instance) is None


async def test_redis_restarted_empty_recovers_delivery_and_registry(cluster, people):
    await _redis_restart_recovers(cluster, people)


async def test_redis_restart_with_the_core_layer_re_adds_groups(transactional_db, tmp_path, people):
    from tests.integration.conftest import start_cluster

    cluster = start_cluster(tmp_path, servers={"a": "daphne", "b": "uvicorn"}, CHANNEL_LAYER_BACKEND="core")
    try:
        # The same socket is fed again: the hub re-added the groups Redis forgot.
        await _redis_restart_recovers(cluster, people, require_live=True)
    finally:
        cluster.stop()


async def _redis_restart_recovers(cluster, people, require_live: bool = False):
    cid = str(people["conv"].id)
    alice = await open_ws(cluster.servers["a"].ws_url, people["alice"])
    bob = await open_ws(cluster.servers["b"].ws_url, people["bob"])
    await alice.request(send_frame(cid, "before", "0"))
    seen = (await bob.expect_type("message.new"))["message"]["seq"]

    cluster.redis.restart_empty()
    # Registry entries come back by themselves.
    deadline = time.monotonic() + 10
    while not (registry_conns(cluster, "a") and registry_conns(cluster, "b")):
        assert time.monotonic() < deadline, "registry not rebuilt after Redis restart"
        await asyncio.sleep(0.2)

    # Sockets are either fed or closed (1011) so the client resumes: never open and deaf.
    async def live_or_reconnect(ws, url, user, cursor):
        try:
            frame = await ws.expect_type("message.new", timeout=8)
            return ws, [frame["message"]["body"]]
        except Exception:
            if require_live:
                raise
            fresh = await open_ws(url, user)
            await fresh.send({"type": "resume", "id": "r", "cursors": {cid: cursor}})
            bodies = []
            while (frame := await fresh.recv())["type"] != "ack":
                if frame["type"] == "message.new":
                    bodies.append(frame["message"]["body"])
            return fresh, bodies

    deadline = time.monotonic() + 15
    while True:
        alice_fresh = await open_ws(cluster.servers["a"].ws_url, people["alice"])
        ack = await alice_fresh.request(send_frame(cid, "after", "1"))
        await alice_fresh.close()
        if ack["type"] == "ack":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    bob, bodies = await live_or_reconnect(bob, cluster.servers["b"].ws_url, people["bob"], seen)
    assert bodies[-1] == "after"
    await alice.close()
    await bob.close()


async def test_frozen_redis_leaves_no_socket_open_and_deaf(cluster, people):
    cid = str(people["conv"].id)
    bob = await open_ws(cluster.servers["b"].ws_url, people["bob"])
    carol = await open_ws(cluster.servers["a"].ws_url, people["carol"])
    cluster.redis.freeze()
    try:
        # Within the watchdog window every socket is closed with 1011 (or fed, which cannot
        # happen with the only Redis frozen).
        assert await bob.closed_code(15) in (1011, 1012)
        assert await carol.closed_code(15) in (1011, 1012)
        status, body = await ahttp("GET", f"{cluster.servers['a'].url}/api/health", timeout=5)
        assert status == 503 and body["status"] == "unavailable"
    finally:
        cluster.redis.thaw()
    # Once Redis answers again the instances serve and deliver again.
    deadline = time.monotonic() + 20
    while True:
        try:
            bob = await open_ws(cluster.servers["b"].ws_url, people["bob"])
            alice = await open_ws(cluster.servers["a"].ws_url, people["alice"])
            ack = await alice.request(send_frame(cid, "thawed", "1"))
            if ack["type"] == "ack":
                assert (await bob.expect_type("message.new", 10))["message"]["body"] == "thawed"
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
    await alice.close()
    await bob.close()
