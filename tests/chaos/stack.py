"""The topology users deploy, on loopback: three uvicorn instances behind the shipped
docker/nginx.conf, Redis behind Sentinel (master, replica, three Sentinels) or a Redis Cluster
(three masters, three replicas), and a PostgreSQL cluster of the suite's own (so it can be
restarted). Optionally the Firestore emulator with status sync on, and instance "c" in a cgroup
of its own so it can be cut off from Redis alone (harness/netcut.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from harness import netcut
from harness.firestore_emulator import FirestoreEmulator, find_jar
from harness.processes import ROOT, AppServer, Nginx, PostgresServer, app_env, start_all, stop_all
from harness.redis_cluster import RedisCluster
from harness.sentinel import MASTER_NAME, SentinelTopology

INSTANCES = ("a", "b", "c")
CUT_INSTANCE = "c"
CLIENTS = 30
CONVERSATIONS = 10

# Timings of the integration tests (fast reaping and grace), so faults settle within the run.
APP_ENV = {
    "CHAT_MODE": "cluster",
    "REDIS_KEY_PREFIX": "chat",
    "LOG_LEVEL": "INFO",
    "INSTANCE_TTL_SECONDS": "3",
    "INSTANCE_HEARTBEAT_SECONDS": "0.5",
    "PRESENCE_GRACE_SECONDS": "2",
    # Clients spread their reconnects over this window (the contract's hello field); 30 clients
    # need no 10 s spread, and the figures measure the server, not the spread.
    "WS_RECONNECT_WINDOW_MS": "1000",
}

_SEED = """
import json
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from chat.models import Conversation, Participant
User = get_user_model()
users = [User.objects.create_user(f"chaos{i}", password="pw") for i in range(%(clients)d)]
convs = [Conversation.objects.create(title=f"chaos {k}", owner=users[k]) for k in range(%(convs)d)]
members = {k: [i for i in range(len(users)) if k in (i %% %(convs)d, (i + 3) %% %(convs)d)] for k in range(len(convs))}
for k, conv in enumerate(convs):
    for i in members[k]:
        role = Participant.Role.OWNER if i == k else Participant.Role.MEMBER
        Participant.objects.create(conversation=conv, user=users[i], role=role)
