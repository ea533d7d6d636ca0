"""Real server processes for tests: redis-server, the app under daphne or uvicorn, nginx.

Every process listens on a free port on 127.0.0.1 and is killed with a real signal.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _redis_binary() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """A redis-server of our own on a free port, keeping nothing on disk."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="chat-test-redis-")

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                _redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            if sig == signal.SIGSTOP:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()


def app_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "chatproject.settings.base",
            "PYTHONPATH": str(ROOT),
            "LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env


class AppServer:
    """One chat instance under daphne or uvicorn."""

    def __init__(self, server: str, instance_id: str, env: dict[str, str], log_dir: Path) -> None:
        self.server = server
        self.instance_id = instance_id
        self.port = free_port()
        self.env = dict(env, INSTANCE_ID=instance_id)
        self.log_path = log_dir / f"{instance_id}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        bindir = Path(sys.executable).parent
        if self.server == "daphne":
            return [
                str(bindir / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                # A backstop at twice the limit: autobahn drops an oversized frame's connection
                # without a close frame, so the consumer's own check (1009) must come first.
                "--websocket-max-message-size",
                str(2 * int(self.env.get("WS_MAX_FRAME_BYTES", "65536"))),
                "--websocket-max-frame-size",
                str(2 * int(self.env.get("WS_MAX_FRAME_BYTES", "65536"))),
                "chatproject.asgi:application",
            ]
        return [
            str(bindir / "uvicorn"),
            "chatproject.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ws-max-size",
            self.env.get("WS_MAX_FRAME_BYTES", "65536"),
            "--ws-per-message-deflate",
            self.env.get("WS_PER_MESSAGE_DEFLATE", "false"),
            "--timeout-graceful-shutdown",
            "5",
            "--no-access-log",
        ]

    def start(self) -> AppServer:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 30, self.proc)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class Nginx:
    """nginx on a free port balancing WebSockets and HTTP over the given upstream ports."""

    def __init__(self, upstream_ports: list[int], work_dir: Path) -> None:
        self.port = free_port()
        self.upstreams = upstream_ports
        self.dir = work_dir
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in self.upstreams)
        conf = f"""
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream chat {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://chat;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 3600s;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_connect_timeout 1s;
    }}
  }}
}}
"""
        conf_path = self.dir / "nginx.conf"
        conf_path.write_text(conf)
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf_path), "-p", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


class SilentListener:
    """A TCP port that accepts connections and never sends a byte: stands in for a database or a
    Redis that hangs (the handshake completes, no reply ever comes)."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"silent-{self.port}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    return free_port()


def start_all(servers: list[AppServer]) -> list[AppServer]:
    """Start several instances at once: each spends a few seconds importing Django."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        list(pool.map(lambda s: s.start(), servers))
    return servers


def stop_all(servers: list[AppServer]) -> None:
    """Stop several instances at once (each may take seconds to leave a hung Redis)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        list(pool.map(lambda s: s.stop(), servers))


def wait_registered(redis_conn: Any, user_id: int, count: int, timeout: float = 5, prefix: str = "chat") -> None:
    """Wait until the connection registry lists ``count`` sockets of the user. An instance sends
    ``hello`` before it has subscribed the socket's groups and registered it, so a test that
    acts on other sockets or reads the registry right after ``hello`` waits here first."""
    deadline = time.monotonic() + timeout
    # The key of realtime.registry.user_conns_key (its shard tag is the user id modulo 16).
    while (found := redis_conn.zcard(f"{prefix}:{{s{user_id % 16}}}:u:{user_id}:conns")) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"user {user_id} has {found} registered connections, expected {count}")
        time.sleep(0.05)
