"""The benchmark's processes: chat and raw servers, load-generator workers, /proc readings."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.loadgen import worker_main
from harness.processes import AppServer, wait_for_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
CTX = mp.get_context("fork")


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

    ws_impl = "realtime.uvicorn_protocol:WebSocketProtocol"
    source: Path = ROOT
    deflate = False

    def start(self) -> ChatServer:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(), env=self.env, cwd=self.source, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port, 60, self.proc)
        return self

    def command(self) -> list[str]:
        if self.server == "daphne":
            return super().command()
        bindir = Path(sys.executable).parent
        # --trace-memory: the same uvicorn under tracemalloc (bench/memtrace.py).
        traced = "BENCH_MEMTRACE_DIR" in self.env
        launcher = [sys.executable, "-m", "bench.memtrace"] if traced else [str(bindir / "uvicorn")]
        return [
            *launcher, "chatproject.asgi:application",
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
