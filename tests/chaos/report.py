"""The failover report from a chaos run's JSON: a markdown table of the figures per fault and a
PNG of connected clients and acknowledged sends per second over the run, faults marked.

    python -m tests.chaos.report failover.json --cluster failover-cluster.json \\
        --png docs/failover.png --markdown failover.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import uvicorn
    import websockets

    from harness.processes import _pg_bin

    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "os": platform.platform(),
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "websockets": websockets.__version__,
        "redis": _version(["redis-server", "--version"]),
        "nginx": _version(["nginx", "-v"]),
        "postgresql": _version([_pg_bin("postgres"), "--version"]),
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _rows(report: dict[str, Any]) -> list[str]:
    lines = [
        "| fault | fresh ack p50 (s) | fresh ack max (s) | reconnects | lost | duplicates | 5xx but 503 | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in report["faults"]:
        ok = not f["violations"] and f["lost"] == 0 and f["duplicates"] == 0
        result = "survived" if ok else "NOT survived: " + "; ".join(f["violations"][:3])
        if f["notes"]:
            result += " (" + "; ".join(f["notes"]) + ")"
        lines.append(
            f"| {f['fault']} | {_cell(f['fresh_ack_p50_s'])} | {_cell(f['fresh_ack_max_s'])} | {f['reconnects']} "
            f"| {f['lost']} | {f['duplicates']} | {f['bad_5xx']} | {result} |"
        )
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"| {name} | - | - | - | - | - | - | not run on this machine: {reason} |")
    return lines


def _topology(report: dict[str, Any]) -> str:
    if report.get("topology") == "cluster":
        return "a Redis Cluster (three masters, three replicas, cluster-node-timeout 1 s)"
    return "Redis behind Sentinel (master, replica, three Sentinels, down-after 1 s)"


def markdown(report: dict[str, Any], info: dict[str, str], cluster: dict[str, Any] | None = None) -> str:
    lines = [
        f"{report['clients']} clients in {report['conversations']} overlapping conversations, about one message a "
        f"second each, through nginx (docker/nginx.conf) to three uvicorn instances; {_topology(report)}; "
        f"PostgreSQL; the Firestore emulator with status sync on. Run of {report['duration_s']} s: "
        f"{report['sent']} messages sent, {report['acked']} acknowledged.",
        "",
        *_rows(report),
    ]
    if cluster is not None:
        lines += [
            "",
            f"The same clients and invariants on {_topology(cluster)}, a smaller run (REDIS_CLUSTER=true): "
            f"{cluster['duration_s']} s, {cluster['sent']} messages sent, {cluster['acked']} acknowledged.",
            "",
            *_rows(cluster),
        ]
    lines += [
        "",
        "Fresh ack: from the fault (the last SIGTERM of the rolling deploy) until a client has the ack of a message "
        "it sent after that moment; p50 and max over the clients. Lost: acknowledged but not stored, or stored but "
        "not delivered to a participant. Duplicates: a client_msg_id stored or acknowledged under two seqs. "
        "The cut drops, with nftables, every packet between one instance's sockets and Redis (nodes and "
        "Sentinels) until every client has resumed elsewhere and the invariants are checked; the Firestore "
        "emulator is stopped for the time its row names (the status sync backs off meanwhile) while every client "
        "sets a status; statuses are checked once it is back.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def _panel(ax: Any, report: dict[str, Any], title: str) -> None:
    timeline = report["timeline"]
    end = max([p["t"] for p in timeline] + [a for a in report["acks"]] + [1.0])
    seconds = int(end) + 1
    acks_per_s = [0] * seconds
    for t in report["acks"]:
        if 0 <= t < seconds:
            acks_per_s[int(t)] += 1
    ax.bar(range(seconds), acks_per_s, width=1.0, color="#9ecae1", label="acknowledged sends per second")
    ax.set_xlabel("seconds since the clients started")
    ax.set_ylabel("acks per second")
    ax2 = ax.twinx()
    ax2.plot([p["t"] for p in timeline], [p["connected"] for p in timeline], color="#d62728", lw=1.6)
    ax2.set_ylabel("connected clients", color="#d62728")
    ax2.set_ylim(0, report["clients"] * 1.15)
    for i, f in enumerate(f for f in report["faults"] if f["fault"] != "steady state"):
        ax.axvspan(f["start_s"], f["end_s"], color="#cccccc", alpha=0.35, lw=0)
        ax.axvline(f.get("injected_s", f["start_s"]), color="#444444", lw=0.8, ls="--")
        if "settle_s" in f:  # new sends paused while the invariants are checked
            ax.axvspan(f["settle_s"], f["end_s"], ymin=0, ymax=0.025, color="#444444", lw=0)
        ax.text(
            f["start_s"] + 0.3,
            1.0 - 0.07 * (i % 3),
            f["fault"],
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            va="top",
        )
    ax.set_xlim(0, seconds)
    ax.set_title(title, fontsize=9)


def picture(report: dict[str, Any], png: Path, cluster: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if cluster is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(12, 4.5 * rows), dpi=110, squeeze=False)
    _panel(
        axes[0][0],
        report,
        "Chaos run on Sentinel: connected clients (line), acknowledged sends per second (bars).\nEach fault shaded"
        " from its start to its end (dashed: the moment measured from; dark base: from its check to its end)",
    )
    if cluster is not None:
        _panel(axes[1][0], cluster, "The same on a Redis Cluster (a smaller run)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--png", type=Path, default=Path("docs/failover.png"))
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--cluster", type=Path, help="the Redis Cluster run's JSON (a second table and panel)")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    cluster = json.loads(args.cluster.read_text()) if args.cluster and args.cluster.exists() else None
    text = markdown(report, machine(), cluster)
    if args.markdown:
        args.markdown.write_text(text)
    sys.stdout.write(text)
    picture(report, args.png, cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
