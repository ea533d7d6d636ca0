"""Presence across instances, slow consumers, and failover behind a real nginx."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from tests.integration.conftest import open_ws, start_cluster
from tests.integration.test_cluster import send_frame

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def presence_of(ws, user_id: int, timeout: float) -> dict:
    return await ws.expect(lambda f: f.get("type") == "presence" and f.get("user_id") == user_id, timeout)


async def no_presence_of(ws, user_id: int, seconds: float) -> bool:
    try:
        await presence_of(ws, user_id, seconds)
    except TimeoutError:
        return True
    return False


async def test_presence_across_instances_multi_device_and_grace(cluster, people):
    a, b = cluster.servers["a"], cluster.servers["b"]
    grace = float(cluster.env["PRESENCE_GRACE_SECONDS"])
    bob = await open_ws(b.ws_url, people["bob"])
    alice_1 = await open_ws(a.ws_url, people["alice"])
    online = await presence_of(bob, people["alice"].pk, 5)
    assert (online["status"], online["online"]) == ("online", True)
    alice_2 = await open_ws(b.ws_url, people["alice"])
    await alice_1.close()
    # One device left: still online, nothing broadcast.
    assert await no_presence_of(bob, people["alice"].pk, grace + 1.5)
    await alice_2.close()
    closed_at = time.monotonic()
    assert await no_presence_of(bob, people["alice"].pk, grace * 0.6)
    offline = await presence_of(bob, people["alice"].pk, grace + 5)
    assert time.monotonic() - closed_at >= grace * 0.9
    assert (offline["status"], offline["online"]) == ("offline", False)
    assert offline["version"] > online["version"]
    # A reconnect within the grace period broadcasts nothing at all.
    alice = await open_ws(a.ws_url, people["alice"])
    await presence_of(bob, people["alice"].pk, 5)
    await alice.close()
    await asyncio.sleep(grace / 3)
    alice = await open_ws(b.ws_url, people["alice"])
    assert await no_presence_of(bob, people["alice"].pk, grace + 1.5)
    await alice.close()
    await bob.close()


@pytest.mark.redis_topologies
async def test_sigkill_of_the_only_connection_goes_offline_even_when_the_grace_counter_dies(cluster, people):
    a, b = cluster.servers["a"], cluster.servers["b"]
    ttl = float(cluster.env["INSTANCE_TTL_SECONDS"])
    grace = float(cluster.env["PRESENCE_GRACE_SECONDS"])
    carol = await open_ws(b.ws_url, people["carol"])
    await open_ws(a.ws_url, people["bob"])  # bob's only connection, on the instance about to die
    await presence_of(carol, people["bob"].pk, 5)
    a.signal(signal.SIGKILL)
    killed = time.monotonic()
    offline = await presence_of(carol, people["bob"].pk, 2 * ttl + grace + 3)
    elapsed = time.monotonic() - killed
    assert offline["online"] is False
    assert elapsed <= 2 * ttl + grace + 1.5, elapsed
    await carol.close()


@pytest.mark.redis_topologies
async def test_grace_timer_survives_the_instance_that_started_it(cluster, people):
    """The last socket closes cleanly on instance a, which dies during the grace period:
    instance b still finishes the transition."""
    a, b = cluster.servers["a"], cluster.servers["b"]
    grace = float(cluster.env["PRESENCE_GRACE_SECONDS"])
    carol = await open_ws(b.ws_url, people["carol"])
    bob = await open_ws(a.ws_url, people["bob"])
    await presence_of(carol, people["bob"].pk, 5)
    await bob.close()
    await asyncio.sleep(0.3)
    a.signal(signal.SIGKILL)
    offline = await presence_of(carol, people["bob"].pk, grace + 5)
    assert offline["online"] is False
    await carol.close()


async def test_clients_fail_over_through_nginx_and_resume_everything(transactional_db, tmp_path, people):
    cluster = start_cluster(tmp_path, servers={"a": "daphne", "b": "uvicorn"}, nginx=True)
    try:
        lb = f"ws://127.0.0.1:{cluster.nginx.port}/ws/chat/"
        cid = str(people["conv"].id)
        bobs = [await open_ws(lb, people["bob"]) for _ in range(6)]
        instances = {ws.hello["instance_id"] for ws in bobs}
        assert instances == {"a", "b"}, "nginx should spread connections over both instances"
        alice = await open_ws(cluster.servers["b"].ws_url, people["alice"])
        await alice.request(send_frame(cid, "m0", "0"))
        cursors = [(await ws.expect_type("message.new"))["message"]["seq"] for ws in bobs]

        cluster.servers["a"].signal(signal.SIGKILL)
        for i in range(1, 4):
            await alice.request(send_frame(cid, f"m{i}", str(i)))

        resumed = []
        for ws, cursor in zip(bobs, cursors, strict=True):
            if ws.hello["instance_id"] == "b":
                bodies = [(await ws.expect_type("message.new"))["message"]["body"] for _ in range(3)]
            else:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        ws = await open_ws(lb, people["bob"])
                        break
                    except Exception:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.2)
                assert ws.hello["instance_id"] == "b"
                await ws.send({"type": "resume", "id": "r", "cursors": {cid: cursor}})
                bodies = []
                while (frame := await ws.recv())["type"] != "ack":
                    if frame["type"] == "message.new":
                        bodies.append(frame["message"]["body"])
            resumed.append(bodies)
            await ws.close()
        assert resumed == [["m1", "m2", "m3"]] * len(bobs)
        await alice.close()
    finally:
        cluster.stop()


def test_nginx_health_is_json(transactional_db, tmp_path):
    import urllib.request

    cluster = start_cluster(tmp_path, servers={"a": "uvicorn"}, nginx=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{cluster.nginx.port}/api/health", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["mode"] == "cluster" and body["instance_id"] == "a"
    finally:
        cluster.stop()
