"""Two real uvicorn instances with REDIS_CLUSTER=true on the 6-node cluster: real WebSocket
clients chat across instances in conversations spread over the shards, and delivery survives a
master SIGKILL (its replica promoted) and a slot move under traffic, with no acknowledged
message lost."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from harness.processes import AppServer, app_env, start_all, stop_all
from tests.factories import ConversationFactory
from tests.integration.conftest import FAST_TIMINGS, WS, database_url, open_ws
from tests.integration.test_cluster import ahttp
from tests.presence.test_commands import manage
from tests.test_redis_cluster import LEAST_ACL

# The connection registry's Lua scripts touch keys of several slots until they are made
# cluster-safe (hash-tagged keys, realtime/registry.py); until then every connect fails there.
REGISTRY_CLUSTER_SAFE = bool(importlib.util.find_spec("realtime")) and bool(
    importlib.util.find_spec("realtime.registry")
)

needs_registry = pytest.mark.skipif(not REGISTRY_CLUSTER_SAFE, reason="waits on the cluster-safe connection registry")

pytestmark = [pytest.mark.integration, pytest.mark.rediscluster, pytest.mark.django_db(transaction=True)]

LAYER_PREFIX = "chat:layer"


@pytest.fixture
def cluster_apps(transactional_db, tmp_path, redis_cluster):
    """Instances "a" and "b" under uvicorn; REDIS_HOST is ``localhost``, which no node announces,
    and they log in as an ACL user with the least access the README gives operators."""
    _, port = redis_cluster.startup
    for node in redis_cluster.nodes:
        with node.client() as c:
            c.execute_command("ACL", "SETUSER", "chatapp", *LEAST_ACL.split())
    env = app_env(
        CHAT_MODE="cluster",
        REDIS_CLUSTER="true",
        REDIS_HOST="localhost",
        REDIS_PORT=str(port),
        REDIS_USERNAME="chatapp",
        REDIS_PASSWORD="s3cret-pw",
        DATABASE_URL=database_url(),
        REDIS_KEY_PREFIX="chat",
        LOG_LEVEL="INFO",
        **FAST_TIMINGS,
    )
    servers = {name: AppServer("uvicorn", name, env, tmp_path) for name in ("a", "b")}
    try:
        start_all(list(servers.values()))
        yield servers
    finally:
        stop_all(list(servers.values()))


def group_shard(cid: str) -> str:
    return f"{LAYER_PREFIX}:g:c.{cid}"


@needs_registry
async def test_chat_across_instances_in_conversations_on_every_shard(cluster_apps, people, redis_cluster):
    alice_u, bob_u = people["alice"], people["bob"]
    # Conversations until every master carries at least one of them.
    convs: list[str] = []
    covered: set[int] = set()
    for _ in range(40):
        conv = await sync_to_async(ConversationFactory)(owner=alice_u, members=[bob_u])
        convs.append(str(conv.id))
        covered.add(redis_cluster.master_of_key(group_shard(str(conv.id))).port)
        if len(covered) == 3:
            break
    assert len(covered) == 3
    alice = await open_ws(cluster_apps["a"].ws_url, alice_u)
    bob = await open_ws(cluster_apps["b"].ws_url, bob_u)
    try:
        for i, cid in enumerate(convs):
            ack = await alice.request(
                {"type": "message.send", "id": f"m{i}", "conversation_id": cid, "body": f"hi {i}"}
            )
            assert ack["type"] == "ack", ack
            got = await bob.expect(
                lambda f, cid=cid: f.get("type") == "message.new" and f["message"]["conversation_id"] == cid
            )
            assert got["message"] == ack["message"]
        cid = convs[-1]
        await bob.request({"type": "typing", "id": "t", "conversation_id": cid, "state": "start"})
        typing = await alice.expect_type("typing")
        assert (typing["user_id"], typing["conversation_id"]) == (bob_u.pk, cid)
        await bob.request({"type": "read", "id": "r", "conversation_id": cid, "seq": 1})
        read = await alice.expect_type("read")
        assert (read["user_id"], read["seq"]) == (bob_u.pk, 1)

        # The operator's view of the registry, read from the cluster by a management command.
        env = dict(cluster_apps["a"].env, INSTANCE_ID="ops")
        result = await asyncio.to_thread(manage, env, "chat_stats", "--json")
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
        assert stats["connections"] == 2 and stats["users_online"] == 2
        assert {i["instance_id"]: i["alive"] for i in stats["instances"]} == {"a": True, "b": True}
    finally:
        await alice.close()
        await bob.close()


class Reader:
    """Bob's side: keeps every message.new it sees, reconnecting and resuming if the server closes
    the socket (1011 when the instance lost its fan-out path)."""

    def __init__(self, url: str, user: Any, cid: str) -> None:
        self.url, self.user, self.cid = url, user, cid
        self.seqs: set[int] = set()
        self.reconnects = 0
        self.ws: WS | None = None

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                if self.ws is None:
                    self.ws = await open_ws(self.url, self.user)
                    last = max(self.seqs, default=0)
                    await self.ws.send({"type": "resume", "id": "resume", "cursors": {self.cid: last}})
                frame = await self.ws.recv(timeout=max(0.05, min(1.0, until - time.monotonic())))
                if frame.get("type") == "message.new" and frame["message"]["conversation_id"] == self.cid:
                    self.seqs.add(frame["message"]["seq"])
            except TimeoutError:
                continue
            except (ConnectionClosed, OSError):
                self.ws = None
                self.reconnects += 1
                await asyncio.sleep(0.2)


def _fault(redis_cluster, kind: str, shard: str):
    """A blocking callable applying the fault to the master that carries ``shard``."""
    owner = redis_cluster.master_of_key(shard)
    if kind == "sigkill":
        return lambda: redis_cluster.kill_master(owner)
    slot = redis_cluster.keyslot(shard)
    target = next(m for m in redis_cluster.masters() if m.port != owner.port)
    return lambda: redis_cluster.move_slot(slot, target)


@needs_registry
@pytest.mark.parametrize("fault", ["sigkill", "reshard"])
async def test_delivery_survives_a_master_sigkill_or_a_slot_move(cluster_apps, people, redis_cluster, fault):
    """The conversation's shard channel loses its master (SIGKILL, replica promoted) or moves to
    another master under traffic: no acknowledged message is lost, chat is back within 15 s."""
    cid = str(people["conv"].id)
    apply_fault = _fault(redis_cluster, fault, group_shard(cid))
    alice = await open_ws(cluster_apps["a"].ws_url, people["alice"])
    reader = Reader(cluster_apps["b"].ws_url, people["bob"], cid)
    acked: set[int] = set()
    deadline = time.monotonic() + 40
    reading = asyncio.ensure_future(reader.run(deadline))
    try:
        await asyncio.sleep(0.5)  # bob connected and subscribed
        ack = await alice.request({"type": "message.send", "id": "m0", "conversation_id": cid, "body": "before"})
        acked.add(ack["message"]["seq"])

        kill = asyncio.ensure_future(asyncio.to_thread(apply_fault))
        killed_at = time.monotonic()
        i = 0
        after_failover: set[int] = set()
        first_after: float | None = None
        # Alice keeps sending; a send may be refused (503) while the cluster fails over, and
        # sends go on while the slot migrates.
        while time.monotonic() - killed_at < 20:
            i += 1
            try:
                reply = await alice.request(
                    {"type": "message.send", "id": f"m{i}", "conversation_id": cid, "body": f"m{i}"}, timeout=5
                )
            except (ConnectionClosed, TimeoutError):
                await alice.close()
                alice = await open_ws(cluster_apps["a"].ws_url, people["alice"])
                continue
            if reply["type"] == "ack":
                acked.add(reply["message"]["seq"])
                if kill.done():
                    after_failover.add(reply["message"]["seq"])
            if first_after is None and after_failover & reader.seqs:
                first_after = time.monotonic()
            if first_after is not None and time.monotonic() - first_after > 1:
                break
            await asyncio.sleep(0.2)
        await kill
        assert first_after is not None, f"no message delivered after the {fault}"
        assert first_after - killed_at < 15, f"chat not back within 15 s of the {fault}"
        while not acked <= reader.seqs and time.monotonic() < deadline - 1:
            await asyncio.sleep(0.1)
        assert acked <= reader.seqs, f"acknowledged but never delivered: {sorted(acked - reader.seqs)}"
    finally:
        reading.cancel()
        try:
            await reading
        except BaseException:
            pass
        await alice.close()
        if reader.ws is not None:
            await reader.ws.close()


async def test_health_of_an_instance_on_the_cluster(cluster_apps, redis_cluster):
    """``redis`` carries the cluster state and every master; ``channel_layer`` is a probe round
    trip through sharded pub/sub; a cluster that lost slots makes the instance unavailable."""
    url = f"{cluster_apps['a'].url}/api/health"
    status, body = await ahttp("GET", url)
    assert status == 200, body
    assert body["services"]["redis"]["status"] == "ok"
    assert body["services"]["redis"]["cluster_state"] == "ok"
    assert len(body["services"]["redis"]["masters"]) == 3
    assert body["services"]["channel_layer"]["status"] == "ok"

    await asyncio.to_thread(redis_cluster.kill_shard, redis_cluster.masters()[0])
    status, body = await ahttp("GET", url)
    assert status == 503, body
    assert body["status"] == "unavailable"
    assert body["services"]["redis"]["status"] == "down"
    assert body["services"]["redis"]["cluster_state"] == "fail"
