"""/metrics on real instances: the counters move when a message crosses instances, and the
settings guard refuses scrapes from outside the allowed networks without the bearer token."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import AppServer, app_env, start_all, stop_all, wait_registered
from tests.factories import ConversationFactory, UserFactory
from tests.health.conftest import get
from tests.integration.conftest import open_ws, start_cluster, token

# One database mode for the whole module: pytest-django runs tests grouped by mode, which would
# otherwise split the module and start its servers twice.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

METRICS_TOKEN = "scrape-Xk2-token"


@pytest.fixture(scope="module")
def servers(django_db_setup, tmp_path_factory):
    """Instances "a" (daphne) and "b" (uvicorn) of one cluster, plus two single-mode instances
    whose metrics only the 10.0.0.0/8 network may scrape (one also accepts a bearer token)."""
    work = tmp_path_factory.mktemp("metrics")
    cluster = start_cluster(work, servers={})
    guarded = {
        "closed": AppServer(
            "daphne",
            "m-closed",
            app_env(
                CHAT_MODE="single",
                DATABASE_URL=f"sqlite:///{work / 'c.sqlite3'}",
                METRICS_ALLOWED_NETWORKS="10.0.0.0/8",
            ),
            work,
        ),
        "token": AppServer(
            "uvicorn",
            "m-token",
            app_env(
                CHAT_MODE="single",
                DATABASE_URL=f"sqlite:///{work / 't.sqlite3'}",
                METRICS_ALLOWED_NETWORKS="10.0.0.0/8",
                METRICS_TOKEN=METRICS_TOKEN,
            ),
            work,
        ),
    }
    cluster.servers.update(
        a=AppServer("daphne", "a", cluster.env, work), b=AppServer("uvicorn", "b", cluster.env, work)
    )
    try:
        start_all([*cluster.servers.values(), *guarded.values()])
        yield {**cluster.servers, **guarded, "redis": cluster.redis_client()}
    finally:
        stop_all([*cluster.servers.values(), *guarded.values()])
        cluster.redis.stop()


def scrape(server: AppServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = get(server, "/metrics")
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def people(transactional_db):
    alice, bob = UserFactory(), UserFactory()
    conv = ConversationFactory(owner=alice, members=[bob])
    for user in (alice, bob):
        user.token = token(user)
    return {"alice": alice, "bob": bob, "conv": conv}


async def test_message_across_instances_moves_counters_on_both(servers, people):
    a, b = servers["a"], servers["b"]
    alice = await open_ws(a.ws_url, people["alice"])
    bob = await open_ws(b.ws_url, people["bob"])
    for user in (people["alice"], people["bob"]):
        await asyncio.to_thread(wait_registered, servers["redis"], user.pk, 1)
    before_a, before_b = await asyncio.to_thread(scrape, a), await asyncio.to_thread(scrape, b)

    ack = await alice.request(
        {"type": "message.send", "id": "1", "conversation_id": str(people["conv"].id), "body": "counted"}
    )
    assert ack["type"] == "ack"
    assert (await bob.expect_type("message.new"))["message"]["id"] == ack["message"]["id"]
    after_a, after_b = await asyncio.to_thread(scrape, a), await asyncio.to_thread(scrape, b)

    def delta(before: dict, after: dict, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # The sender's instance persisted it and took the frame in.
    assert delta(before_a, after_a, "chat_messages_persisted_total") == 1
    assert delta(before_a, after_a, "chat_frames_in_total", type="message.send") == 1
    assert delta(before_a, after_a, "chat_frames_out_total", type="ack") >= 1
    # The receiver's instance persisted nothing, delivered it and measured the fan-out latency.
    assert delta(before_b, after_b, "chat_messages_persisted_total") == 0
    assert delta(before_b, after_b, "chat_frames_out_total", type="message.new") == 1
    assert delta(before_b, after_b, "chat_fanout_latency_seconds_count") == 1
    latency = delta(before_b, after_b, "chat_fanout_latency_seconds_sum")
    assert 0 <= latency < 5
    assert delta(before_b, after_b, "chat_fanout_latency_seconds_bucket", le="+Inf") == 1
    # One socket on each instance, each counted by its own instance.
    assert value(after_a, "chat_connections") == 1 and value(after_b, "chat_connections") == 1

    await bob.close()
    deadline = time.monotonic() + 5
    while True:
        now_b = await asyncio.to_thread(scrape, b)
        if delta(after_b, now_b, "chat_disconnects_total", code="1000") == 1:
            break
        assert time.monotonic() < deadline, "disconnect not counted"
        await asyncio.sleep(0.1)
    assert value(now_b, "chat_connections") == 0
    await alice.close()


def test_default_networks_let_loopback_scrape(servers):
    samples = scrape(servers["a"])
    assert ("chat_connections", ()) in samples


def test_guard_refuses_scrapes_outside_allowed_networks_without_token(servers):
    for server, headers in [
        (servers["closed"], {}),
        (servers["closed"], {"Authorization": "Bearer anything"}),
        (servers["token"], {}),
        (servers["token"], {"Authorization": "Bearer wrong-token"}),
        (servers["token"], {"Authorization": f"Token {METRICS_TOKEN}"}),
    ]:
        reply = get(server, "/metrics", headers=headers)
        assert reply.status == 403, (server.instance_id, headers)
        assert reply.json() == {"status": 403, "code": "permission_denied", "detail": "Metrics are not public."}
        assert "chat_connections" not in reply.text

    reply = get(servers["token"], "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert "# TYPE chat_connections gauge" in reply.text
