"""Operator commands run as an operator runs them: ``python manage.py …`` in a subprocess with
the environment of a real two-instance cluster (daphne and uvicorn on one Redis and one
database). Also the system checks that ``check --deploy`` reports."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.processes import ROOT, AppServer, app_env, wait_registered
from realtime.registry import instance_conns_key, instances_key, user_conns_key
from tests.integration.conftest import open_ws, start_cluster, token

# One database mode for the whole module: pytest-django runs tests grouped by mode, which would
# otherwise split the module and start its servers twice.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The cluster's own reaping waits a long TTL, so dead instances are left for the command.
CLUSTER_TTL = "60"
COMMAND_TTL = "2"


@pytest.fixture(scope="module")
def cluster(django_db_setup, tmp_path_factory):
    c = start_cluster(
        tmp_path_factory.mktemp("commands"),
        servers={"a": "daphne", "b": "uvicorn"},
        INSTANCE_TTL_SECONDS=CLUSTER_TTL,
        INSTANCE_HEARTBEAT_SECONDS="0.5",
        LOG_LEVEL="WARNING",
    )
    yield c
    c.stop()


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def manage_all(env: dict[str, str], *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Several commands at once (each spends a second or two starting Django)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: manage(env, *args), commands))


async def amanage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(manage, env, *args)


def registry_empty(cluster) -> None:
    """Wait until sockets of earlier tests have left the registry."""
    r = cluster.redis_client()
    deadline = time.monotonic() + 5
    while any(r.scard(instance_conns_key(i)) for i in r.zrange(instances_key(), 0, -1)):
        assert time.monotonic() < deadline, "registry still holds connections of an earlier test"
        time.sleep(0.1)


async def settled(cluster, user, count: int) -> None:
    await asyncio.to_thread(wait_registered, cluster.redis_client(), user.pk, count)


@pytest.fixture
def people(transactional_db):
    from tests.factories import UserFactory

    alice, bob = UserFactory(), UserFactory()
    for user in (alice, bob):
        user.token = token(user)
    return {"alice": alice, "bob": bob}


async def test_chat_stats_reports_instances_connections_and_users(cluster, people):
    registry_empty(cluster)
    a, b = cluster.servers["a"], cluster.servers["b"]
    sockets = [
        await open_ws(a.ws_url, people["alice"]),
        await open_ws(a.ws_url, people["bob"]),
        await open_ws(b.ws_url, people["bob"]),
    ]
    await settled(cluster, people["alice"], 1)
    await settled(cluster, people["bob"], 2)
    as_json, as_table = await asyncio.to_thread(manage_all, cluster.env, ("chat_stats", "--json"), ("chat_stats",))
    assert as_json.returncode == 0, as_json.stderr
    stats = json.loads(as_json.stdout)
    assert (stats["connections"], stats["users_online"]) == (3, 2)
    assert [(i["instance_id"], i["alive"], i["connections"]) for i in stats["instances"]] == [
        ("a", True, 2),
        ("b", True, 1),
    ]
    assert all(0 <= i["heartbeat_age_s"] < 5 for i in stats["instances"])

    assert as_table.returncode == 0, as_table.stderr
    lines = as_table.stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "STATE", "HEARTBEAT", "AGE", "CONNECTIONS"]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert (rows["a"][1], rows["a"][3]) == ("alive", "2")
    assert (rows["b"][1], rows["b"][3]) == ("alive", "1")
    assert lines[-1] == "2 instance(s) (2 alive), 3 connection(s), 2 user(s) online"
    for ws in sockets:
        await ws.close()


async def test_disconnect_user_closes_their_sockets_on_every_instance(cluster, people):
    registry_empty(cluster)
    a, b = cluster.servers["a"], cluster.servers["b"]
    bob_a = await open_ws(a.ws_url, people["bob"])
    bob_b = await open_ws(b.ws_url, people["bob"])
    alice = await open_ws(b.ws_url, people["alice"])
    await settled(cluster, people["bob"], 2)
    await settled(cluster, people["alice"], 1)

    done, unknown = await asyncio.to_thread(
        manage_all, cluster.env, ("disconnect_user", people["bob"].username), ("disconnect_user", "nobody-here")
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"Closing 2 connection(s) of {people['bob'].username} on every instance (close code 4000)"
    )
    assert await bob_a.closed_code(5) == 4000
    assert await bob_b.closed_code(5) == 4000
    assert (await alice.request({"type": "ping", "id": "p"}))["type"] == "pong"

    assert unknown.returncode == 1
    assert "CommandError: no user named 'nobody-here'" in unknown.stderr
    await alice.close()


async def test_reap_connections_reaps_dead_instances_now_and_spares_live_ones(cluster, people):
    registry_empty(cluster)
    doomed = AppServer("uvicorn", "c", cluster.env, cluster.work_dir)
    cluster.extra.append(doomed)
    await asyncio.to_thread(doomed.start)
    alice_c = await open_ws(doomed.ws_url, people["alice"])
    bob_a = await open_ws(cluster.servers["a"].ws_url, people["bob"])
    await settled(cluster, people["alice"], 1)
    await settled(cluster, people["bob"], 1)
    r = cluster.redis_client()
    assert r.scard(instance_conns_key("c")) == 1

    doomed.signal(signal.SIGKILL)
    doomed.wait(5)
    killed = time.time()
    env = dict(cluster.env, INSTANCE_TTL_SECONDS=COMMAND_TTL)
    while time.time() - float(r.zscore(instances_key(), "c")) <= float(COMMAND_TTL) + 0.2:
        assert time.time() - killed < 10
        await asyncio.sleep(0.2)

    dry = await amanage(env, "reap_connections", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "1 dead instance(s): c"
    assert r.scard(instance_conns_key("c")) == 1, "a dry run changed the registry"

    reaped = await amanage(env, "reap_connections")
    assert reaped.returncode == 0, reaped.stderr
    assert reaped.stdout.strip() == "Reaped 1 connection(s) of 1 dead instance(s): c"
    assert r.zscore(instances_key(), "c") is None
    assert r.scard(instance_conns_key("c")) == 0
    assert r.zrange(user_conns_key(people["alice"].pk), 0, -1) == []
    # The living instances and their sockets are untouched.
    assert r.scard(instance_conns_key("a")) == 1
    assert (await bob_a.request({"type": "ping", "id": "p"}))["type"] == "pong"
    stats, again = await asyncio.to_thread(manage_all, env, ("chat_stats", "--json"), ("reap_connections",))
    stats = json.loads(stats.stdout)
    assert [i["instance_id"] for i in stats["instances"]] == ["a", "b"]
    assert stats["connections"] == 1
    assert again.stdout.strip() == "Reaped 0 connection(s) of 0 dead instance(s)"
    await bob_a.close()
    del alice_c  # its server is gone; nothing to close


def test_commands_refuse_single_mode_with_one_line(tmp_path):
    env = app_env(CHAT_MODE="single", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    # Each command starts with the same guard; one that reads and one that acts.
    for result in manage_all(env, ("chat_stats",), ("disconnect_user", "x")):
        assert result.returncode == 1
        assert result.stderr.strip().startswith("CommandError: single mode:")
        assert "Traceback" not in result.stderr


# --- system checks ------------------------------------------------------------------------------


def check_env(**extra: str) -> dict[str, str]:
    env = app_env(**extra)
    for name in ("DJANGO_SECRET_KEY", "DJANGO_DEBUG"):
        if name not in extra:
            env.pop(name, None)
    return env


def test_check_deploy_reports_settings_problems():
    secret = "k" * 60
    runs = {
        "dev": (check_env(), ("check", "--deploy")),
        "debug": (check_env(DJANGO_SECRET_KEY=secret, DJANGO_DEBUG="true"), ("check", "--deploy")),
        "ttl": (
            check_env(DJANGO_SECRET_KEY=secret, INSTANCE_TTL_SECONDS="3", INSTANCE_HEARTBEAT_SECONDS="2"),
            ("check", "--deploy"),
        ),
        "good": (check_env(DJANGO_SECRET_KEY=secret, DJANGO_DEBUG="false"), ("check", "--deploy")),
        "sweep": (check_env(CREDENTIAL_CHECK_SECONDS="2", CREDENTIAL_SWEEP_SECONDS="1"), ("check",)),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        results = dict(zip(runs, pool.map(lambda item: manage(item[0], *item[1]), runs.values()), strict=True))
    out = {name: r.stdout + r.stderr for name, r in results.items()}

    assert results["dev"].returncode == 1
    assert "(chat.E002) DJANGO_SECRET_KEY is the development default." in out["dev"]
    assert "chat.E003" not in out["dev"]

    assert results["debug"].returncode == 1
    assert "(chat.E003) DJANGO_DEBUG is on." in out["debug"]
    assert "chat.E002" not in out["debug"]

    assert results["ttl"].returncode == 1
    assert "(chat.E001) INSTANCE_TTL_SECONDS must be at least twice the heartbeat renewal interval." in out["ttl"]
    assert "chat.E002" not in out["ttl"] and "chat.E003" not in out["ttl"]

    assert results["good"].returncode == 0, out["good"]
    assert "chat.E" not in out["good"]

    assert results["sweep"].returncode == 0, out["sweep"]  # a warning
    assert "(chat.W002) CREDENTIAL_SWEEP_SECONDS is shorter than CREDENTIAL_CHECK_SECONDS" in out["sweep"]
    assert "chat.W002" not in out["good"]
