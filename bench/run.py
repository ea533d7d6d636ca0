"""Fan-out benchmark of the chat server against a raw baseline (issue 6).

    .venv/bin/python bench/run.py                          # everything, defaults below
    .venv/bin/python bench/run.py --scenarios s1,s2 --instances 2 --targets chat,raw

It starts its own redis-server on a free port and a throw-away PostgreSQL database
(``bench_chat_<pid>`` on 127.0.0.1:5432, user postgres, dropped at the end), migrates it,
creates the users, tokens and conversations (bench/setup_data.py), and then, for each target,
starts N instances and drives them with real WebSocket clients in separate processes
(bench/loadgen.py):

* ``chat`` - this project under uvicorn (uvloop, httptools, ``--ws websockets-sansio``), cluster
  mode on the benchmark's Redis and PostgreSQL;
* ``raw``  - bench/raw_server.py, a `websockets` + redis-py pub/sub server with the same frames.

Scenarios (see bench/README.md): s1 latency, s2 throughput steps, s3 idle connections on one
instance, s4 reconnect storm after a SIGKILL. Server CPU per delivery comes from the server
processes' utime+stime (/proc/<pid>/stat). ``--profile`` records py-spy profiles of every
instance during one extra S2 step at the rate where the chat server saturates.

Prints a table and writes JSON (``--json``, default bench/results/latest.json). All traffic
goes to 127.0.0.1. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from loadgen import raise_nofile, worker_main  # noqa: E402

from harness.processes import AppServer, RedisServer, app_env, wait_for_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CTX = mp.get_context("fork")
P99_LIMIT_MS = 250.0
DELIVERED_MIN = 0.999


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- /proc readings -----------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    versions = {}
    for pkg in ("django", "channels", "channels_redis", "uvicorn", "websockets", "redis", "uvloop", "httptools"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[pkg] = version(pkg)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
    }


# --- servers ------------------------------------------------------------------------------------


class ChatServer(AppServer):
    """One chat instance, run from ``source``; uvicorn with the options the benchmark uses (or daphne)."""

    ws_impl = "websockets-sansio"
    source: Path = ROOT
    deflate = False

    def start(self) -> ChatServer:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(), env=self.env, cwd=self.source, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port, 60, self.proc)
        return self

    def command(self) -> list[str]:
        if self.server == "daphne":
            return super().command()
        bindir = Path(sys.executable).parent
        return [
            str(bindir / "uvicorn"), "chatproject.asgi:application",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--loop", "uvloop", "--http", "httptools", "--ws", self.ws_impl,
            "--ws-max-size", self.env.get("WS_MAX_FRAME_BYTES", "65536"),
            "--ws-per-message-deflate", "true" if self.deflate else "false",
            "--timeout-graceful-shutdown", "5", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip


class RawServer(AppServer):
    def __init__(self, instance_id: str, env: dict[str, str], log_dir: Path, redis_port: int, tokens: Path) -> None:
        super().__init__("raw", instance_id, env, log_dir)
        self.redis_port = redis_port
        self.tokens = tokens

    def command(self) -> list[str]:
        return [
            sys.executable, str(BENCH / "raw_server.py"),
            "--port", str(self.port), "--redis-port", str(self.redis_port),
            "--tokens", str(self.tokens), "--instance-id", self.instance_id,
        ]  # fmt: skip


# --- load-generator workers ---------------------------------------------------------------------


class Worker:
    def __init__(self, role: str, cfg: dict[str, Any]) -> None:
        self.role = role
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=worker_main, args=(role, cfg, child), daemon=True, name=f"loadgen-{role}")
        self.proc.start()
        child.close()

    def send(self, cmd: str, **kwargs: Any) -> None:
        self.conn.send((cmd, kwargs))

    def recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"load generator ({self.role}) did not answer within {timeout:.0f}s")
        reply = self.conn.recv()
        if not reply["ok"]:
            raise RuntimeError(f"load generator ({self.role}): {reply['error']}\n{reply.get('trace', '')}")
        return reply.get("result", reply)

    def call(self, cmd: str, timeout: float = 120.0, **kwargs: Any) -> Any:
        self.send(cmd, **kwargs)
        return self.recv(timeout)

    def exit(self) -> float:
        cpu = float("nan")
        with contextlib.suppress(Exception):
            self.send("exit")
            cpu = self.recv(60)["cpu_s"]
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        return cpu


def call_all(workers: list[Worker], cmd: str, timeout: float = 120.0, **kwargs: Any) -> list[Any]:
    for w in workers:
        w.send(cmd, **kwargs)
    return [w.recv(timeout) for w in workers]


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


# --- statistics ---------------------------------------------------------------------------------


def pct(values: list[float] | array, p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return float(values[k])


def lat_summary(values: array) -> dict[str, float]:
    s = sorted(values)
    return {
        "n": len(s),
        "p50_ms": pct(s, 50) * 1000,
        "p95_ms": pct(s, 95) * 1000,
        "p99_ms": pct(s, 99) * 1000,
        "max_ms": (s[-1] * 1000) if s else float("nan"),
    }


# --- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
        self.redis: RedisServer | None = None
        self.db_name = f"bench_chat_{os.getpid()}"
        self.db_created = False
        self.servers: list[AppServer] = []
        self.workers: list[Worker] = []
        self.data: dict[str, Any] = {}
        self.source = Path(args.source).resolve()
        self.results: dict[str, Any] = {
            "machine": machine_info(),
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "targets": {},
        }

    # --- environment ---

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:5432/{self.db_name}"

    def chat_env(self) -> dict[str, str]:
        assert self.redis is not None
        return app_env(
            PYTHONPATH=str(self.source),
            CHAT_MODE="cluster",
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(self.redis.port),
            REDIS_KEY_PREFIX="bench",
            DATABASE_URL=self.database_url,
            LOG_LEVEL="WARNING",
            RATE_LIMIT_MESSAGES="100000/s burst 100000",
            # The benchmark measures delivery, not the abuse budgets (a pool user holds many sockets).
            **{
                f"RATE_LIMIT_{name}": "100000/s burst 100000"
                for name in (
                    "TYPING",
                    "READS",
                    "STATUS",
                    "PRESENCE_SYNC",
                    "PINGS",
                    "RESUMES",
                    "TICKETS",
                    "CONVERSATIONS",
                )
            },
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            CHANNEL_LAYER_BACKEND=self.args.layer,
            # The benchmark measures what an instance takes, so it sheds nothing.
            WS_MAX_CONNECTS_PER_SECOND="0",
            WS_MAX_SOCKETS="0",
        )

    def prepare_source(self) -> None:
        """--source-rev: run the chat server from that git revision (exported, the checkout is
        untouched), so a benchmark measures a fixed commit while the working tree changes."""
        a = self.args
        git = ["git", "-C", str(ROOT)]
        if a.source_rev:
            commit = subprocess.run([*git, "rev-parse", a.source_rev], capture_output=True, text=True, check=True)
            rev = commit.stdout.strip()
            self.source = self.work / "src"
            self.source.mkdir()
            archive = subprocess.Popen([*git, "archive", rev], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", str(self.source)], stdin=archive.stdout, check=True)
            archive.wait(60)
            self.results["source"] = {"path": str(self.source), "commit": rev, "modified": []}
        else:
            head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
            dirty = subprocess.run(
                [*git, "status", "--porcelain", "--", "chat", "presence", "chatproject", "health"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            self.results["source"] = {
                "path": str(self.source),
                "commit": head.stdout.strip() if self.source == ROOT else None,
                "modified": [line[3:] for line in dirty.stdout.splitlines()] if self.source == ROOT else None,
            }
        src = self.results["source"]
        log(f"chat server source: {src['path']} (commit {src['commit']}, {len(src['modified'] or [])} modified files)")

    def setup(self) -> None:
        nofile = raise_nofile()
        log(f"open files limit {nofile}; work dir {self.work}")
        self.prepare_source()
        self.redis = RedisServer().start()
        log(f"redis-server on 127.0.0.1:{self.redis.port}")
        pg = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
        subprocess.run(["createdb", *pg, self.db_name], check=True)
        self.db_created = True
        env = self.chat_env()
        log(f"database {self.db_name}: migrating")
        migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
        subprocess.run(migrate, cwd=self.source, env=env, check=True)
        pool = max([self.args.storm_clients, *self.args.idle_counts, 0]) + self.args.idle_warmup
        out = self.work / "data.json"
        subprocess.run(
            [
                sys.executable, str(BENCH / "setup_data.py"), "--out", str(out),
                "--receivers", str(self.args.receivers), "--senders", str(self.args.senders), "--pool", str(pool),
                "--source", str(self.source), "--group", str(self.args.pool_group),
                "--storm-clients", str(self.args.storm_clients),
            ],
            cwd=self.source, env=env, check=True,
        )  # fmt: skip
        self.data = json.loads(out.read_text())
        log(f"created {self.args.receivers} receivers, {self.args.senders} senders, {pool} pool users")
        tokens: dict[str, Any] = {}
        for group in ("receivers", "senders"):
            for uid, username, token in self.data[group]:
                tokens[token] = {"user_id": uid, "username": username, "conversations": [self.data["conv_fanout"]]}
        for uid, username, token, conv in self.data["pool"]:
            tokens[token] = {"user_id": uid, "username": username, "conversations": [conv]}
        uid, username, token, convs = self.data["storm_sender"]
        tokens[token] = {"user_id": uid, "username": username, "conversations": convs}
        self.tokens_path = self.work / "tokens.json"
        self.tokens_path.write_text(json.dumps(tokens))

    def teardown(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.exit()
        self.workers = []
        self.stop_servers()
        if self.redis is not None:
            self.redis.stop()
        if self.db_created:
            subprocess.run(
                ["dropdb", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "--force", "--if-exists", self.db_name],
                check=False,
            )
            log(f"dropped database {self.db_name}")
        logs = Path(self.args.json).parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for path in self.work.glob("*.log"):
            shutil.copy(path, logs / path.name)
        if not self.args.keep_logs:
            shutil.rmtree(self.work, ignore_errors=True)

    def flush_redis(self) -> None:
        assert self.redis is not None
        import redis

        redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=5).flushall()

    def start_servers(self, target: str, count: int, tag: str, flush: bool = True) -> list[AppServer]:
        if flush:
            self.flush_redis()
        servers: list[AppServer] = []
        for i in range(count):
            name = f"{target}-{tag}-{i}"
            if target == "chat":
                chat = ChatServer(self.args.server, name, self.chat_env(), self.work)
                chat.ws_impl, chat.source, chat.deflate = self.args.ws, self.source, self.args.server_deflate
                server: AppServer = chat
            else:
                assert self.redis is not None
                server = RawServer(name, app_env(), self.work, self.redis.port, self.tokens_path)
            servers.append(server.start())
        self.servers.extend(servers)
        time.sleep(0.5)
        return servers

    def stop_servers(self, kill: bool = False) -> None:
        for server in self.servers:
            if kill and server.proc and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(10)
            with contextlib.suppress(Exception):
                server.stop()
        self.servers = []

    def start_workers(self, role: str, cfgs: list[dict[str, Any]]) -> list[Worker]:
        workers = [Worker(role, cfg) for cfg in cfgs]
        self.workers.extend(workers)
        return workers

    def stop_workers(self, workers: list[Worker]) -> float:
        cpu = 0.0
        for w in workers:
            cpu += w.exit()
            self.workers.remove(w)
        return cpu

    def health(self, server: AppServer) -> Any:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{server.url}/api/health", timeout=10) as resp:
                return json.loads(resp.read()).get("connections", {}).get("local")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:200]

    def unsubscribed(self, groups: set[str]) -> dict[str, int]:
        """How many of ``groups`` (chat layer groups) have no subscriber in Redis, by kind."""
        import redis

        assert self.redis is not None
        r = redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=10, decode_responses=True)
        names = sorted(groups)
        missing: Counter[str] = Counter()
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            counts = r.pubsub_numsub(*(f"bench:layer__group__{g}" for g in chunk))
            for g, (_, n) in zip(chunk, counts, strict=True):
                if not n:
                    missing[g.split(".", 1)[0]] += 1
        return {"user_groups": missing["u"], "conversation_groups": missing["c"], "checked": len(names)}

    def own_pids(self) -> list[int]:
        pids = [s.proc.pid for s in self.servers if s.proc and s.proc.poll() is None]
        pids += [w.proc.pid for w in self.workers if w.proc.pid]
        if self.redis is not None and self.redis.proc is not None:
            pids.append(self.redis.proc.pid)
        return [p for p in pids if p]

    def pg_sessions(self) -> int:
        return self._pg_stat("sessions")

    def pg_xacts(self) -> int:
        """Transactions of the benchmark's database so far (committed and rolled back). Outside
        an atomic block every query is one, so per connect this counts its queries (a service
        in a transaction counts once). pg_stat_statements would count statements, but needs a
        server restart with shared_preload_libraries; PostgreSQL flushes these counters from
        idle backends within 10 s, hence ``--pg-settle``."""
        return self._pg_stat("xact_commit + xact_rollback")

    def _pg_stat(self, expr: str) -> int:
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
             f"select {expr} from pg_stat_database where datname = '{self.db_name}'"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        try:
            return int(out.stdout.strip())
        except ValueError:
            return -1

    # --- S1 + S2: fan-out ---

    def fanout_start(self, target: str) -> dict[str, Any]:
        a = self.args
        servers = self.start_servers(target, a.instances, "fanout", flush=False)
        urls = [s.ws_url for s in servers]
        receivers = [(urls[i % len(urls)], tok, i % len(urls)) for i, (_, _, tok) in enumerate(self.data["receivers"])]
        senders = [(urls[i % len(urls)], tok, i % len(urls)) for i, (_, _, tok) in enumerate(self.data["senders"])]
        conv = self.data["conv_fanout"]
        rworkers = self.start_workers(
            "receivers",
            [{"clients": part, "deflate": a.deflate, "open_timeout": 300} for part in split(receivers, a.client_procs)],
        )
        scfg = {"clients": senders, "conversation_id": conv, "deflate": a.deflate, "open_timeout": 300}
        sworker = self.start_workers("senders", [scfg])[0]
        t0 = time.monotonic()
        conns = call_all(rworkers, "connect", timeout=700, concurrency=50)
        sworker.call("connect", timeout=700, concurrency=10)
        connected = sum(c["connected"] for c in conns)
        log(f"{target}: {connected}/{len(receivers)} receivers and {len(senders)} senders connected "
            f"in {time.monotonic() - t0:.1f}s")  # fmt: skip
        if connected < len(receivers):
            raise RuntimeError(f"{target}: only {connected} of {len(receivers)} receivers connected: {conns}")
        return {
            "target": target,
            "servers": servers,
            "rworkers": rworkers,
            "sworker": sworker,
            "receivers": connected,
            "senders": len(senders),
            "step_no": 0,
            "out": {"instances": len(servers), "receivers": connected, "senders": len(senders)},
        }

    def fanout(self, targets: list[str]) -> dict[str, dict[str, Any]]:
        """S1 and S2 for every target. All targets' clusters run at once and the steps alternate
        between them (chat step, raw step, next rate...), so both see the same machine."""
        a = self.args
        self.flush_redis()
        ctxs = [self.fanout_start(t) for t in targets]

        def step(ctx: dict[str, Any], rate: float, duration: float, n: int, label: str, profile: bool = False) -> Any:
            """One step; repeated (up to --noisy-retries times) when it failed while other
            processes on the machine were busy, keeping a passing or the quietest attempt."""
            attempts: list[dict[str, Any]] = []
            while True:
                ctx["step_no"] += 1
                # A saturated server may still be working through the last step's sends.
                deadline = time.monotonic() + a.settle_max
                while time.monotonic() < deadline and ctx["sworker"].call("pending", timeout=30):
                    time.sleep(0.5)
                before = self.wait_quiet()
                res = self.fanout_step(ctx["target"], ctx, ctx["step_no"], rate, duration, n, label, profile)
                # Other processes' load just before and just after the step (the servers idle then,
                # so PostgreSQL work caused by the step does not count as noise).
                res["noise_pct"] = (before + self.other_load(1.0)) / 2
                attempts.append(res)
                if res["ok"] or res["noise_pct"] <= a.noisy_pct or len(attempts) > a.noisy_retries or profile:
                    break
                log(f"{ctx['target']} {label} {rate:g} msg/s failed while other processes used "
                    f"{res['noise_pct']:.0f}% of the machine; repeating")  # fmt: skip
            best = next((r for r in attempts if r["ok"]), None) or min(attempts, key=lambda r: r["noise_pct"])
            best["attempts"] = [{"ok": r["ok"], "noise_pct": r["noise_pct"]} for r in attempts]
            return best

        # Warm-up: first message paths, database connections, caches. Not reported.
        for ctx in ctxs:
            step(ctx, 10, 1.0, ctx["senders"], "warm-up")
        if "s1" in a.scenarios:
            for ctx in ctxs:
                ctx["out"]["s1"] = step(ctx, a.s1_rate, a.s1_duration, 1, "S1")
        if "s2" in a.scenarios:
            for ctx in ctxs:
                ctx.update(steps=[], failed_at=None, done=False)
            for rate in a.s2_rates:
                for ctx in ctxs:
                    if ctx["done"]:
                        continue
                    res = step(ctx, rate, a.s2_duration, ctx["senders"], "S2")
                    ctx["steps"].append(res)
                    if ctx["failed_at"] is not None:
                        ctx["done"] = True  # the first failing rate + one more
                    elif not res["ok"]:
                        ctx["failed_at"] = rate
                    time.sleep(1.0)
                if all(ctx["done"] for ctx in ctxs):
                    break
            for ctx in ctxs:
                ok = [s for s in ctx["steps"] if s["ok"]]
                best = max(ok, key=lambda s: s["rate"]) if ok else None
                ctx["out"]["s2"] = {
                    "steps": ctx["steps"],
                    "first_failing_rate": ctx["failed_at"],
                    "highest_ok_rate": best["rate"] if best else 0,
                    "deliveries_per_s_at_best": best["deliveries_per_s"] if best else 0,
                    "cpu_us_per_delivery_at_best": best["cpu_us_per_delivery"] if best else float("nan"),
                }
        if a.profile and "s2" in a.scenarios:
            chat = next((c for c in ctxs if c["target"] == "chat"), ctxs[0])
            prate = a.profile_rate or chat["out"]["s2"]["first_failing_rate"] or a.s2_rates[-1]
            self.results["profile_rate"] = prate
            for ctx in ctxs:
                time.sleep(2.0)
                ctx["out"]["profile"] = step(ctx, prate, a.profile_duration + 2, ctx["senders"], "profile", True)
        for ctx in ctxs:
            self.stop_workers([ctx["sworker"]])
            ctx["out"]["loadgen_cpu_s"] = self.stop_workers(ctx["rworkers"])
        self.stop_servers()
        return {ctx["target"]: ctx["out"] for ctx in ctxs}

    def other_load(self, seconds: float = 1.0) -> float:
        """% of the machine used by processes other than the servers, redis and the load
        generator over ``seconds`` (PostgreSQL counts as other: call it while the servers idle)."""
        own = self.own_pids()
        o0, s0 = sum(proc_cpu(p) for p in own), system_cpu()
        time.sleep(seconds)
        o1, s1 = sum(proc_cpu(p) for p in own), system_cpu()
        return max(0.0, 100 * ((s1[0] - s0[0]) - (o1 - o0) * CLK_TCK) / max(1.0, s1[1] - s0[1]))

    def wait_quiet(self) -> float:
        """Wait (bounded) for a second in which other processes leave the machine mostly idle,
        so a measurement does not start in someone else's burst. Returns that load (%)."""
        a = self.args
        deadline = time.monotonic() + max(0.0, a.quiet_wait)
        while True:
            load = self.other_load(1.0)
            if load <= a.quiet_busy_pct or time.monotonic() >= deadline:
                break
        if load > a.quiet_busy_pct:
            log(f"other processes still use {load:.0f}% of the machine after {a.quiet_wait:g}s; going on")
        return load

    def fanout_step(
        self,
        target: str,
        ctx: dict[str, Any],
        step_no: int,
        rate: float,
        duration: float,
        n_senders: int,
        label: str,
        profile: bool,
    ) -> dict[str, Any]:
        a = self.args
        servers: list[AppServer] = ctx["servers"]
        pids = [s.proc.pid for s in servers if s.proc]
        assert self.redis is not None and self.redis.proc is not None
        own = self.own_pids()
        own0 = sum(proc_cpu(p) for p in own)
        cpu0 = [proc_cpu(p) for p in pids]
        redis0 = proc_cpu(self.redis.proc.pid)
        sys0 = system_cpu()
        pg0 = self.pg_sessions() if target == "chat" else -1
        spies: list[tuple[subprocess.Popen, Path, str]] = []
        if profile:
            spies = self.start_profilers(target, servers, a.profile_duration)
        ctx["sworker"].send(
            "step", step=step_no, rate=float(rate), duration=float(duration), n_senders=n_senders, ack_wait=a.drain_max
        )
        sres = ctx["sworker"].recv(duration + a.drain_max + 60)
        # Drain: wait until every receiver got every sent message, or no progress for a while.
        expected = sres["sent"] * ctx["receivers"]
        last, last_change = -1, time.monotonic()
        deadline = time.monotonic() + a.drain_max
        while time.monotonic() < deadline:
            got = sum(call_all(ctx["rworkers"], "counted", timeout=30, step=step_no))
            if got >= expected:
                break
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > a.drain_idle:
                break
            time.sleep(0.2)
        reports = call_all(ctx["rworkers"], "report", timeout=60, step=step_no)
        sender_deliveries = ctx["sworker"].call("counted", timeout=30, step=step_no)
        cpu1 = [proc_cpu(p) for p in pids]
        redis1 = proc_cpu(self.redis.proc.pid)
        sys1 = system_cpu()
        own1 = sum(proc_cpu(p) for p in own)
        pg1 = self.pg_sessions() if target == "chat" else -1
        profiles = [self.finish_profiler(*spy) for spy in spies]

        same, cross = array("d"), array("d")
        closed: Counter[str] = Counter()
        for r in reports:
            same.frombytes(r["same"])
            cross.frombytes(r["cross"])
            closed.update(r["closed"])
        delivered = sum(r["count"] for r in reports)
        both = array("d", same)
        both.extend(cross)
        all_lat = lat_summary(both)
        server_cpu = sum(cpu1) - sum(cpu0)
        deliveries = delivered + sender_deliveries
        achieved = sres["sent"] / sres["send_elapsed"] if sres["send_elapsed"] > 0 else float("nan")
        ratio = delivered / expected if expected else 0.0
        ok = ratio >= DELIVERED_MIN and all_lat["p99_ms"] < P99_LIMIT_MS and achieved >= 0.95 * rate
        res = {
            "label": label,
            "rate": rate,
            "duration_s": duration,
            "senders": n_senders,
            "sent": sres["sent"],
            "achieved_rate": achieved,
            "sender_max_behind_ms": sres["max_behind_s"] * 1000,
            "acks": sres["acks"],
            "send_errors": sres["errors"],
            "ack_p50_ms": sres["ack_p50_ms"],
            "ack_p99_ms": sres["ack_p99_ms"],
            "expected": expected,
            "delivered": delivered,
            "delivered_ratio": ratio,
            "latency_all": all_lat,
            "latency_same": lat_summary(same),
            "latency_cross": lat_summary(cross),
            "receivers_closed": dict(closed),
            "out_of_order": sum(r["out_of_order"] for r in reports),
            "seq_gaps": sum(r["gaps"] for r in reports),
            "deliveries": deliveries,
            "deliveries_per_s": deliveries / sres["send_elapsed"] if sres["send_elapsed"] > 0 else 0.0,
            "server_cpu_s": server_cpu,
            "server_cpu_per_instance_s": [c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True)],
            "cpu_us_per_delivery": server_cpu / deliveries * 1e6 if deliveries else float("nan"),
            "redis_cpu_s": redis1 - redis0,
            "machine_busy_pct": 100 * (sys1[0] - sys0[0]) / max(1.0, sys1[1] - sys0[1]),
            # Busy time of processes that are not the servers, redis or the load generator, in %
            # of the machine; PostgreSQL counts here (the chat server's queries run there).
            "other_busy_pct": 100 * ((sys1[0] - sys0[0]) - (own1 - own0) * CLK_TCK) / max(1.0, sys1[1] - sys0[1]),
            "pg_sessions_opened": max(0, pg1 - pg0 - 1) if pg0 >= 0 and pg1 >= 0 else None,
            "ok": ok,
        }
        if profiles:
            res["profiles"] = profiles
        log(
            f"{target} {label} {rate:g} msg/s x {duration:g}s: sent {sres['sent']} (achieved {achieved:.1f}/s), "
            f"delivered {ratio * 100:.2f}%, p50 {all_lat['p50_ms']:.1f} p99 {all_lat['p99_ms']:.1f} "
            f"max {all_lat['max_ms']:.1f} ms, CPU {res['cpu_us_per_delivery']:.1f} us/delivery, "
            f"busy {res['machine_busy_pct']:.0f}% (other {res['other_busy_pct']:.0f}%){'' if ok else '  FAIL'}"
            + (f", errors {sres['errors']}" if sres["errors"] else "")
            + (f", closed {dict(closed)}" if closed else "")
        )
        return res

    # --- profiling ---

    def start_profilers(
        self, target: str, servers: list[AppServer], duration: float
    ) -> list[tuple[subprocess.Popen, Path, str]]:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.path.exists(spy):
            log("py-spy not found (pip install py-spy); skipping the profile")
            return []
        out_dir = Path(self.args.json).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        spies = []
        for s in servers:
            assert s.proc is not None
            path = out_dir / f"profile-{target}-{s.instance_id}.txt"
            proc = subprocess.Popen(
                [spy, "record", "--pid", str(s.proc.pid), "--duration", str(int(duration)), "--rate", "100",
                 "--format", "raw", "--output", str(path), "--nonblocking",
                 *(["--gil"] if self.args.profile_threads == "gil" else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            spies.append((proc, path, s.instance_id))
        time.sleep(0.3)
        return spies

    def finish_profiler(self, proc: subprocess.Popen, path: Path, instance: str) -> dict[str, Any]:
        try:
            _, err = proc.communicate(timeout=self.args.profile_duration + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not path.exists():
            return {"instance": instance, "error": (err or b"").decode(errors="replace")[-500:]}
        summary = summarise_profile(path.read_text())
        summary["instance"] = instance
        summary["file"] = str(path)
        return summary

    # --- S3: idle connections ---

    def idle(self, target: str) -> dict[str, Any]:
        a = self.args
        server = self.start_servers(target, 1, "idle")[0]
        assert server.proc is not None
        pid = server.proc.pid
        procs = a.client_procs
        need = max(a.idle_counts) + a.idle_warmup
        tokens = [tok for _, _, tok, _ in self.data["pool"][:need]]
        workers = self.start_workers(
            "idle",
            [
                {"clients": [(server.ws_url, t) for t in part], "deflate": a.deflate, "open_timeout": a.open_timeout}
                for part in split(tokens, procs)
            ],
        )
        out: dict[str, Any] = {"stages": []}
        try:
            warm = call_all(workers, "connect", timeout=120, upto=a.idle_warmup // procs, concurrency=10)
            warm_n = sum(w["connected"] for w in warm)
            time.sleep(2.0)
            rss0, cpu0 = proc_rss_kib(pid), proc_cpu(pid)
            out.update({"warmup_connections": warm_n, "rss_base_kib": rss0})
            log(f"{target} S3: warm-up {warm_n} sockets, RSS {rss0} KiB")
            prev = warm_n
            for count in sorted(a.idle_counts):
                per = (count + a.idle_warmup) // procs
                cpu_s = proc_cpu(pid)
                if target == "chat":
                    time.sleep(a.pg_settle)
                pg0 = self.pg_sessions() if target == "chat" else -1
                xa0 = self.pg_xacts() if target == "chat" else -1
                conc = max(1, a.connect_concurrency // procs)
                profile = a.profile and not out["stages"]
                spies = self.start_profilers(f"{target}-s3", [server], a.profile_duration) if profile else []
                res = call_all(workers, "connect", timeout=a.idle_timeout, upto=per, concurrency=conc)
                profiles = [self.finish_profiler(*spy) for spy in spies]
                elapsed = max(r["finished"] for r in res) - min(r["started"] for r in res)
                added = sum(r["connected"] for r in res)
                failures: Counter[str] = Counter()
                for r in res:
                    failures.update(r["failures"])
                cpu_ramp = proc_cpu(pid) - cpu_s
                time.sleep(a.pg_settle if target == "chat" else a.idle_settle)
                pg1 = self.pg_sessions() if target == "chat" else -1
                xa1 = self.pg_xacts() if target == "chat" else -1
                rss = proc_rss_kib(pid)
                total = prev + added
                open_now = sum(r["open"] for r in res)
                stage = {
                    "target_connections": count,
                    "connections": total,
                    "open_after_settle": open_now,
                    "added": added,
                    "failures": dict(failures),
                    "ramp_s": elapsed,
                    "connects_per_s": added / elapsed if elapsed > 0 else float("nan"),
                    "server_cpu_ms_per_connect": cpu_ramp / added * 1000 if added else float("nan"),
                    "pg_sessions_per_connect": max(0, pg1 - pg0 - 1) / added
                    if pg0 >= 0 and pg1 >= 0 and added
                    else None,
                    "db_xacts_per_connect": (xa1 - xa0) / added if xa0 >= 0 and xa1 >= 0 and added else None,
                    "rss_kib": rss,
                    "kib_per_connection": (rss - rss0) / (total - warm_n) if total > warm_n else float("nan"),
                }
                if profiles:
                    stage["profiles"] = profiles
                out["stages"].append(stage)
                prev = total
                log(
                    f"{target} S3: {total} sockets ({added} in {elapsed:.1f}s = {stage['connects_per_s']:.0f}/s, "
                    f"failures {dict(failures)}), RSS {rss} KiB, {stage['kib_per_connection']:.1f} KiB/connection"
                )
            out["server_cpu_idle_s"] = proc_cpu(pid) - cpu0
            out["returning"] = self.idle_returning(target, pid, workers, prev)
        finally:
            self.stop_servers(kill=True)
            out["loadgen_cpu_s"] = self.stop_workers(workers)
        return out

    def idle_returning(self, target: str, pid: int, workers: list[Worker], total: int) -> dict[str, Any]:
        """Every S3 socket closed and opened again at once, by the same users: the steady state
        of a reconnect (caches warm, users still within their presence grace)."""
        a = self.args
        call_all(workers, "drop", timeout=120)
        time.sleep(a.pg_settle if target == "chat" else 1.0)
        xa0 = self.pg_xacts() if target == "chat" else -1
        cpu0 = proc_cpu(pid)
        per = (total + len(workers) - 1) // len(workers)
        conc = max(1, a.connect_concurrency // len(workers))
        spies = self.start_profilers(f"{target}-s3-back", self.servers[-1:], a.profile_duration) if a.profile else []
        res = call_all(workers, "connect", timeout=a.idle_timeout, upto=per, concurrency=conc)
        profiles = [self.finish_profiler(*spy) for spy in spies]
        elapsed = max(r["finished"] for r in res) - min(r["started"] for r in res)
        added = sum(r["connected"] for r in res)
        cpu = proc_cpu(pid) - cpu0
        failures: Counter[str] = Counter()
        for r in res:
            failures.update(r["failures"])
        if target == "chat":
            time.sleep(a.pg_settle)
        xa1 = self.pg_xacts() if target == "chat" else -1
        out = {
            "connects": added,
            "failures": dict(failures),
            "connects_per_s": added / elapsed if elapsed > 0 else float("nan"),
            "server_cpu_ms_per_connect": cpu / added * 1000 if added else float("nan"),
            "db_xacts_per_connect": (xa1 - xa0) / added if xa0 >= 0 and xa1 >= 0 and added else None,
        }
        if profiles:
            out["profiles"] = profiles
        log(
            f"{target} S3 returning: {added} reconnects at {out['connects_per_s']:.0f}/s, "
            f"{out['server_cpu_ms_per_connect']:.2f} ms CPU each, database transactions per connect "
            f"{out['db_xacts_per_connect']}"
        )
        return out

    # --- S4: reconnect storm ---

    def storm(self, target: str) -> dict[str, Any]:
        a = self.args
        servers = self.start_servers(target, max(2, a.instances), "storm")
        urls = [s.ws_url for s in servers]
        pool = self.data["pool"][: a.storm_clients]
        clients = [(i % len(urls), tok, conv) for i, (_, _, tok, conv) in enumerate(pool)]
        convs = sorted({conv for _, _, conv in clients})
        cfgs = []
        for k, part in enumerate(split(clients, a.client_procs)):
            cfg: dict[str, Any] = {
                "urls": urls,
                "clients": part,
                "jitter": a.storm_jitter,
                "give_up_after": a.storm_timeout,
                "open_timeout": a.open_timeout,
                "deflate": a.deflate,
            }
            if k == 0:
                cfg.update(sender_token=self.data["storm_sender"][2], sender_instance=len(urls) - 1)
            cfgs.append(cfg)
        workers = self.start_workers("storm", cfgs)
        out: dict[str, Any] = {}
        try:
            t0 = time.monotonic()
            conc = max(1, a.connect_concurrency // len(workers))
            conns = call_all(workers, "connect", timeout=a.idle_timeout, concurrency=conc)
            connected = sum(c["connected"] for c in conns)
            connect_s = time.monotonic() - t0
            failures: Counter[str] = Counter()
            for c in conns:
                failures.update(c["failures"])
            log(f"{target} S4: {connected}/{len(clients)} clients connected in {time.monotonic() - t0:.1f}s"
                + (f", failures {dict(failures)}" if failures else ""))  # fmt: skip
            # One message in every conversation; wait until every client saw its own.
            before = workers[0].call("send_round", timeout=120, conversations=convs)
            if before["errors"] or before["unanswered"]:
                raise RuntimeError(f"{target} S4: sends before the kill failed: {before['errors']}")
            deadline = time.monotonic() + 30
            status: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                status = call_all(workers, "status", timeout=30, seqs=before["seqs"])
                if sum(s["at_seq"] for s in status) >= connected:
                    break
                time.sleep(0.2)
            at_seq = sum(s["at_seq"] for s in status)
            victim = servers[0]
            assert victim.proc is not None
            on_victim = sum(1 for inst, _, _ in clients if inst == 0)
            time.sleep(1.0)
            t_kill = time.monotonic()
            victim.proc.kill()
            log(f"{target} S4: SIGKILL {victim.instance_id} ({on_victim} clients on it)")
            spies = self.start_profilers(f"{target}-s4", servers[1:2], a.profile_duration) if a.profile else []
            # One more message in every conversation, through the survivor, while they reconnect.
            workers[0].send("send_round", conversations=convs)
            deadline = t_kill + a.storm_timeout
            after: dict[str, Any] | None = None
            while time.monotonic() < deadline:
                time.sleep(0.25)
                if after is None and workers[0].conn.poll(0):
                    after = workers[0].recv(1)
                if after is None:
                    continue
                status = call_all(workers, "status", timeout=30)
                dropped = sum(s["dropped"] for s in status)
                resumed = sum(s["resumed"] for s in status)
                if dropped >= on_victim and resumed >= dropped:
                    break
            if after is None:
                after = workers[0].recv(120)
            profiles = [self.finish_profiler(*spy) for spy in spies]
            # Groups the survivor's sockets need that have no subscriber in Redis right now (the
            # killed instance's subscriptions went with its connection).
            needed = {f"u.{uid}" for uid, _, _, _ in pool} | {f"c.{conv}" for conv in convs}
            unsubscribed = self.unsubscribed(needed) if target == "chat" else None
            time.sleep(2.0)  # the last live deliveries
            reports = call_all(workers, "report", timeout=60)
            # After the storm: one more message in every conversation; does every client get it live?
            live: dict[str, Any] = {}
            check = workers[0].call("send_round", timeout=180, conversations=convs)
            t_sent = time.monotonic()
            for limit in (2.0, 10.0):
                while time.monotonic() - t_sent < limit:
                    got = sum(s["at_seq"] for s in call_all(workers, "status", timeout=30, seqs=check["seqs"]))
                    if got >= connected:
                        break
                    time.sleep(0.1)
                live[f"received_within_{limit:g}s"] = got
            live.update(clients=connected, send_errors=check["errors"])
            if target == "chat":
                live["groups_without_subscriber_after_resume"] = unsubscribed
                live["groups_without_subscriber_after_check"] = self.unsubscribed(needed)
            health = self.health(servers[1]) if target == "chat" else None
            rows = [c for r in reports for c in r["clients"]]
            dropped_rows = [c for c in rows if c["dropped_at"] is not None]
            times = sorted(c["resumed_at"] - t_kill for c in dropped_rows if c["resumed_at"] is not None)
            victims = [c for c in rows if c["inst"] == 0]
            v_times = sorted(c["resumed_at"] - t_kill for c in victims if c["resumed_at"] is not None)
            collateral = [c for c in dropped_rows if c["inst"] != 0]
            final = after["seqs"]
            out = {
                "clients": connected,
                "connect_s": connect_s,
                "connect_failures": dict(failures),
                "conversations": len(convs),
                "at_seq_before_kill": at_seq,
                "on_killed_instance": on_victim,
                "resumed": len(v_times),
                "resume_p50_s": pct(v_times, 50),
                "resume_p99_s": pct(v_times, 99),
                "resume_max_s": v_times[-1] if v_times else float("nan"),
                # Of that: until the new socket's hello, and from the hello to the resume ack.
                "reconnected_p50_s": pct(sorted(c["reopened_at"] - t_kill for c in victims if c["reopened_at"]), 50),
                "reconnected_max_s": max(
                    (c["reopened_at"] - t_kill for c in victims if c["reopened_at"]), default=None
                ),
                "resume_ack_wait_p50_s": pct(
                    sorted(c["resumed_at"] - c["reopened_at"] for c in victims if c["resumed_at"] and c["reopened_at"]),
                    50,
                ),
                "resume_ack_wait_max_s": max(
                    (c["resumed_at"] - c["reopened_at"] for c in victims if c["resumed_at"] and c["reopened_at"]),
                    default=None,
                ),
                "all_resumed": len(v_times) == on_victim and len(times) == len(dropped_rows),
                # Clients of the surviving instance that lost their socket during the storm too.
                "survivor_clients_dropped": len(collateral),
                "survivor_clients_drop_codes": dict(Counter(str(c["close_code"]) for c in collateral)),
                "dropped": len(dropped_rows),
                "dropped_resumed": len(times),
                "dropped_resume_max_s": times[-1] if times else float("nan"),
                "reconnect_attempts": dict(Counter(c["attempts"] for c in dropped_rows)),
                "missing_messages": sum(c["missing"] for c in rows),
                "clients_behind_final_seq": sum(1 for c in rows if c["last_seq"] < final.get(c["conv"], 0)),
                "send_after_kill": {"acked": len(final), "errors": after["errors"], "unanswered": after["unanswered"]},
                "errors": dict(Counter(c["error"] for c in dropped_rows if c["error"] and c["resumed_at"] is None)),
                "live_after_storm": live,
                # The survivor's own count of its sockets (/api/health) against the clients on it.
                "survivor_health_connections": health,
                "survivor_clients": 1 + sum(1 for c in rows if c["dropped_at"] is None or c["resumed_at"] is not None),
            }
            if profiles:
                out["profiles"] = profiles
            log(
                f"{target} S4: {out['resumed']}/{on_victim} clients of the killed instance resumed; p50 "
                f"{out['resume_p50_s']:.2f}s max {out['resume_max_s']:.2f}s; survivor's clients dropped "
                f"{out['survivor_clients_dropped']} {out['survivor_clients_drop_codes']}; missing "
                f"{out['missing_messages']}, behind final seq {out['clients_behind_final_seq']}, "
                f"sends after the kill {out['send_after_kill']}; after the storm {live}; survivor's health "
                f"connections.local {health}"
            )
        finally:
            self.stop_servers(kill=True)
            out["loadgen_cpu_s"] = self.stop_workers(workers)
        return out

    # --- driver ---

    def run(self) -> dict[str, Any]:
        a = self.args
        for target in a.targets:
            self.results["targets"][target] = {}
        # A scenario that fails is recorded as such and the run goes on with the next one.
        if {"s1", "s2"} & set(a.scenarios):
            try:
                for target, out in self.fanout(a.targets).items():
                    self.results["targets"][target]["fanout"] = out
            except Exception as exc:
                self.scenario_failed("fanout", a.targets, exc)
        for scenario, func in (("s3", self.idle), ("s4", self.storm)):
            if scenario in a.scenarios:
                for target in a.targets:
                    time.sleep(2.0)
                    noise = self.wait_quiet()
                    try:
                        self.results["targets"][target][scenario] = func(target)
                        self.results["targets"][target][scenario]["noise_before_pct"] = noise
                    except Exception as exc:
                        self.scenario_failed(scenario, [target], exc)
        self.results["summary"] = summarise(self.results)
        return self.results

    def scenario_failed(self, scenario: str, targets: list[str], exc: Exception) -> None:
        log(f"{scenario} failed for {', '.join(targets)}: {type(exc).__name__}: {exc}")
        for target in targets:
            self.results["targets"][target][scenario] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        for w in list(self.workers):
            with contextlib.suppress(Exception):
                self.stop_workers([w])
        self.stop_servers(kill=True)


# --- profile summary ----------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
APP_DIRS = ("chat", "presence", "chatproject", "health")


def _frame(frame: str) -> tuple[str, str, bool]:
    """(``function (file)``, package, in application code) of one py-spy frame."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?", False
    path = m.group("file").replace("\\", "/")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    path = re.sub(r"^.*?/(chat|presence|chatproject|health)/", r"\1/", path)
    top = path.split("/", 1)[0].removesuffix(".py")
    app = top in APP_DIRS and "/" in path
    return f"{m.group('func')} ({path})", (f"app:{top}" if app else top), app


def summarise_profile(text: str, top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed (``--format raw``) output: self and inclusive samples per function,
    self samples per package, samples per thread kind, and ``app_attributed``: each sample
    charged to the innermost application frame on its stack (the application code that caused
    the work, including what it called in libraries)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    mods: Counter[str] = Counter()
    app_attr: Counter[str] = Counter()
    app_incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f]
        while frames and frames[0].startswith(("process ", "thread ")):
            frames.pop(0)
        if not frames:
            continue
        total += count
        threads["worker threads (sync_to_async)" if frames[0].startswith("Thread._bootstrap") else "event loop"] += (
            count
        )
        parsed = [_frame(f) for f in frames]
        self_c[parsed[-1][0]] += count
        mods[parsed[-1][1]] += count
        for name in {name for name, _, _ in parsed}:
            incl[name] += count
        apps = [name for name, _, app in parsed if app]
        app_attr[apps[-1] if apps else "(no application frame)"] += count
        for name in set(apps):
            app_incl[name] += count

    def table(c: Counter[str]) -> list[list[Any]]:
        return [[name, n, round(100 * n / total, 1) if total else 0.0] for name, n in c.most_common(top)]

    return {
        "samples": total,
        "threads": table(threads),
        "self_by_package": table(mods),
        "self": table(self_c),
        "inclusive": table(incl),
        "app_inclusive": table(app_incl),
        "app_attributed": table(app_attr),
    }


# --- summary and table --------------------------------------------------------------------------


def _get(d: Any, *path: Any, default: Any = None) -> Any:
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return default
    return d


def _ratio(x: Any, y: Any) -> float | None:
    try:
        if x is None or y is None or y == 0 or x != x or y != y:
            return None
        return float(x) / float(y)
    except (TypeError, ValueError):
        return None


def s1_split(s1: dict[str, Any] | None, instances: int) -> dict[str, float] | None:
    """S1 has one sender socket, on instance 0: the other instances only fan out. Their CPU per
    delivery is the fan-out cost; what instance 0 spends beyond that for its own deliveries is
    the cost of handling the sends (parse, persist, publish, ack), per message."""
    if not s1 or instances < 2:
        return None
    cpu = s1.get("server_cpu_per_instance_s") or []
    if len(cpu) != instances:
        return None
    sender_deliveries = s1["deliveries"] - s1["delivered"]
    others = s1["latency_cross"]["n"] + sender_deliveries * (instances - 1) / instances
    own = s1["latency_same"]["n"] + sender_deliveries / instances
    if others <= 0 or not s1["sent"]:
        return None
    per_delivery = sum(cpu[1:]) / others
    return {
        "fanout_us_per_delivery": per_delivery * 1e6,
        "send_path_ms_per_message": (cpu[0] - per_delivery * own) / s1["sent"] * 1e3,
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    t = results["targets"]
    for target in t.values():
        fan = target.get("fanout") or {}
        split = s1_split(fan.get("s1"), fan.get("instances", 0))
        if split:
            fan["s1"]["cost_split"] = split
    chat, raw = t.get("chat", {}), t.get("raw", {})

    def common_rate_cpu() -> tuple[float | None, float | None, float | None]:
        cs = {s["rate"]: s for s in _get(chat, "fanout", "s2", "steps", default=[]) if s["ok"]}
        rs = {s["rate"]: s for s in _get(raw, "fanout", "s2", "steps", default=[]) if s["ok"]}
        both = sorted(set(cs) & set(rs))
        if not both:
            return None, None, None
        r = both[-1]
        return r, cs[r]["cpu_us_per_delivery"], rs[r]["cpu_us_per_delivery"]

    rate, c_cpu, r_cpu = common_rate_cpu()
    checks = []

    def check(name: str, c: Any, r: Any, target: str, ok: bool | None, unit: str = "") -> None:
        checks.append({"name": name, "chat": c, "raw": r, "ratio": _ratio(c, r), "target": target, "ok": ok,
                       "unit": unit})  # fmt: skip

    s1c, s1r = _get(chat, "fanout", "s1", "cpu_us_per_delivery"), _get(raw, "fanout", "s1", "cpu_us_per_delivery")
    ratio = _ratio(s1c, s1r)
    check("CPU per delivery, S1", s1c, s1r, "<= 2x raw", None if ratio is None else ratio <= 2.0, "us")
    if rate is not None:
        ratio = _ratio(c_cpu, r_cpu)
        check(f"CPU per delivery, S2 at {rate:g} msg/s", c_cpu, r_cpu, "<= 2x raw",
              None if ratio is None else ratio <= 2.0, "us")  # fmt: skip
    c2, r2 = _get(chat, "fanout", "s2", "highest_ok_rate"), _get(raw, "fanout", "s2", "highest_ok_rate")
    ratio = _ratio(c2, r2)
    check("S2 highest OK rate", c2, r2, ">= 0.75x raw", None if ratio is None else ratio >= 0.75, "msg/s")
    c1, r1 = _get(chat, "fanout", "s1", "latency_cross", "p99_ms"), _get(raw, "fanout", "s1", "latency_cross", "p99_ms")
    ratio = _ratio(c1, r1)
    check("S1 cross-instance p99", c1, r1, "<= 1.5x raw", None if ratio is None else ratio <= 1.5, "ms")
    for i, stage in enumerate(_get(chat, "s3", "stages", default=[])):
        rstage = _get(raw, "s3", "stages", i, default={})
        n = stage["target_connections"]
        ratio = _ratio(stage["kib_per_connection"], rstage.get("kib_per_connection"))
        check(f"S3 memory per idle connection ({n})", stage["kib_per_connection"], rstage.get("kib_per_connection"),
              "<= 1.5x raw", None if ratio is None else ratio <= 1.5, "KiB")  # fmt: skip
        ratio = _ratio(stage["connects_per_s"], rstage.get("connects_per_s"))
        check(f"S3 connect rate ({n})", stage["connects_per_s"], rstage.get("connects_per_s"), ">= 0.5x raw",
              None if ratio is None else ratio >= 0.5, "conn/s")  # fmt: skip
    c4, r4 = _get(chat, "s4", "resume_max_s"), _get(raw, "s4", "resume_max_s")
    if c4 is not None:
        check("S4 all resumed, max", c4, r4, "<= 10 s, all", bool(_get(chat, "s4", "all_resumed")) and c4 <= 10.0, "s")
    return {"checks": checks, "common_ok_rate": rate}


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{nd}f}"
    return str(x)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    t = results["targets"]
    names = [n for n in ("chat", "raw") if n in t]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, Linux {m['kernel']}, Python {m['python']}",
        f"chat: uvicorn --loop uvloop --http httptools --ws {cfg['ws']} ({cfg['server']}), "
        f"channel layer {cfg.get('layer', 'pubsub')}, {cfg['instances']} instances; "
        f"raw: bench/raw_server.py, {cfg['instances']} instances; one redis-server, "
        f"PostgreSQL on 127.0.0.1; {cfg['receivers']} receivers, {cfg['senders']} sender sockets",
        "",
    ]

    def row(label: str, vals: list[str], extra: str = "") -> None:
        lines.append(f"  {label:<44}" + "".join(f"{v:>14}" for v in vals) + (f"   {extra}" if extra else ""))

    hdr = names + (["chat/raw"] if len(names) == 2 else [])
    if any(_get(t[n], "fanout", "s1") for n in names):
        lines.append(f"S1 latency: {cfg['s1_rate']:g} msg/s for {cfg['s1_duration']:g} s, one sender socket")
        row("", hdr)
        for kind in ("same", "cross"):
            for p in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
                vals = [_get(t[n], "fanout", "s1", f"latency_{kind}", p) for n in names]
                r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
                row(f"{kind}-instance {p.replace('_ms', '')} (ms)", [_f(v) for v in vals] + r)
        vals = [_get(t[n], "fanout", "s1", "delivered_ratio") for n in names]
        row("delivered / expected (%)", [_f(v * 100 if v is not None else None, 2) for v in vals])
        vals = [_get(t[n], "fanout", "s1", "cpu_us_per_delivery") for n in names]
        r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
        row("server CPU per delivery (us)", [_f(v) for v in vals] + r)
        for key, label, nd in (("fanout_us_per_delivery", "  fan-out only, per delivery (us)", 1),
                               ("send_path_ms_per_message", "  send path, per message (ms CPU)", 2)):  # fmt: skip
            vals = [_get(t[n], "fanout", "s1", "cost_split", key) for n in names]
            r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
            row(label, [_f(v, nd) for v in vals] + r)
        vals = [_get(t[n], "fanout", "s1", "ack_p50_ms") for n in names]
        row("message.send ack p50 (ms)", [_f(v) for v in vals])
        lines.append("")
    if any(_get(t[n], "fanout", "s2") for n in names):
        lines.append(f"S2 throughput: {cfg['s2_duration']:g} s per rate, {cfg['senders']} sender sockets; "
                     f"OK = >= {DELIVERED_MIN * 100:g}% delivered and p99 < {P99_LIMIT_MS:g} ms")  # fmt: skip
        lines.append(
            f"  {'rate':>6}  " + "  ".join(
                f"{n + ': deliv%':>13} {'p50':>7} {'p99':>7} {'max':>7} {'us/dlv':>7} {'noise%':>6} {'ok':>3}"
                for n in names
            )
        )  # fmt: skip
        rates = sorted({s["rate"] for n in names for s in _get(t[n], "fanout", "s2", "steps", default=[])})
        for rate in rates:
            parts = []
            for n in names:
                s = next((s for s in _get(t[n], "fanout", "s2", "steps", default=[]) if s["rate"] == rate), None)
                if s is None:
                    parts.append(f"{'-':>13} {'':>7} {'':>7} {'':>7} {'':>7} {'':>6} {'':>3}")
                    continue
                la = s["latency_all"]
                parts.append(
                    f"{s['delivered_ratio'] * 100:>13.2f} {la['p50_ms']:>7.1f} {la['p99_ms']:>7.1f} "
                    f"{la['max_ms']:>7.0f} {s['cpu_us_per_delivery']:>7.1f} {s.get('noise_pct', 0):>6.0f} "
                    f"{'yes' if s['ok'] else 'NO':>3}"
                )
            lines.append(f"  {rate:>6g}  " + "  ".join(parts))
        row("", hdr)
        vals = [_get(t[n], "fanout", "s2", "highest_ok_rate") for n in names]
        r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
        row("highest OK rate (msg/s)", [_f(v) for v in vals] + r)
        vals = [_get(t[n], "fanout", "s2", "deliveries_per_s_at_best") for n in names]
        r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
        row("deliveries/s there", [_f(v, 0) for v in vals] + r)
        lines.append("")
    if any(_get(t[n], "s3") for n in names):
        lines.append("S3 idle connections on one instance")
        row("", hdr)
        stages = max(len(_get(t[n], "s3", "stages", default=[])) for n in names)
        for i in range(stages):
            count = next(_get(t[n], "s3", "stages", i, "target_connections") for n in names)
            for key, label, nd in (("kib_per_connection", "KiB per connection", 1),
                                   ("connects_per_s", "connections/s during ramp", 0),
                                   ("server_cpu_ms_per_connect", "server CPU per connect (ms)", 2)):  # fmt: skip
                vals = [_get(t[n], "s3", "stages", i, key) for n in names]
                r = [_f(_ratio(vals[0], vals[1]), 2) + "x"] if len(vals) == 2 else []
                row(f"{count}: {label}", [_f(v, nd) for v in vals] + r)
            vals = [_get(t[n], "s3", "stages", i, "failures") for n in names]
            if any(vals):
                row(f"{count}: connect failures", [str(v) for v in vals])
        lines.append("")
    if any(_get(t[n], "s4") for n in names):
        lines.append(f"S4 reconnect storm: {cfg['storm_clients']} clients on 2 instances, one SIGKILLed")
        row("", hdr)
        for key, label, nd in (("connect_s", "connecting all clients first (s)", 1),
                               ("on_killed_instance", "clients on the killed instance", 0),
                               ("resumed", "resumed on the survivor", 0),
                               ("resume_p50_s", "time to resumed, p50 (s)", 2),
                               ("resume_max_s", "time to resumed, max (s)", 2),
                               ("reconnected_max_s", "  of which until hello, max (s)", 2),
                               ("resume_ack_wait_max_s", "  hello to resume ack, max (s)", 2),
                               ("survivor_clients_dropped", "survivor's own clients dropped", 0),
                               ("missing_messages", "seq gaps left at the clients", 0),
                               ("live_after_storm.received_within_2s", "next message live within 2 s", 0),
                               ("live_after_storm.received_within_10s", "next message live within 10 s", 0),
                               ("survivor_health_connections", "survivor's /api/health connections.local", 0),
                               ("survivor_clients", "  sockets actually open on it", 0),
                               ("clients_behind_final_seq", "clients missing the last message", 0)):  # fmt: skip
            vals = [_get(t[n], "s4", *key.split(".")) for n in names]
            row(label, [_f(v, nd) for v in vals])
        lines.append("")
    failed = [(n, sc, t[n][sc]["error"]) for n in names for sc in t[n] if "error" in (t[n][sc] or {})]
    if failed:
        lines.append("Scenarios that did not complete")
        lines.extend(f"  {n} {sc}: {err.splitlines()[0][:300]}" for n, sc, err in failed)
        lines.append("")
    checks = _get(results, "summary", "checks", default=[])
    if checks:
        lines.append("Targets (issue 6)")
        for c in checks:
            verdict = {True: "met", False: "MISSED", None: "n/a"}[c["ok"]]
            lines.append(
                f"  {c['name']:<44}{_f(c['chat'], 1):>12} {c['unit']:<6} vs raw {_f(c['raw'], 1):>10}"
                f"  = {_f(c['ratio'], 2):>5}x  (target {c['target']}): {verdict}"
            )
    mode = "--gil: the thread holding the GIL" if cfg.get("profile_threads") == "gil" else "every active thread"
    for n in names:
        for title, prof in (
            (f"S2 step at {results.get('profile_rate')} msg/s", _get(t[n], "fanout", "profile", "profiles")),
            ("S3 ramp (first stage)", _get(t[n], "s3", "stages", 0, "profiles")),
            ("S4, the survivor after the kill", _get(t[n], "s4", "profiles")),
        ):
            if prof:
                lines.append("")
                lines.extend(render_profile(f"Profile of {n}, {title} (py-spy {mode}, % of samples)", prof))
    return "\n".join(lines)


def render_profile(title: str, profiles: list[dict[str, Any]], top: int = 12) -> list[str]:
    lines = [title]
    for p in profiles:
        if "self" not in p:
            lines.append(f"  {p.get('instance')}: {p.get('error')}")
            continue
        lines.append(f"  {p['instance']}: {p['samples']} samples (100 Hz); "
                     + ", ".join(f"{name} {share}%" for name, _, share in p["threads"]))  # fmt: skip
        lines.append("    self time by package: " + ", ".join(
            f"{name} {share}%" for name, _, share in p["self_by_package"][:8]))  # fmt: skip
        lines.append("    charged to the innermost application frame:")
        for name, _, share in p["app_attributed"][:top]:
            lines.append(f"      {share:>5.1f}%  {name}")
        lines.append("    self time by function:")
        for name, _, share in p["self"][:top]:
            lines.append(f"      {share:>5.1f}%  {name}")
    return lines


# --- CLI ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    csv_f = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    csv_i = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    csv_s = lambda s: [x.strip().lower() for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", type=csv_s, default=["s1", "s2", "s3", "s4"], help="s1,s2,s3,s4")
    p.add_argument("--targets", type=csv_s, default=["chat", "raw"], help="chat,raw")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    p.add_argument("--ws", default="websockets-sansio", help="uvicorn --ws implementation")
    p.add_argument(
        "--layer",
        choices=["pubsub", "core"],
        default="pubsub",
        help="the chat server's CHANNEL_LAYER_BACKEND: RedisPubSubChannelLayer or RedisChannelLayer",
    )
    p.add_argument("--source", default=str(ROOT), help="source tree of the chat server (default: this checkout)")
    p.add_argument("--source-rev", default="", help="run the chat server from this git revision (exported)")
    p.add_argument("--receivers", type=int, default=200)
    p.add_argument("--senders", type=int, default=4, help="sender sockets (users) for S2; S1 uses one")
    p.add_argument("--client-procs", type=int, default=2, help="load-generator processes per role")
    p.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    p.add_argument("--s1-rate", type=float, default=20)
    p.add_argument("--s1-duration", type=float, default=15)
    p.add_argument("--s2-rates", type=csv_f, default=[10, 20, 50, 100, 150, 200, 300, 400])
    p.add_argument("--s2-duration", type=float, default=5)
    p.add_argument("--drain-max", type=float, default=15, help="max seconds to wait for deliveries after a step")
    p.add_argument("--settle-max", type=float, default=60, help="max seconds to wait for unanswered sends")
    p.add_argument("--drain-idle", type=float, default=3, help="stop draining after this long without progress")
    p.add_argument("--idle-counts", type=csv_i, default=[5000, 10000])
    p.add_argument("--idle-warmup", type=int, default=50)
    p.add_argument("--idle-settle", type=float, default=3)
    p.add_argument("--pg-settle", type=float, default=11, help="wait for PostgreSQL to flush its counters (S3)")
    p.add_argument("--server-deflate", action="store_true", help="the chat server accepts permessage-deflate")
    p.add_argument("--idle-timeout", type=float, default=600)
    p.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in flight (S3, S4)")
    p.add_argument("--storm-clients", type=int, default=2000)
    p.add_argument("--pool-group", type=int, default=10, help="pool users (S3, S4) per conversation")
    p.add_argument("--open-timeout", type=float, default=120, help="handshake and hello timeout (S3, S4)")
    p.add_argument("--storm-jitter", type=float, default=0.0, help="random delay before the first reconnect")
    p.add_argument("--storm-timeout", type=float, default=120, help="a client gives up reconnecting after this")
    p.add_argument("--profile", action="store_true", help="py-spy every instance during one extra S2 step")
    p.add_argument("--profile-rate", type=float, default=0, help="default: the chat server's first failing S2 rate")
    p.add_argument("--profile-duration", type=float, default=10)
    p.add_argument(
        "--profile-threads",
        choices=["gil", "active"],
        default="gil",
        help="gil: sample only the thread holding the GIL (where the CPU goes); active: every non-idle thread",
    )
    p.add_argument("--quiet-wait", type=float, default=60, help="max seconds to wait for an idle machine per step")
    p.add_argument("--quiet-busy-pct", type=float, default=20, help="machine busy %% that counts as idle")
    p.add_argument("--noisy-pct", type=float, default=15, help="other processes' %% of the machine that is noise")
    p.add_argument("--noisy-retries", type=int, default=2, help="repeats of a step that failed in noise")
    p.add_argument("--render", default="", help="print the table of a saved JSON result and exit")
    p.add_argument("--json", default=str(BENCH / "results" / "latest.json"))
    p.add_argument("--keep-logs", action="store_true", help="keep the work dir (server logs are copied next to --json)")
    args = p.parse_args(argv)
    unknown = set(args.scenarios) - {"s1", "s2", "s3", "s4"}
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}")
    if not args.idle_counts:
        args.idle_counts = [0]
    return args


def main() -> int:
    args = parse_args()
    if args.render:
        results = json.loads(Path(args.render).read_text())
        results["summary"] = summarise(results)
        print(render(results))
        return 0
    bench = Bench(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        bench.setup()
        results = bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.teardown()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(render(results))
    log(f"JSON written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
