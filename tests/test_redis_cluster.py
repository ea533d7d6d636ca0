"""REDIS_CLUSTER on a real 6-node cluster: the clients speak the cluster protocol through a startup
name the cluster does not announce, an ACL user with the least access works, the Redis users
outside the registry (tickets, send rate) work and fail as 503, and health tells a cluster that
lost slots from a healthy one."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio.cluster as aiocluster
import redis.cluster

from channels_redis_cluster import RedisClusterChannelLayer
from chat import ratelimit, services
from core import redis_client
from core.errors import RateLimited
from health import checks
from tests.conftest import assert_error

pytestmark = pytest.mark.rediscluster

# The access string the README gives operators (key prefix and channel pattern "chat").
LEAST_ACL = (
    "on >s3cret-pw resetkeys ~chat:* resetchannels &chat:* nocommands +@read +@write +@pubsub "
    "+@scripting +@connection +@transaction +@keyspace -@dangerous +cluster|slots +cluster|shards +cluster|info"
)


@pytest.fixture
def cluster_settings(settings, redis_cluster):
    """The process's Redis settings pointed at the cluster through ``localhost``: the nodes
    announce 127.0.0.1, so the startup name is not one of the node addresses."""
    _, port = redis_cluster.startup
    settings.REDIS = {**settings.REDIS, "host": "localhost", "port": port, "cluster": True, "db": 0}
    redis_client.reset_clients()
    yield redis_cluster
    redis_client.reset_clients()


def keys_per_master(cluster) -> dict[int, int]:
    out = {}
    for node in cluster.masters():
        with node.client() as c:
            out[node.port] = c.dbsize()
    return out


def test_sync_client_spreads_keys_over_every_master(cluster_settings):
    client = redis_client.get_sync()
    assert isinstance(client, redis.cluster.RedisCluster)
    for i in range(30):
        client.set(redis_client.key("t", i), i, ex=60)
    assert [int(client.get(redis_client.key("t", i))) for i in range(30)] == list(range(30))
    assert all(n > 0 for n in keys_per_master(cluster_settings).values())
    # The nodes the client talks to are the announced addresses, not the startup name.
    assert {node.host for node in client.get_nodes()} == {"127.0.0.1"}


async def test_async_client_is_a_cluster_client_per_loop(cluster_settings):
    client = redis_client.get_async()
    assert isinstance(client, aiocluster.RedisCluster)
    assert redis_client.get_async() is client
    for i in range(30):
        await client.set(redis_client.key("a", i), i, ex=60)
    assert await client.get(redis_client.key("a", 29)) == "29"
    assert all(n > 0 for n in keys_per_master(cluster_settings).values())
    await client.aclose()


def test_tickets_and_send_rate_on_the_cluster(cluster_settings, settings):
    ticket = services.ws_ticket_issue(user_id=7)
    assert services.ws_ticket_consume(ticket=ticket) == 7
    assert services.ws_ticket_consume(ticket=ticket) is None  # single use
    settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST = 0.01, 2
    ratelimit.check_send_rate(user_id=7)
    ratelimit.check_send_rate(user_id=7)
    with pytest.raises(RateLimited):
        ratelimit.check_send_rate(user_id=7)


def test_send_on_a_cluster_that_lost_the_buckets_slot_is_503(cluster_settings, api, user, conversation):
    """The send's rate bucket lives on a shard that is gone: 503 ``unavailable`` with
    ``retry_after``, never a 500, and nothing stored."""
    bucket = redis_client.key("rl", "send", user.pk)
    redis_client.get_sync().ping()
    cluster_settings.kill_shard(cluster_settings.master_of_key(bucket))
    response = api.post(f"/api/conversations/{conversation.id}/messages/", {"body": "hi"}, format="json")
    body = assert_error(response, 503, "unavailable")
    assert body["retry_after"] and response.headers["Retry-After"]
    assert not conversation.messages.exists()


@pytest.fixture
def acl_user(redis_cluster):
    """An ACL user with the least access the product needs, on every node (ACLs are per node)."""
    for node in redis_cluster.nodes:
        with node.client() as c:
            c.execute_command("ACL", "SETUSER", "chatapp", *LEAST_ACL.split())
    yield "chatapp", "s3cret-pw"
    for node in redis_cluster.alive_nodes():
        with node.client() as c:
            c.execute_command("ACL", "DELUSER", "chatapp")


async def test_acl_user_with_least_access_runs_clients_and_layer(cluster_settings, settings, acl_user):
    username, password = acl_user
    settings.REDIS = {**settings.REDIS, "username": username, "password": password}
    redis_client.reset_clients()
    sync = redis_client.get_sync()
    sync.set(redis_client.key("ticket", "x"), 1, ex=10)
    assert sync.getdel(redis_client.key("ticket", "x")) == "1"
    ratelimit.check_send_rate(user_id=1)  # EVAL on the cluster
    with pytest.raises(redis.exceptions.NoPermissionError):
        sync.set("elsewhere", 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        sync.flushall()
    result = await checks.timed("redis", checks.check_redis)
    assert result["status"] == "ok", result
    await redis_client.get_async().aclose()

    _, port = cluster_settings.startup
    layer = RedisClusterChannelLayer(
        hosts=[{"host": "localhost", "port": port}],
        prefix="chat:layer",
        cluster_kwargs={"username": username, "password": password},
    )
    try:
        ch = await layer.new_channel()
        await layer.group_add("c.1", ch)
        await layer.group_send("c.1", {"type": "hi"})
        assert await layer.receive(ch) == {"type": "hi"}
    finally:
        await layer.flush()


async def test_wrong_password_fails_as_unavailable(cluster_settings, settings, acl_user):
    settings.REDIS = {**settings.REDIS, "username": acl_user[0], "password": "wrong"}
    redis_client.reset_clients()
    with pytest.raises(redis_client.UNAVAILABLE_ERRORS):
        redis_client.get_sync().ping()


async def test_health_reports_cluster_state_and_every_master(cluster_settings):
    result = await checks.timed("redis", checks.check_redis)
    assert result["status"] == "ok", result
    assert result["cluster_state"] == "ok"
    masters = result["masters"]
    assert {int(name.rsplit(":", 1)[1]) for name in masters} == {m.port for m in cluster_settings.masters()}
    assert all(m["status"] == "ok" and m["cluster_state"] == "ok" and m["latency_ms"] >= 0 for m in masters.values())
    await redis_client.get_async().aclose()


async def test_health_is_down_on_a_cluster_node_without_redis_cluster(settings, redis_cluster):
    """REDIS_HOST at a cluster node with REDIS_CLUSTER off: PING and even the channel layer's
    probe pass on that node, but every key of another node's slots fails (MOVED), so no socket
    could get its hello. Health says so instead of ok."""
    _, port = redis_cluster.startup
    settings.REDIS = {**settings.REDIS, "host": "127.0.0.1", "port": port, "cluster": False, "db": 0}
    redis_client.reset_clients()
    try:
        result = await checks.timed("redis", checks.check_redis)
        assert result["status"] == "down", result
        assert result["error"] == "cluster_node_without_redis_cluster"
        assert "REDIS_CLUSTER" in result["detail"]
        await redis_client.get_async().aclose()
    finally:
        redis_client.reset_clients()


@pytest.mark.parametrize("user", ["default", "denied CLUSTER"])
async def test_health_of_one_redis_is_ok_without_cluster_commands(settings, redis_server, user):
    """One Redis (cluster support disabled) stays ok, also for an ACL user denied CLUSTER INFO."""
    admin = redis.Redis(host="127.0.0.1", port=redis_server.port)
    if user != "default":
        admin.execute_command("ACL", "SETUSER", "plain", "on", ">pw", "~*", "&*", "+@all", "-cluster")
        settings.REDIS = {**settings.REDIS, "username": "plain", "password": "pw"}
    redis_client.reset_clients()
    try:
        result = await checks.timed("redis", checks.check_redis)
        assert result["status"] == "ok", result
        await redis_client.get_async().aclose()
    finally:
        redis_client.reset_clients()
        admin.execute_command("ACL", "DELUSER", "plain")
        admin.close()


async def test_health_is_down_when_the_cluster_lost_slots(cluster_settings):
    assert (await checks.timed("redis", checks.check_redis))["status"] == "ok"
    victim = cluster_settings.masters()[0]
    cluster_settings.kill_shard(victim)
    result = await checks.timed("redis", checks.check_redis)
    assert result["status"] == "down", result
    assert result["cluster_state"] == "fail"
    assert result["masters"][f"127.0.0.1:{victim.port}"]["status"] == "down"
    # Survivors answer, and say the cluster has failed.
    survivors = [m for name, m in result["masters"].items() if not name.endswith(f":{victim.port}")]
    assert survivors and all(m["status"] == "ok" and m["cluster_state"] == "fail" for m in survivors)
    await redis_client.get_async().aclose()


async def test_health_shows_a_hung_master_down_then_its_promoted_replica(cluster_settings):
    assert (await checks.timed("redis", checks.check_redis))["status"] == "ok"
    startup_port = cluster_settings.startup[1]
    victim = next(m for m in cluster_settings.masters() if m.port != startup_port)
    promoted = cluster_settings.freeze_master(victim)
    result = await checks.timed("redis", checks.check_redis)
    # The client still had the hung master in its map: it answers nothing within the check.
    assert result["status"] == "down", result
    assert result["masters"][f"127.0.0.1:{victim.port}"] == {
        "status": "down",
        "error": "timeout",
        "latency_ms": result["masters"][f"127.0.0.1:{victim.port}"]["latency_ms"],
    }
    # The client reads the slot map again in the background (a round trip that may first try the
    # hung node and wait out its socket timeout); on a loaded machine that can take a while.
    deadline = time.monotonic() + 20
    while (result := await checks.timed("redis", checks.check_redis))["status"] != "ok":
        assert time.monotonic() < deadline, result
        await asyncio.sleep(0.2)
    assert f"127.0.0.1:{promoted.port}" in result["masters"]
    assert f"127.0.0.1:{victim.port}" not in result["masters"]
    await redis_client.get_async().aclose()


@pytest.fixture(scope="module")
def tls_cluster():
    """A second cluster speaking TLS only (clients, bus and replication), with its own CA."""
    from harness.redis_cluster import RedisCluster

    cluster = RedisCluster(tls=True).start()
    yield cluster
    cluster.stop()


async def test_tls_cluster_with_a_private_ca(settings, tls_cluster):
    """REDIS_SSL on a cluster: certificates verified against the CA for every node the cluster
    announces, for the sync and asyncio clients, health and the sharded pub/sub layer."""
    ca = tls_cluster.tls["ca.crt"]
    _, port = tls_cluster.startup
    settings.REDIS = {**settings.REDIS, "host": "localhost", "port": port, "cluster": True, "db": 0, "ssl": True}
    settings.REDIS["ssl_ca_certs"] = None
    redis_client.reset_clients()
    with pytest.raises(redis_client.UNAVAILABLE_ERRORS):
        redis_client.get_sync().ping()  # the system store does not know this CA

    settings.REDIS["ssl_ca_certs"] = ca
    redis_client.reset_clients()
    try:
        sync = redis_client.get_sync()
        for i in range(20):
            sync.set(redis_client.key("tls", i), i, ex=30)
        assert sync.get(redis_client.key("tls", 19)) == "19"
        assert len({node.name for node in sync.get_primaries()}) == 3
        result = await checks.timed("redis", checks.check_redis)
        assert result["status"] == "ok" and len(result["masters"]) == 3, result
        await redis_client.get_async().aclose()
    finally:
        redis_client.reset_clients()

    layer = RedisClusterChannelLayer(
        hosts=[f"rediss://localhost:{port}"], prefix="chat:layer", cluster_kwargs={"ssl_ca_certs": ca}
    )
    try:
        ch = await layer.new_channel()
        for group in ("c.1", "c.2", "c.3", "c.4"):
            await layer.group_add(group, ch)
        assert len(layer._layer().nodes) > 1  # pub/sub on several masters, each over TLS
        for group in ("c.1", "c.2", "c.3", "c.4"):
            await layer.group_send(group, {"type": "hi", "g": group})
            assert await layer.receive(ch) == {"type": "hi", "g": group}
    finally:
        await layer.flush()


async def test_guarded_cache_pipelines_span_every_master(cluster_settings):
    """The cache's pipelined scripts run one slot each, however many masters the facts are on."""
    from core import guarded_cache

    items = [(f"c:{i}", "seq") for i in range(12)]
    assert len({cluster_settings.master_of_key(guarded_cache.keys(t, n)[0]).port for t, n in items}) == 3
    guarded_cache.raise_to_sync([(t, n, 5) for t, n in items])
    await guarded_cache.raise_to([(t, n, 3) for t, n in items])  # lower: changes nothing
    assert await guarded_cache.read_many(items) == ["5"] * 12
    seen = await guarded_cache.read("u:1", "auth")
    guarded_cache.invalidate_many_sync([("u:1", "auth"), *items])
    assert await guarded_cache.read_many(items) == [None] * 12
    assert not await guarded_cache.fill("u:1", "auth", "stale", seen)  # invalidated since read
    await redis_client.get_async().aclose()
