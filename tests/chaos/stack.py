"""The topology users deploy, on loopback: three uvicorn instances behind the shipped
docker/nginx.conf, Redis behind Sentinel (master, replica, three Sentinels), and a PostgreSQL
cluster of the suite's own (so it can be restarted)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from harness.processes import ROOT, AppServer, Nginx, PostgresServer, app_env, start_all, stop_all
from harness.sentinel import MASTER_NAME, SentinelTopology

INSTANCES = ("a", "b", "c")
CLIENTS = 30
CONVERSATIONS = 10

# Timings of the integration tests (fast reaping and grace), so faults settle within the run.
APP_ENV = {
    "CHAT_MODE": "cluster",
    "REDIS_SENTINEL_MASTER": MASTER_NAME,
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
    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir
        self.pg = PostgresServer()
        self.redis = SentinelTopology(down_after_ms=1000, failover_timeout_ms=3000)
        self.servers: dict[str, AppServer] = {}
        self.nginx: Nginx | None = None
        self.seeded: dict[str, Any] = {}

    def start(self) -> ChaosStack:
        self.pg.start()
        self.redis.start()
        env = app_env(DATABASE_URL=self.pg.url() + "?connect_timeout=2", REDIS_SENTINELS=self.redis.sentinel_hosts)
        env.update(APP_ENV)
        # Nothing may reach the test run's own Redis: the instances find theirs through Sentinel.
        for name in ("REDIS_HOST", "REDIS_PORT"):
            env.pop(name, None)
        _manage(dict(env, CHAT_MODE="single"), "migrate", "--noinput", "-v", "0")
        script = _SEED % {"clients": CLIENTS, "convs": CONVERSATIONS}
        self.seeded = json.loads(_manage(dict(env, CHAT_MODE="single"), "shell", "-c", script).strip().splitlines()[-1])
        self.servers = {name: AppServer("uvicorn", name, env, self.dir) for name in INSTANCES}
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

    def stop(self) -> None:
        stop_all(list(self.servers.values()))
        if self.nginx is not None:
            self.nginx.stop()
        self.redis.stop()
        self.pg.destroy()
