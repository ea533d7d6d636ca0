"""Redis behind Sentinel on free loopback ports: a master, a replica and three Sentinels with a
short down-after, so a failover completes in a few seconds. Nodes are frozen, killed and
restarted with real signals; the Sentinels pick the new master."""

from __future__ import annotations

import atexit
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .processes import RedisServer, _redis_binary, free_port, wait_for_port

MASTER_NAME = "mymaster"


class Sentinel:
    """One redis-server in Sentinel mode; it rewrites its own configuration file."""

    def __init__(self, master_port: int, down_after_ms: int, failover_timeout_ms: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="chat-test-sentinel-"))
        atexit.register(shutil.rmtree, self.dir, ignore_errors=True)  # as RedisServer's folder
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.dir}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        self.proc = subprocess.Popen(
            [_redis_binary(), str(self.conf), "--sentinel", "--loglevel", "warning", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10, self.proc)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, decode_responses=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class SentinelTopology:
    """A master, a replica and three Sentinels (quorum 2). ``down_after_ms`` is how long the
    master must be unreachable (or frozen) before the Sentinels fail over."""

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.nodes: dict[int, RedisServer] = {}
        self.sentinels: list[Sentinel] = []

    # A replica's full sync starts at once (Redis 7 waits 5 s for more replicas by default).
    NODE_ARGS = ["--repl-diskless-sync-delay", "0"]

    def start(self) -> SentinelTopology:
        master = RedisServer(args=list(self.NODE_ARGS)).start()
        replica = RedisServer(args=[*self.NODE_ARGS, "--replicaof", "127.0.0.1", str(master.port)]).start()
        self.nodes = {master.port: master, replica.port: replica}
        self._wait_replicated(replica.port, master.port)
        self.sentinels = [Sentinel(master.port, self.down_after_ms, self.failover_timeout_ms) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_stable(master.port)
        return self

    @property
    def sentinel_hosts(self) -> str:
        """REDIS_SENTINELS for the app: ``127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3``."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def master_port(self) -> int:
        """The master as the majority of the Sentinels that answer names it."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            try:
                addr = sentinel.client().execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            except redis.RedisError:
                continue
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        if not votes:
            raise RuntimeError("no Sentinel answers")
        return max(votes, key=lambda port: votes[port])

    def master(self) -> RedisServer:
        return self.nodes[self.master_port()]

    def _node_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)

    def _wait_replicated(self, replica_port: int, master_port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = self._node_client(replica_port).info("replication")
                if info.get("master_port") == master_port and info.get("master_link_status") == "up":
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError(
            f"replica {replica_port} did not sync from {master_port} within {timeout}s\n{self.describe()}"
        )

    def describe(self) -> str:
        """Each node's replication state, each Sentinel's master and every node's log tail, for a
        failure message."""
        out = []
        for port, node in self.nodes.items():
            try:
                info = self._node_client(port).info("replication")
                state = {k: info.get(k) for k in ("role", "master_port", "master_link_status", "connected_slaves")}
            except redis.RedisError as exc:
                state = {"error": repr(exc)}
            out.append(f"node {port} (running: {node.proc is not None}): {state}\n{node.log_tail()}")
        for sentinel in self.sentinels:
            try:
                named = sentinel.client().execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            except redis.RedisError as exc:
                named = repr(exc)
            out.append(f"sentinel {sentinel.port}: master {named}")
        return "\n".join(out)

    def wait_stable(self, master_port: int | None = None, timeout: float = 30) -> int:
        """Wait until every Sentinel names the same master (``master_port`` when given), that
        master answers as a master, and every other running node replicates from it with its
        link up. Returns the master's port."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                named = {
                    int(s.client().execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)[1])
                    for s in self.sentinels
                }
                if len(named) == 1 and (master_port is None or named == {master_port}):
                    port = named.pop()
                    if self._node_client(port).info("replication").get("role") == "master":
                        others = [p for p, n in self.nodes.items() if p != port and n.proc is not None]
                        for other in others:
                            self._wait_replicated(other, port, max(0.1, deadline - time.monotonic()))
                        return port
                last = named
            except (redis.RedisError, TimeoutError, TypeError) as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"Sentinel topology not stable within {timeout}s (last: {last!r})")

    def freeze_master(self) -> RedisServer:
        node = self.master()
        node.freeze()
        return node

    def kill(self, node: RedisServer) -> None:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGCONT)
        node.stop(signal.SIGKILL)

    def demote_master(self) -> tuple[int, int]:
        """A failover with the old master still up: the Sentinels promote the replica and turn
        the old master into its replica in place (clients still connected to it get READONLY
        on writes, as after a managed service's failover behind a fixed endpoint). Returns the
        (old, new) master ports once the Sentinels name the new one."""
        old = self.master_port()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                new = self.master_port()
            except RuntimeError:
                new = old
            if new != old:
                return old, new
            time.sleep(0.05)
        raise TimeoutError("SENTINEL FAILOVER did not promote the replica within 15 s")

    def restart_master_empty(self) -> RedisServer:
        """Kill the master and start it again at once, empty, before the Sentinels' down-after:
        no failover happens, and the replica resyncs to the empty data set."""
        node = self.master()
        node.args = list(self.NODE_ARGS)
        node.stop(signal.SIGKILL)
        node.start()
        return node

    def restart_as_replica(self, node: RedisServer) -> None:
        """Bring a killed node back (empty) as a replica of the current master, as an operator
        or an orchestrator would; the Sentinels then list it again."""
        master_port = self.master_port()
        node.args = [*self.NODE_ARGS, "--replicaof", "127.0.0.1", str(master_port)]
        node.start()
        # The Sentinels may still move the master (a vote under way): wait on their view.
        self.wait_stable(None, 30)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes.values():
            if node.proc is not None:
                node.proc.send_signal(signal.SIGCONT)
            node.stop(signal.SIGKILL)
