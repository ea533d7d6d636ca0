"""Benchmark of the chat server against a raw baseline.

    .venv/bin/python -m bench.run                          # everything, defaults below
    .venv/bin/python -m bench.run --scenarios s1,s2 --instances 2 --targets chat,raw

Run from the repository root: ``bench`` and ``harness`` are packages (bench/cluster.py: the
processes; bench/scenarios.py: S1-S4; bench/report.py: the summary, the table and the charts).

It starts its own redis-server on a free port and a throw-away PostgreSQL database
(``bench_chat_<pid>`` on 127.0.0.1:5432, user postgres, dropped at the end), migrates it,
creates the users, tokens and conversations (bench/setup_data.py), and then, for each target,
starts N instances and drives them with real WebSocket clients in separate processes
(bench/loadgen.py):

* ``chat`` - this project under uvicorn (uvloop, httptools, and the shipped WebSocket protocol
  ``--ws realtime.uvicorn_protocol:WebSocketProtocol``: uvicorn's sans-I/O one, holding less per
  socket), cluster mode on the benchmark's Redis and PostgreSQL;
* ``raw``  - bench/raw_server.py, a `websockets` + redis-py pub/sub server with the same frames;
* ``chat-cluster`` (``--redis single,cluster``, S1 and S2 only) - this project with
  ``REDIS_CLUSTER=true`` on a Redis Cluster of three masters and three replicas
  (harness/redis_cluster.py); Redis CPU per delivery is read from ``INFO cpu`` of every node
  before and after each step, so the cost of each shard stands next to the one-Redis figure.

Scenarios (see bench/README.md): s1 latency, s2 throughput steps, s3 idle connections on one
instance, s4 reconnect storm after a SIGKILL. Server CPU per delivery comes from the server
processes' utime+stime (/proc/<pid>/stat). ``--profile`` records py-spy profiles of every
instance during one extra S2 step at the rate where the chat server saturates.

Prints a table and writes JSON (``--json``, default bench/results/latest.json) and PNG charts
beside it (s2_p99.png, s4_resumed.png). All traffic
goes to 127.0.0.1. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bench.cluster import BENCH, ROOT, log
from bench.report import charts, render, summarise
from bench.scenarios import Bench

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
    p.add_argument("--ws", default="realtime.uvicorn_protocol:WebSocketProtocol", help="uvicorn --ws implementation")
    p.add_argument(
        "--layer",
        choices=["pubsub", "core"],
        default="pubsub",
        help="the chat server's CHANNEL_LAYER_BACKEND: RedisPubSubChannelLayer or RedisChannelLayer",
    )
    p.add_argument(
        "--redis",
        type=csv_s,
        default=["single"],
        help="single,cluster: with cluster, S1 and S2 also run this project on a 3-master Redis Cluster "
        "(target chat-cluster) next to the one-Redis targets, and print Redis CPU per delivery per master",
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
    p.add_argument("--storm-instances", type=int, default=3, help="S4 instances; the first is SIGKILLed")
    p.add_argument("--pool-group", type=int, default=10, help="pool users (S3, S4) per conversation")
    p.add_argument("--open-timeout", type=float, default=120, help="handshake and hello timeout (S3, S4)")
    p.add_argument("--storm-jitter", type=float, default=0.0, help="random delay before the first reconnect")
    p.add_argument("--storm-timeout", type=float, default=120, help="a client gives up reconnecting after this")
    p.add_argument(
        "--trace-memory", action="store_true", help="S3: the chat server under tracemalloc, bytes per socket by line"
    )
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
    if set(args.redis) - {"single", "cluster"}:
        p.error(f"unknown --redis {sorted(set(args.redis) - {'single', 'cluster'})}")
    if not args.idle_counts:
        args.idle_counts = [0]
    return args


def main() -> int:
    args = parse_args()
    if args.render:
        results = json.loads(Path(args.render).read_text())
        results["summary"] = summarise(results)
        print(render(results))
        for path in charts(results, Path(args.render).parent):
            log(f"chart written to {path}")
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
    for path in charts(results, out.parent):
        log(f"chart written to {path}")
    log(f"JSON written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
