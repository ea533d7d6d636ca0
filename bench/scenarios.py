"""The scenarios: S1 latency and S2 throughput steps (fan-out), S3 idle sockets and connects on
one instance (new and returning users), S4 a reconnect storm after a SIGKILL."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

from bench import memtrace
from bench.cluster import (
    BENCH,
    CLK_TCK,
    ROOT,
    ChatServer,
    RawServer,
    Worker,
    call_all,
    log,
    machine_info,
    proc_cpu,
    proc_rss_kib,
    split,
    system_cpu,
)
from bench.loadgen import raise_nofile
from bench.report import DELIVERED_MIN, P99_LIMIT_MS, lat_summary, pct, summarise, summarise_profile
from harness.processes import AppServer, RedisServer, app_env
from harness.redis_cluster import RedisCluster

# The fan-out target that runs this project on a Redis Cluster (``--redis cluster``): the same
# instances with REDIS_CLUSTER=true on three masters (and a replica each), events on sharded
# pub/sub. The raw baseline stays on one Redis.
CLUSTER_TARGET = "chat-cluster"

# --- the benchmark ------------------------------------------------------------------------------


def log_memtrace(trace: dict[str, Any]) -> None:
    """The traced bytes per socket of an S3 stage, the largest sources first."""
    log(f"tracemalloc: {trace['bytes_per_socket']:.0f} bytes per socket over {trace['sockets']} sockets")
    for row in trace["by_lineno"][:25]:
        log(f"  {row['bytes_per_socket']:8.1f} B  {row['count_per_socket']:6.2f} blocks  {row['where']}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
        self.redis: RedisServer | None = None
        self.redis_cluster: RedisCluster | None = None
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

    def chat_env(self, on_cluster: bool = False) -> dict[str, str]:
        assert self.redis is not None
        if on_cluster:
            assert self.redis_cluster is not None
            host, port = self.redis_cluster.startup
            redis_env = {"REDIS_CLUSTER": "true", "REDIS_HOST": host, "REDIS_PORT": str(port)}
        else:
            redis_env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.redis.port)}
        return app_env(
            PYTHONPATH=str(self.source),
            CHAT_MODE="cluster",
            **redis_env,
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
        if "cluster" in self.args.redis:
            self.redis_cluster = RedisCluster(masters=3, replicas_per_master=1).start()
            ports = ", ".join(str(n.port) for n in self.redis_cluster.masters())
            log(f"Redis Cluster: masters on 127.0.0.1 ports {ports}, one replica each")
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
                *(["--cluster-fanout"] if "cluster" in self.args.redis else []),
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
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
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
        if self.redis_cluster is not None:
            self.redis_cluster.flushall()

    def start_servers(
        self, target: str, count: int, tag: str, flush: bool = True, extra_env: dict[str, str] | None = None
    ) -> list[AppServer]:
        if flush:
            self.flush_redis()
        servers: list[AppServer] = []
        for i in range(count):
            name = f"{target}-{tag}-{i}"
            if target in ("chat", CLUSTER_TARGET):
                env = {**self.chat_env(target == CLUSTER_TARGET), **(extra_env or {})}
                chat = ChatServer(self.args.server, name, env, self.work)
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
        if self.redis_cluster is not None:
            pids += [n.proc.pid for n in self.redis_cluster.nodes if n.proc is not None]
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

    # --- Redis CPU (INFO cpu of each node) ---

    def redis_nodes(self, target: str) -> list[tuple[str, str, Any]]:
        """(address, role, node) of the Redis nodes ``target`` runs on: the one redis-server, or
        every node of the cluster (masters first, as the cluster sees them now)."""
        if target == CLUSTER_TARGET:
            assert self.redis_cluster is not None
            masters = self.redis_cluster.masters()
            ports = {n.port for n in masters}
            replicas = [n for n in self.redis_cluster.nodes if n.port not in ports]
            return [(f"127.0.0.1:{n.port}", "master", n) for n in masters] + [
                (f"127.0.0.1:{n.port}", "replica", n) for n in replicas
            ]
        assert self.redis is not None
        return [(f"127.0.0.1:{self.redis.port}", "master", self.redis)]

    @staticmethod
    def redis_cpu_s(node: Any) -> float:
        """used_cpu_sys + used_cpu_user of one Redis node (its own CPU since start, seconds)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)
        try:
            info = client.info("cpu")
        except redis.RedisError:
            return float("nan")
        finally:
            client.close()
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    # --- S1 + S2: fan-out ---

    def fanout_start(self, target: str) -> dict[str, Any]:
        a = self.args
        servers = self.start_servers(target, a.instances, "fanout", flush=False)
        urls = [s.ws_url for s in servers]
        # The cluster target has a conversation and users of its own (it shares the database).
        data = self.data["cluster"] if target == CLUSTER_TARGET else self.data
        receivers = [(urls[i % len(urls)], tok, i % len(urls)) for i, (_, _, tok) in enumerate(data["receivers"])]
        senders = [(urls[i % len(urls)], tok, i % len(urls)) for i, (_, _, tok) in enumerate(data["senders"])]
        conv = data["conv_fanout"]
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
        nodes = self.redis_nodes(target)
        own0 = sum(proc_cpu(p) for p in own)
        cpu0 = [proc_cpu(p) for p in pids]
        redis0 = proc_cpu(self.redis.proc.pid)
        nodes0 = [self.redis_cpu_s(node) for _, _, node in nodes]
        sys0 = system_cpu()
        pg0 = self.pg_sessions() if target != "raw" else -1
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
        nodes1 = [self.redis_cpu_s(node) for _, _, node in nodes]
        sys1 = system_cpu()
        own1 = sum(proc_cpu(p) for p in own)
        pg1 = self.pg_sessions() if target != "raw" else -1
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
            # INFO cpu of every node this target's Redis has, per delivery and per message sent:
            # what a shard spends on the step (publishes, subscriptions, the scripts of sends).
            "redis_nodes": [
                {
                    "node": address,
                    "role": role,
                    "cpu_s": c1 - c0,
                    "us_per_delivery": (c1 - c0) / deliveries * 1e6 if deliveries else float("nan"),
                    "us_per_message": (c1 - c0) / sres["sent"] * 1e6 if sres["sent"] else float("nan"),
                }
                for (address, role, _), c0, c1 in zip(nodes, nodes0, nodes1, strict=True)
            ],
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
        trace_dir = self.work / "memtrace"
        tracing = a.trace_memory and target == "chat"
        if tracing:
            trace_dir.mkdir(exist_ok=True)
        env = {"BENCH_MEMTRACE_DIR": str(trace_dir)} if tracing else None
        server = self.start_servers(target, 1, "idle", extra_env=env)[0]
        assert server.proc is not None
        pid = server.proc.pid
        snaps: list[tuple[Path, int]] = []

        def snapshot(sockets: int) -> None:
            n = len(snaps)
            os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + 300
            while not (trace_dir / f"snap-{n}.done").exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            snaps.append((trace_dir / f"snap-{n}.pickle", sockets))

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
            if tracing:
                snapshot(warm_n)
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
                if tracing:
                    snapshot(total)
                    (first, warm), (last, _) = snaps[0], snaps[-1]
                    stage["memtrace"] = memtrace.diff(first, last, total - warm)
                    log_memtrace(stage["memtrace"])
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
        """Every S3 socket closed and opened again at once by the same user: the steady state
        of a reconnect (caches warm, each user away for a moment, within its presence grace)."""
        a = self.args
        if target == "chat":
            time.sleep(a.pg_settle)
        xa0 = self.pg_xacts() if target == "chat" else -1
        cpu0 = proc_cpu(pid)
        conc = max(1, a.connect_concurrency // len(workers))
        spies = self.start_profilers(f"{target}-s3-back", self.servers[-1:], a.profile_duration) if a.profile else []
        res = call_all(workers, "cycle", timeout=a.idle_timeout, concurrency=conc)
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
        servers = self.start_servers(target, max(2, a.storm_instances), "storm")
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
                "resume_times_s": [round(x, 4) for x in v_times],
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
        fanout_targets = [*a.targets, *([CLUSTER_TARGET] if "cluster" in a.redis else [])]
        for target in fanout_targets:
            self.results["targets"][target] = {}
        # A scenario that fails is recorded as such and the run goes on with the next one.
        if {"s1", "s2"} & set(a.scenarios):
            try:
                for target, out in self.fanout(fanout_targets).items():
                    self.results["targets"][target]["fanout"] = out
            except Exception as exc:
                self.scenario_failed("fanout", fanout_targets, exc)
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
