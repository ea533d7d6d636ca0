"""What one send costs PostgreSQL: the capacity plan's database input.

    .venv/bin/python -m bench.pgsend                      # 2,000 sends, 200 conversations of 10
    .venv/bin/python -m bench.pgsend --sends 5000 --threads 8

Creates a throw-away database (``bench_pgsend_<pid>`` on 127.0.0.1:5432, user postgres, dropped
at the end), migrates it, creates conversations of ``--group`` users and then runs the very
statement ``chat.services.message_send`` runs on PostgreSQL (``_SEND_SQL``: the seq increment
and the insert in one statement, its own transaction), from one connection and then from
``--threads`` connections at once. Reports, per send: the time the client waits (round trip and
commit), the PostgreSQL backend's CPU (``/proc/<backend pid>/stat``, so PostgreSQL must run on
this machine), the WAL written (``pg_current_wal_lsn``), the sends per second of the concurrent
run, and ``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of one send (rolled back). No Redis is involved:
the statement alone, without the service's rate limit and publish.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.cluster import CLK_TCK, ROOT, log, machine_info, proc_cpu

PG = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sends", type=int, default=2000, help="sends from one connection")
    p.add_argument("--threads", type=int, default=4, help="connections sending at once in the second run")
    p.add_argument("--concurrent-sends", type=int, default=4000, help="sends of the concurrent run, in all")
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--group", type=int, default=10, help="participants per conversation")
    p.add_argument("--body-chars", type=int, default=80)
    p.add_argument("--json", default="", help="also write the figures here")
    return p.parse_args(argv)


def setup_django(db_name: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings.base",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db_name}",
        CHAT_MODE="single",
        LOG_LEVEL="WARNING",
    )
    sys.path.insert(0, str(ROOT))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=os.environ, check=True
    )
    import django

    django.setup()


def make_conversations(count: int, group: int) -> list[tuple[uuid.UUID, list[int]]]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from chat.models import Conversation, Participant

    User = get_user_model()  # noqa: N806
    with transaction.atomic():
        users = User.objects.bulk_create(
            [User(username=f"pg{i:06d}", password="!bench-unusable") for i in range(count * group)], batch_size=2000
        )
        convs = Conversation.objects.bulk_create(
            [Conversation(title=f"pgsend {i}", owner_id=users[i * group].pk) for i in range(count)], batch_size=2000
        )
        members = [
            Participant(conversation=conv, user_id=users[i * group + j].pk, role="owner" if j == 0 else "member")
            for i, conv in enumerate(convs)
            for j in range(group)
        ]
        Participant.objects.bulk_create(members, batch_size=2000)
    return [(conv.pk, [u.pk for u in users[i * group : (i + 1) * group]]) for i, conv in enumerate(convs)]


def wal_lsn(cursor: Any) -> int:
    cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
    return int(cursor.fetchone()[0])


def send_params(conv: tuple[uuid.UUID, list[int]], n: int, body: str) -> dict[str, Any]:
    from django.utils import timezone

    cid, members = conv
    return {
        "cid": cid,
        "sender": members[n % len(members)],
        "now": timezone.now(),
        "id": uuid.uuid4(),
        "body": body,
        "client_msg_id": None,
    }


def sequential(convs: list[tuple[uuid.UUID, list[int]]], sends: int, body: str) -> dict[str, Any]:
    """One connection, one send after the other, each its own transaction (autocommit)."""
    from django.db import connection

    from chat.services import _SEND_SQL

    waits: list[float] = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = int(cursor.fetchone()[0])
        for n in range(50):  # warm-up: plans, caches
            cursor.execute(_SEND_SQL, send_params(convs[n % len(convs)], n, body))
        wal0, cpu0 = wal_lsn(cursor), proc_cpu(backend)
        started = time.perf_counter()
        for n in range(sends):
            params = send_params(convs[n % len(convs)], n, body)
            t0 = time.perf_counter()
            cursor.execute(_SEND_SQL, params)
            assert cursor.fetchone() is not None
            waits.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        cpu1, wal1 = proc_cpu(backend), wal_lsn(cursor)
    waits.sort()
    return {
        "sends": sends,
        "sends_per_s": sends / elapsed,
        "wait_ms_p50": waits[len(waits) // 2] * 1e3,
        "wait_ms_p99": waits[int(len(waits) * 0.99)] * 1e3,
        "wait_ms_mean": statistics.fmean(waits) * 1e3,
        "backend_cpu_us_per_send": (cpu1 - cpu0) / sends * 1e6,
        "cpu_resolution_us": 1e6 / CLK_TCK / sends,
        "wal_bytes_per_send": (wal1 - wal0) / sends,
    }


def concurrent(convs: list[tuple[uuid.UUID, list[int]]], threads: int, total: int, body: str) -> dict[str, Any]:
    """``threads`` connections at once, each on its own conversations (no row-lock waits between
    them), the way many instances' senders reach one database."""
    from django.db import connection, connections

    from chat.services import _SEND_SQL

    per = max(1, total // threads)
    backends: list[int] = []
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)
    errors: list[str] = []

    def run(k: int) -> None:
        try:
            mine = convs[k::threads]
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                with lock:
                    backends.append(int(cursor.fetchone()[0]))
                cursor.execute(_SEND_SQL, send_params(mine[0], 0, body))
                ready.wait(60)
                for n in range(per):
                    cursor.execute(_SEND_SQL, send_params(mine[n % len(mine)], n, body))
        except Exception as exc:  # reported below; the barrier must still be reached
            errors.append(f"{type(exc).__name__}: {exc}")
            ready.abort()
        finally:
            done.wait(600)
            connections.close_all()

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    ready.wait(60)
    cpu0 = sum(proc_cpu(b) for b in backends)
    started = time.perf_counter()
    done.wait(600)
    elapsed = time.perf_counter() - started
    cpu1 = sum(proc_cpu(b) for b in backends)
    for w in workers:
        w.join(10)
    if errors:
        raise RuntimeError("; ".join(errors))
    sends = per * threads
    return {
        "threads": threads,
        "sends": sends,
        "sends_per_s": sends / elapsed,
        "backend_cpu_us_per_send": (cpu1 - cpu0) / sends * 1e6,
    }