print(json.dumps({
    "users": [{"id": u.pk, "token": Token.objects.create(user=u).key} for u in users],
    "conversations": {str(c.id): members[k] for k, c in enumerate(convs)},
}))
"""


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed: {done.stderr[-2000:]}")
    return done.stdout


class ChaosStack:
    def __init__(self, work_dir: Path, *, cluster: bool = False, firestore: bool = False, cut: bool = False) -> None:
        self.dir = work_dir
        self.pg = PostgresServer()
        # The Sentinel topology (``redis``) or the Redis Cluster (``cluster``).
        self.redis = SentinelTopology(down_after_ms=1000, failover_timeout_ms=3000)
        self.cluster: RedisCluster | None = RedisCluster() if cluster else None
        self.servers: dict[str, AppServer] = {}
        self.nginx: Nginx | None = None
        self.seeded: dict[str, Any] = {}
        self.firestore: FirestoreEmulator | None = None
        self.firestore_missing: str | None = None
        if firestore:
            try:
                find_jar()
                self.firestore = FirestoreEmulator(project="chat-chaos")
            except RuntimeError as exc:
                self.firestore_missing = str(exc)
        self.cut: netcut.CgroupCut | None = None
        self.cut_unavailable: str | None = netcut.unavailable() if cut else "not asked for"
        if cut and self.cut_unavailable is None:
            try:
                self.cut = netcut.CgroupCut(f"chaos-{CUT_INSTANCE}")
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.cut_unavailable = f"the nftables cgroup match does not work here: {exc}"

    def start(self) -> ChaosStack:
        # The emulator (a JVM) starts beside the rest; the instances need it only once running.
        failed: list[BaseException] = []

        def start_emulator() -> None:
            try:
                assert self.firestore is not None
                self.firestore.start()
            except BaseException as exc:  # raised below, in the starting thread
                failed.append(exc)

        emulator = threading.Thread(target=start_emulator, daemon=True) if self.firestore else None
        if emulator is not None:
            emulator.start()
        self.pg.start()
        env = app_env(DATABASE_URL=self.pg.url() + "?connect_timeout=2")
        # Nothing may reach the test run's own Redis: the instances find theirs through Sentinel
        # or the cluster's startup node.
        for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_SENTINELS", "REDIS_CLUSTER", "FIRESTORE_EMULATOR_HOST"):
            env.pop(name, None)
        if self.cluster is not None:
            self.cluster.start()
            host, port = self.cluster.startup
            env.update(REDIS_CLUSTER="true", REDIS_HOST=host, REDIS_PORT=str(port))
        else:
            self.redis.start()
            env.update(REDIS_SENTINELS=self.redis.sentinel_hosts, REDIS_SENTINEL_MASTER=MASTER_NAME)
        if self.firestore is not None:
            env.update(FIRESTORE_PROJECT_ID=self.firestore.project, FIRESTORE_EMULATOR_HOST=self.firestore.host)
        else:
            env.pop("FIRESTORE_PROJECT_ID", None)
            env.pop("GOOGLE_CLOUD_PROJECT", None)
        env.update(APP_ENV)
        _manage(dict(env, CHAT_MODE="single"), "migrate", "--noinput", "-v", "0")
        script = _SEED % {"clients": CLIENTS, "convs": CONVERSATIONS}
        self.seeded = json.loads(_manage(dict(env, CHAT_MODE="single"), "shell", "-c", script).strip().splitlines()[-1])
        if emulator is not None:
            emulator.join(90)
            if failed:
                raise failed[0]
        self.servers = {name: AppServer("uvicorn", name, env, self.dir) for name in INSTANCES}
        if self.cut is not None:
            self.servers[CUT_INSTANCE].launcher = self.cut.wrap
        start_all(list(self.servers.values()))
        self.nginx = Nginx([s.port for s in self.servers.values()], self.dir).start()
        return self

    @property
    def ws_url(self) -> str:
        assert self.nginx is not None
        return f"ws://127.0.0.1:{self.nginx.port}/ws/chat/"

    # --- faults ------------------------------------------------------------------------------

    def restart_instance(self, name: str) -> None:
        server = self.servers[name]
        server.stop()
        server.start()

    def sigterm_and_restart(self, name: str) -> float:
        """SIGTERM (the drain), wait for the exit, start again on the same port. Returns how long
        the exit took."""
        server = self.servers[name]
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait(15)
        took = time.monotonic() - started
        server.stop()
        server.start()
        return took

    def redis_ports(self) -> list[int]:
        """Every port of Redis an instance may talk to: nodes and Sentinels."""
        if self.cluster is not None:
            return [n.port for n in self.cluster.nodes]
        return [*self.redis.nodes, *(s.port for s in self.redis.sentinels)]

    def db(self) -> psycopg.Connection:
        return psycopg.connect(self.pg.url(), autocommit=True, connect_timeout=5)

    def stored(self) -> tuple[dict[str, list[tuple[int, str, int, str | None]]], dict[str, int]]:
        """Every stored message per conversation as (seq, id, sender, client_msg_id) in seq
        order, and each conversation's last_seq."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT conversation_id, seq, id, sender_id, client_msg_id FROM chat_message"
                " ORDER BY conversation_id, seq"
            ).fetchall()
            last = dict(conn.execute("SELECT id, last_seq FROM chat_conversation").fetchall())
        stored: dict[str, list[tuple[int, str, int, str | None]]] = {}
        for cid, seq, mid, sender, cmid in rows:
            stored.setdefault(str(cid), []).append((seq, str(mid), sender, cmid))
        return stored, {str(k): v for k, v in last.items()}

    def public_versions(self, user_ids: list[int]) -> dict[int, tuple[int, str, str]]:
        """Per user the public view Firestore must hold: (public_version, status, text), with an
        offline or invisible user shown offline (presence/presenters.py)."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT user_id, public_version, status, text, online FROM presence_userstatus WHERE user_id = ANY(%s)",
                (user_ids,),
            ).fetchall()
        out: dict[int, tuple[int, str, str]] = {}
        for user_id, version, status, text, online in rows:
            hidden = not online or status == "invisible"
            out[user_id] = (version, "offline" if hidden else status, "" if hidden else text)
        return out

    def online_users(self, user_ids: list[int]) -> set[int]:
        """Those of ``user_ids`` the database holds online."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT user_id FROM presence_userstatus WHERE online AND user_id = ANY(%s)", (user_ids,)
            ).fetchall()
        return {uid for (uid,) in rows}

    def outbox(self, user_ids: list[int]) -> dict[int, tuple[int, int, str, float]]:
        """Per user still queued for Firestore: (version, attempts, last error, seconds until
        its next attempt), for a failure message."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT user_id, version, attempts, last_error, EXTRACT(EPOCH FROM next_attempt_at - now())"
                " FROM presence_statusoutbox WHERE user_id = ANY(%s)",
                (user_ids,),
            ).fetchall()
        return {uid: (version, attempts, error, round(float(due), 1)) for uid, version, attempts, error, due in rows}

    def stop(self) -> None:
        stop_all(list(self.servers.values()))
        if self.nginx is not None:
            self.nginx.stop()
        if self.cut is not None:
            self.cut.close()
        if self.cluster is not None:
            self.cluster.stop()
        else:
            self.redis.stop()
        if self.firestore is not None:
            self.firestore.stop()
        self.pg.destroy()
