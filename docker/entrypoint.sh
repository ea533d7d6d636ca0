#!/bin/sh
# Container entrypoint: wait (bounded) for the database and Redis, migrate when
# RUN_MIGRATIONS=1, then exec the command (uvicorn by default).
#
#   DATABASE_URL           waited for unless it is SQLite (PostgreSQL: a real login)
#   REDIS_HOST/REDIS_PORT  waited for (a PING) unless CHAT_MODE=single; REDIS_SENTINELS instead when set;
#                          with REDIS_CLUSTER=true, until the node reports cluster_state:ok
#   WAIT_TIMEOUT_SECONDS   how long to wait in all (default 60)
#   RUN_MIGRATIONS=1       run "manage.py migrate" first; let one container do it, not every instance
set -eu

python - <<'PY'
import os
import socket
import sys
import time

import dj_database_url


def fail(message: str) -> None:
    sys.exit(f"entrypoint: {message}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        fail(f"configuration error: {name}: expected a whole number, got {raw!r}")
        return default


deadline = time.monotonic() + env_int("WAIT_TIMEOUT_SECONDS", 60)


def wait_for(what: str, check) -> None:
    last = None
    while True:
        try:
            check()
        except Exception as exc:  # any failure means "not yet"; the last one is reported
            last = exc
        else:
            print(f"entrypoint: {what} is up", file=sys.stderr)
            return
        if time.monotonic() >= deadline:
            fail(f"gave up waiting for {what}: {last.__class__.__name__}: {last}")
        time.sleep(1)


def tcp(host: str, port: int):
    def check() -> None:
        with socket.create_connection((host, port), timeout=2):
            pass

    return check


# --- the database ---
url = os.environ.get("DATABASE_URL", "").strip()
if not url:
    print("entrypoint: warning: DATABASE_URL is not set; SQLite under /app is read-only here", file=sys.stderr)
else:
    try:
        db = dj_database_url.parse(url)
    except Exception as exc:
        fail(f"configuration error: DATABASE_URL: not a database URL ({exc.__class__.__name__})")
    engine = db["ENGINE"]
    host, port = db.get("HOST") or "", db.get("PORT")
    if "sqlite" in engine:
        pass
    elif "postgresql" in engine or "postgis" in engine:
        import psycopg

        def postgres() -> None:
            options = db.get("OPTIONS") or {}
            extra = {k: v for k, v in options.items() if k.startswith("ssl") and isinstance(v, str)}
            with psycopg.connect(
                host=host or None,
                port=port or None,
                dbname=db.get("NAME") or None,
                user=db.get("USER") or None,
                password=db.get("PASSWORD") or None,
                connect_timeout=3,
                **extra,
            ) as conn:
                conn.execute("SELECT 1")

        wait_for(f"the database at {host or 'localhost'}:{port or 5432}", postgres)
    elif host and not host.startswith("/") and port:
        wait_for(f"the database at {host}:{port}", tcp(host, int(port)))

# --- Redis ---
mode = os.environ.get("CHAT_MODE", "auto").strip().lower() or "auto"
sentinels = os.environ.get("REDIS_SENTINELS", "").strip()
redis_host = os.environ.get("REDIS_HOST", "").strip()
if mode == "single":
    pass
elif sentinels:
    checks = []
    for item in sentinels.split(","):
        h, _, p = item.strip().rpartition(":")
        if not h or not p.isdigit():
            fail(f"configuration error: REDIS_SENTINELS: expected host:port[,host:port], got {item.strip()!r}")
        checks.append(tcp(h, int(p)))

    def any_sentinel() -> None:
        errors = []
        for check in checks:
            try:
                check()
                return
            except OSError as exc:
                errors.append(exc)
        raise errors[-1]

    wait_for(f"a Redis Sentinel of {sentinels}", any_sentinel)
elif redis_host or mode == "cluster":
    import redis

    client = redis.Redis(
        host=redis_host or "localhost",
        port=env_int("REDIS_PORT", 6379),
        username=os.environ.get("REDIS_USERNAME") or None,
        password=os.environ.get("REDIS_PASSWORD") or None,
        ssl=os.environ.get("REDIS_SSL", "").strip().lower() in {"1", "true", "yes", "on"},
        db=env_int("REDIS_DB", 0),
        socket_connect_timeout=2,
        socket_timeout=2,
    )
    where = f"{redis_host or 'localhost'}:{env_int('REDIS_PORT', 6379)}"
    if os.environ.get("REDIS_CLUSTER", "").strip().lower() in {"1", "true", "yes", "on"}:
        # A node answers PING before its cluster is formed; wait until it serves every slot.
        def cluster_ok() -> None:
            state = client.execute_command("CLUSTER INFO")["cluster_state"]
            if state != "ok":
                raise RuntimeError(f"cluster_state:{state}")

        wait_for(f"the Redis Cluster at {where}", cluster_ok)
    else:
        wait_for(f"Redis at {where}", client.ping)
PY

if [ "${RUN_MIGRATIONS:-0}" = 1 ]; then
    echo "entrypoint: python manage.py migrate" >&2
    python manage.py migrate --noinput
fi

exec "$@"