def explain(convs: list[tuple[uuid.UUID, list[int]]], body: str) -> list[str]:
    from django.db import connection, transaction

    from chat.services import _SEND_SQL

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, WAL) " + _SEND_SQL, send_params(convs[0], 1, body))
        plan = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    return plan


def settings_of_interest() -> dict[str, str]:
    from django.db import connection

    out = {}
    with connection.cursor() as cursor:
        for name in ("server_version", "synchronous_commit", "fsync", "wal_level", "shared_buffers"):
            cursor.execute(f"SHOW {name}")
            out[name] = str(cursor.fetchone()[0])
    return out


def main() -> int:
    args = parse_args()
    db_name = f"bench_pgsend_{os.getpid()}"
    subprocess.run(["createdb", *PG, db_name], check=True)
    try:
        log(f"database {db_name}: migrating")
        setup_django(db_name)
        convs = make_conversations(args.conversations, args.group)
        log(f"created {args.conversations} conversations of {args.group}")
        body = "x" * args.body_chars
        results: dict[str, Any] = {"machine": machine_info(), "config": vars(args), "postgres": settings_of_interest()}
        results["sequential"] = sequential(convs, args.sends, body)
        results["concurrent"] = concurrent(convs, args.threads, args.concurrent_sends, body)
        results["explain"] = explain(convs, body)
    finally:
        from django.db import connections

        connections.close_all()
        subprocess.run(["dropdb", *PG, "--force", "--if-exists", db_name], check=False)
        log(f"dropped database {db_name}")
    seq, conc = results["sequential"], results["concurrent"]
    pg = results["postgres"]
    print(f"PostgreSQL {pg['server_version']} (synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']})")
    print(f"one connection, {seq['sends']} sends: {seq['sends_per_s']:.0f} sends/s; client wait p50 "
          f"{seq['wait_ms_p50']:.2f} ms, p99 {seq['wait_ms_p99']:.2f} ms; backend CPU "
          f"{seq['backend_cpu_us_per_send']:.0f} us per send; "
          f"WAL {seq['wal_bytes_per_send']:.0f} bytes per send")  # fmt: skip
    print(f"{conc['threads']} connections, {conc['sends']} sends: {conc['sends_per_s']:.0f} sends/s; backend CPU "
          f"{conc['backend_cpu_us_per_send']:.0f} us per send")  # fmt: skip
    print("EXPLAIN (ANALYZE, BUFFERS, WAL) of one send:")
    print("\n".join(f"  {line}" for line in results["explain"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
