"""A whole cluster for black-box tests of clients: ``python -m harness.stack``.

Starts a redis-server, creates and migrates a fresh PostgreSQL database, creates the demo users
and their conversation, starts N uvicorn instances (and optionally nginx in front of them) on
free ports, and prints one JSON line describing it all (ports, pids, users with their tokens).
Then it reads commands on stdin, one a line, and answers each with one JSON line:

    kill NAME     SIGKILL the instance         stop NAME   SIGTERM it and wait
    start NAME    start it again (same port)   status      the description again
    freeze NAME   SIGSTOP it (a hung process)  thaw NAME   SIGCONT it
    sql STATEMENT run one SQL statement on the stack's database (test set-up only)

On EOF or SIGTERM it stops everything, drops the database and removes its folder (the
instances' logs stay when ``CHAT_STACK_KEEP`` is set). The SDK's Node tests
(clients/js/test/) and the browser tests (tests/web/) use it; the browser tests through
:class:`Stack` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .processes import AppServer, Nginx, RedisServer, app_env, start_all, stop_all, wait_for_port

FAST_TIMINGS = {
    "INSTANCE_TTL_SECONDS": "3",
    "INSTANCE_HEARTBEAT_SECONDS": "0.5",
    "PRESENCE_GRACE_SECONDS": "2",
}
DEMO_PASSWORD = "demo-password"


def default_pg_url() -> str:
    """The PostgreSQL server the tests use: CHAT_STACK_PG, else the server of a PostgreSQL
    DATABASE_URL (as scripts/test honours it), else the local one as user postgres."""
    explicit = os.environ.get("CHAT_STACK_PG")
    if explicit:
        return explicit
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        return url.rsplit("/", 1)[0]
    return "postgres://postgres@127.0.0.1:5432"


def _admin_url(database_url: str) -> str:
    return database_url.rsplit("/", 1)[0] + "/postgres"


class Stack:
    """Redis, a fresh database, demo users and N app instances; ``stop()`` undoes all of it."""

    def __init__(
        self,
        *,
        instances: int = 2,
        nginx: bool = False,
        env: dict[str, str] | None = None,
        pg_url: str | None = None,
    ) -> None:
        pg_url = pg_url or default_pg_url()
        self.count = instances
        self.with_nginx = nginx
        self.extra_env = env or {}
        self.db_name = f"chat_stack_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.database_url = f"{pg_url.rstrip('/')}/{self.db_name}"
        self.work_dir = Path(tempfile.mkdtemp(prefix="chat-stack-"))
        self.redis: RedisServer | None = None
        self.servers: dict[str, AppServer] = {}
        self.nginx: Nginx | None = None
        self.users: dict[str, dict[str, Any]] = {}
        self.conversation_id = ""
        self.db_created = False

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> Stack:
        try:
            self.redis = RedisServer().start()
            self._create_database()
            env = app_env(
                CHAT_MODE="cluster",
                REDIS_HOST="127.0.0.1",
                REDIS_PORT=str(self.redis.port),
                DATABASE_URL=self.database_url,
                LOG_LEVEL="INFO",
                **FAST_TIMINGS,
                **self.extra_env,
            )
            self._migrate_and_seed(env)
            for i in range(self.count):
                name = f"inst-{chr(ord('a') + i)}"
                self.servers[name] = AppServer("uvicorn", name, env, self.work_dir)
            start_all(list(self.servers.values()))
            if self.with_nginx:
                self.nginx = Nginx([s.port for s in self.servers.values()], self.work_dir).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            if server.proc is not None and server.proc.poll() is None:
                server.signal(signal.SIGCONT)  # a frozen instance must be able to exit
        stop_all(list(self.servers.values()))
        if self.nginx is not None:
            self.nginx.stop()
        if self.redis is not None:
            self.redis.stop()
        self._drop_database()
        if not os.environ.get("CHAT_STACK_KEEP"):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def kill(self, name: str) -> None:
        server = self.servers[name]
        server.signal(signal.SIGKILL)
        server.wait(10)

    def restart(self, name: str) -> None:
        """Start an instance again on its old port (nginx's upstream list stays valid)."""
        server = self.servers[name]
        server.stop()
        server.start()
        wait_for_port(server.port, 30, server.proc)

    # --- database -------------------------------------------------------------------------

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(_admin_url(self.database_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True

    def _drop_database(self) -> None:
        if not self.db_created:
            return
        import psycopg

        with psycopg.connect(_admin_url(self.database_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        self.db_created = False

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement.encode())

    def _migrate_and_seed(self, env: dict[str, str]) -> None:
        """migrate and seed_demo in a child process (this one never imports Django), then read
        the users, their tokens and the demo conversation back as JSON."""
        import subprocess

        script = (
            "import django, json; django.setup()\n"
            "from django.core.management import call_command\n"
            "call_command('migrate', verbosity=0, interactive=False)\n"
            "call_command('seed_demo', stdout=open('/dev/null', 'w'))\n"
            "from django.contrib.auth import get_user_model\n"
            "from rest_framework.authtoken.models import Token\n"
            "from chat.models import Conversation\n"
            "users = {u.username: {'id': u.pk, 'token': Token.objects.get(user=u).key}\n"
            "         for u in get_user_model().objects.all()}\n"
            "conv = Conversation.objects.get(title='Welcome')\n"
            "print(json.dumps({'users': users, 'conversation_id': str(conv.id)}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=env["PYTHONPATH"], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrate/seed failed: {done.stderr[-2000:]}")
        data = json.loads(done.stdout.strip().splitlines()[-1])
        self.users = {name: dict(u, password=DEMO_PASSWORD) for name, u in data["users"].items()}
        self.conversation_id = data["conversation_id"]

    # --- description ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        assert self.redis is not None
        return {
            "redis_port": self.redis.port,
            "database": self.db_name,
            "instances": {
                name: {
                    "port": s.port,
                    "url": s.url,
                    "ws_url": s.ws_url,
                    "pid": s.proc.pid if s.proc else None,
                    "running": bool(s.proc and s.proc.poll() is None),
                    "log": str(s.log_path),
                }
                for name, s in self.servers.items()
            },
            "nginx_port": self.nginx.port if self.nginx else None,
            "users": self.users,
            "conversation_id": self.conversation_id,
        }


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env: expected NAME=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.stack", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--nginx", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra app settings")
    parser.add_argument("--pg", default=None, help="PostgreSQL server URL without a database name")
    args = parser.parse_args(argv)

    import psycopg

    stack = Stack(instances=args.instances, nginx=args.nginx, env=_parse_env(args.env), pg_url=args.pg)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        stack.start()
        print(json.dumps(stack.describe()), flush=True)
        for line in sys.stdin:
            command, _, name = line.strip().partition(" ")
            try:
                if command == "kill":
                    stack.kill(name)
                elif command == "stop":
                    stack.servers[name].stop()
                elif command == "start":
                    stack.restart(name)
                elif command == "sql":
                    stack.sql(name)
                elif command in ("freeze", "thaw"):
                    stack.servers[name].signal(signal.SIGSTOP if command == "freeze" else signal.SIGCONT)
                elif command != "status":
                    raise ValueError(f"unknown command {command!r}")
                print(json.dumps({"ok": True, **stack.describe()}), flush=True)
            except (KeyError, ValueError, RuntimeError, TimeoutError, OSError, psycopg.Error) as exc:
                print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
