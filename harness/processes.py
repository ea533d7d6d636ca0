"""Real server processes for tests: redis-server, the app under daphne or uvicorn, nginx.

Every process listens on a free port on 127.0.0.1 and is killed with a real signal.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# Ports for our servers come from below the kernel's ephemeral range. A server killed in a test
# is started again on the same port; a port from the ephemeral range may meanwhile be the local
# port of any client socket of the run, and the restarted server would fail to bind it.
PORTS_LOW = 10000
_port_rng = random.Random(os.getpid() ^ time.monotonic_ns())


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where bind(0) and connect() draw from)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(offset: int = 0) -> int:
    """A free port below the ephemeral range; with ``offset``, ``port + offset`` is free (and below
    the range) as well, as a Redis Cluster node's bus port (port + 10000) must be."""
    high = ephemeral_low() - offset
    if high - PORTS_LOW < 100:
        if offset:
            raise RuntimeError(f"no room for a port pair {offset} apart below the ephemeral range")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # an unusual range: any port
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(500):
        port = _port_rng.randrange(PORTS_LOW, high)
        if port_free(port) and (not offset or port_free(port + offset)):
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
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

    def __init__(self, port: int | None = None, args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.args = list(args or [])  # more redis-server options (--replicaof host port, ...)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="chat-test-redis-")
        # A server never stopped (a test run interrupted) still leaves no folder behind.
        atexit.register(shutil.rmtree, self.dir, ignore_errors=True)

    def start(self) -> RedisServer:
        os.makedirs(self.dir, exist_ok=True)
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
                "notice",
                "--logfile",
                os.path.join(self.dir, "redis.log"),
                *self.args,
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
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of this server's log (replication, failover, errors), for a failure
        message; empty once the server is stopped (its folder goes with it)."""
        try:
            with open(os.path.join(self.dir, "redis.log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    return str(found[-1])


class PostgresServer:
    """A throw-away PostgreSQL cluster of our own (initdb, pg_ctl) on a free port, so a test can
    stop and restart the database server without touching a shared one. Trusts local
    connections as user ``postgres``; fsync off (nothing here must survive a power cut)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="chat-test-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        # initdb and postgres refuse to run as root: run them as the postgres system user.
        self._as: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self._as, *args], check=True, timeout=timeout, capture_output=True)

    def init(self) -> PostgresServer:
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self.init()
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        pg_ctl = _pg_bin("pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start")
        wait_for_port(self.port, 10)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected, like a restart; ``immediate``:
        like a crash)."""
        if (self.data / "postmaster.pid").exists():
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def url(self, name: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


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
        self.proc: subprocess.Popen[bytes] | None = None
        # Wraps the command at every start (harness.netcut: start inside a cgroup of its own).
        self.launcher: Callable[[list[str]], list[str]] | None = None

    def command(self) -> list[str]:
        bindir = Path(sys.executable).parent
        if self.server == "daphne":
            return [
                str(bindir / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                # The contract's command, no flags: the application sets daphne's frame limit
                # from WS_MAX_FRAME_BYTES itself (core/daphne_compat.py).
                "chatproject.asgi:application",
            ]
        return [
            str(bindir / "uvicorn"),
            "chatproject.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # The shipped WebSocket protocol: uvicorn's sans-I/O one, holding less per socket.
            "--ws",
            "realtime.uvicorn_protocol:WebSocketProtocol",
            # A backstop at twice the limit: the application's own check answers a frame over
            # WS_MAX_FRAME_BYTES with a close handshake (1009). At uvicorn's own limit the
            # websockets library fails the connection while the client may still be sending,
            # and the reset can overtake its 1009 (the client sees 1006).
            "--ws-max-size",
            str(2 * int(self.env.get("WS_MAX_FRAME_BYTES", "65536"))),
            "--ws-per-message-deflate",
            self.env.get("WS_PER_MESSAGE_DEFLATE", "false"),
            "--timeout-graceful-shutdown",
            "5",
            "--no-access-log",
        ]

    def start(self) -> AppServer:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        command = self.launcher(self.command()) if self.launcher else self.command()
        self.proc = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
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


SHIPPED_NGINX_CONF = ROOT / "docker" / "nginx.conf"


def render_nginx_conf(template: str, upstream_ports: list[int], listen_port: int, work_dir: Path) -> str:
    """The shipped nginx configuration pointed at local instances: the server lines between the
    ``chat:upstreams`` markers become one per port with the parameters of the shipped first line
    (``resolve`` dropped: it needs Docker's DNS), the ``chat:listen`` line listens on
    ``listen_port``, and nginx keeps its temporary files in ``work_dir``. Nothing else changes."""
    lines = template.splitlines()
    try:
        begin = next(i for i, line in enumerate(lines) if "chat:upstreams:begin" in line)
        end = next(i for i, line in enumerate(lines) if "chat:upstreams:end" in line)
        first = next(line for line in lines[begin:end] if line.strip().startswith("server "))
    except StopIteration:
        raise ValueError("nginx configuration without chat:upstreams markers and a server line") from None
    indent = first[: len(first) - len(first.lstrip())]
    params = [p for p in first.strip().rstrip(";").split()[2:] if p != "resolve"]
    servers = [indent + " ".join(["server", f"127.0.0.1:{port}", *params]) + ";" for port in upstream_ports]
    out: list[str] = []
    for i, line in enumerate(lines):
        if begin < i < end:
            if i == begin + 1:
                out.extend(servers)
            continue
        if "chat:listen" in line:
            line = line[: len(line) - len(line.lstrip())] + f"listen 127.0.0.1:{listen_port};"
        out.append(line)
        if line.strip() == "http {":
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                out.append(f"    {kind}_temp_path {work_dir}/{kind};")
    return "\n".join(out) + "\n"


class Nginx:
    """nginx on a free port running the shipped docker/nginx.conf (or ``conf`` text in the same
    form) over the given upstream ports. Its access log (stdout) and error log (stderr) go to
    ``access.log`` and ``error.log`` in ``work_dir``."""

    def __init__(self, upstream_ports: list[int], work_dir: Path, conf: str | None = None) -> None:
        self.port = free_port()
        self.upstreams = upstream_ports
        self.dir = work_dir
        self.template = conf if conf is not None else SHIPPED_NGINX_CONF.read_text()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        conf_path = self.dir / "nginx.conf"
        conf_path.write_text(render_nginx_conf(self.template, self.upstreams, self.port, self.dir))
        self._out = open(self.access_log, "ab")  # noqa: SIM115
        self._err = open(self.error_log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf_path), "-p", str(self.dir), "-g", f"daemon off; pid {self.dir}/nginx.pid;"],
            stdout=self._out,
            stderr=self._err,
        )
        wait_for_port(self.port, 10, self.proc)
        return self

    def statuses(self) -> list[int]:
        """The HTTP status of every request nginx logged so far (101 for a WebSocket)."""
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            parts = line.split('" ', 1)
            if len(parts) == 2 and parts[1][:3].isdigit():
                found.append(int(parts[1][:3]))
        return found

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f is not None:
                f.close()


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
