"""A real Redis Cluster for tests and the benchmark: six redis-server processes (three masters,
three replicas) on free loopback ports, created with ``redis-cli --cluster create`` and a short
``cluster-node-timeout`` so a failover takes seconds. Faults are real signals (SIGKILL, SIGSTOP)
and slot moves are the cluster's own migration commands. Every wait is bounded in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from harness.processes import _redis_binary, free_port, wait_for_port

NODE_TIMEOUT_MS = 1000
CLUSTER_SLOTS = 16384


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is also free, all below the ephemeral
    range (a killed node starts again on the same two ports: harness.processes.free_port)."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port(offset=10000)) not in ports:
            ports.append(port)
    return ports


def make_tls_files(directory: str) -> dict[str, str]:
    """A throw-away CA and one server certificate for ``localhost`` and ``127.0.0.1``."""
    paths = {name: os.path.join(directory, f"{name}") for name in ("ca.key", "ca.crt", "node.key", "node.crt")}
    csr, ext = os.path.join(directory, "node.csr"), os.path.join(directory, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", paths["ca.key"], "-out", paths["ca.crt"],
        "-days", "1", "-subj", "/CN=chat-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", paths["node.key"], "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"], "-CAcreateserial",
        "-out", paths["node.crt"], "-days", "1", "-extfile", ext)  # fmt: skip
    return paths


@dataclass
class ClusterNode:
    port: int
    dir: str
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    extra_args: list[str] = field(default_factory=list)
    tls: dict[str, str] | None = None

    def start(self) -> ClusterNode:
        if self.tls:
            # TLS only: clients, the cluster bus and replication.
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cluster", "yes", "--tls-replication", "yes"]
            ports += ["--tls-cert-file", self.tls["node.crt"], "--tls-key-file", self.tls["node.key"]]
            ports += ["--tls-ca-cert-file", self.tls["ca.crt"], "--tls-auth-clients", "no"]
        else:
            ports = ["--port", str(self.port)]
        args = [
            _redis_binary(),
            *ports,
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{self.port}.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            # A replica may always take over, however long its master was gone.
            "--cluster-replica-validity-factor",
            "0",
            # A master that lost its replica does not take one from another master mid-test.
            "--cluster-allow-replica-migration",
            "no",
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
            # Each node's own log in the cluster's folder: a heal that times out quotes its tail.
            "--logfile",
            self.log_path,
            *self.extra_args,
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.frozen = False
        wait_for_port(self.port, 10, self.proc)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, f"node-{self.port}.log")

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)\n"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": self.tls["ca.crt"]} if self.tls else {}
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=timeout,
            **tls,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.frozen:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.frozen = False


class RedisCluster:
    """Three masters and three replicas on 127.0.0.1. ``startup`` is the address clients get."""

    def __init__(
        self, masters: int = 3, replicas_per_master: int = 1, password: str | None = None, tls: bool = False
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="chat-test-redis-cluster-")
        self.password = password
        self.masters_wanted = masters
        self.replicas_per_master = replicas_per_master
        self.tls = make_tls_files(self.dir) if tls else None
        count = masters * (1 + replicas_per_master)
        self.nodes = [ClusterNode(port, self.dir, password, tls=self.tls) for port in cluster_ports(count)]

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            cmd = [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            cmd += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
            if self.password:
                cmd += ["-a", self.password, "--no-auth-warning"]
            if self.tls:
                cmd += ["--tls", "--cacert", self.tls["ca.crt"]]
            subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def startup(self) -> tuple[str, int]:
        return "127.0.0.1", self.nodes[0].port

    def alive_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive and not n.frozen]

    def node_by_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    # --- topology -------------------------------------------------------------------------------

    def _nodes_view(self, via: ClusterNode) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by ``via``: id, port, flags, master id, slots."""
        out = []
        with via.client() as c:
            parsed = c.execute_command("CLUSTER NODES")  # redis-py parses it into a dict by address
        for address, info in parsed.items():
            slots: list[int] = []
            for spec in info["slots"]:
                lo, hi = (spec[0], spec[-1]) if isinstance(spec, list) else (spec, spec)
                slots.extend(range(int(lo), int(hi) + 1))
            out.append(
                {
                    "id": info["node_id"],
                    "port": int(address.split("@")[0].rsplit(":", 1)[1]),
                    "flags": set(info["flags"].split(",")),
                    "master_id": info["master_id"],
                    "slots": slots,
                }
            )
        return out

    def masters(self) -> list[ClusterNode]:
        """The masters serving slots, as an alive node sees them."""
        view = self._nodes_view(self.alive_nodes()[0])
        ports = [v["port"] for v in view if "master" in v["flags"] and "fail" not in v["flags"] and v["slots"]]
        return [self.node_by_port(p) for p in ports]

    def master_of_slot(self, slot: int) -> ClusterNode:
        for v in self._nodes_view(self.alive_nodes()[0]):
            if "master" in v["flags"] and slot in v["slots"]:
                return self.node_by_port(v["port"])
        raise LookupError(f"no master serves slot {slot}")

    def master_of_key(self, key: str) -> ClusterNode:
        return self.master_of_slot(self.keyslot(key))

    def keyslot(self, key: str) -> int:
        with self.alive_nodes()[0].client() as c:
            return int(c.execute_command("CLUSTER KEYSLOT", key))

    def node_id(self, node: ClusterNode) -> str:
        with node.client() as c:
            return str(c.execute_command("CLUSTER MYID"))

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok, sees every live node connected, and there are the
        wanted number of masters, each with all slots covered."""
        alive = self.alive_nodes()
        try:
            for node in alive:
                with node.client(timeout=1.0) as c:
                    if c.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                        return False
            view = self._nodes_view(alive[0])
        except redis.RedisError:
            return False
        alive_ports = {n.port for n in alive}
        for v in view:
            if v["port"] in alive_ports and ("fail" in v["flags"] or "fail?" in v["flags"]):
                return False
        masters = [v for v in view if "master" in v["flags"] and v["slots"] and v["port"] in alive_ports]
        return sum(len(m["slots"]) for m in masters) == CLUSTER_SLOTS

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster not healthy after {timeout}s")
            time.sleep(0.1)

    # --- faults ---------------------------------------------------------------------------------

    def kill_master(self, node: ClusterNode, timeout: float = 20.0) -> ClusterNode:
        """SIGKILL a master and wait until its replica serves its slots. Returns the new master."""
        return self._fail_master(node, signal.SIGKILL, timeout)

    def freeze_master(self, node: ClusterNode, timeout: float = 20.0) -> ClusterNode:
        """SIGSTOP a master (a hung process: connections open, no reply) and wait for failover."""
        return self._fail_master(node, signal.SIGSTOP, timeout)

    def _fail_master(self, node: ClusterNode, sig: int, timeout: float) -> ClusterNode:
        old_id = self.node_id(node)
        slots = next(v["slots"] for v in self._nodes_view(node) if v["id"] == old_id)
        assert node.proc is not None
        if sig == signal.SIGSTOP:
            node.proc.send_signal(signal.SIGSTOP)
            node.frozen = True
        else:
            node.stop(signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica took over from {node.port} within {timeout}s")
            try:
                new = self.master_of_slot(slots[0])
                if new.port != node.port and self.healthy():
                    return new
            except (redis.RedisError, LookupError):
                pass
            time.sleep(0.1)

    def kill_shard(self, master: ClusterNode, timeout: float = 20.0) -> None:
        """SIGKILL a master and all its replicas: its slots are lost, and the surviving nodes
        report ``cluster_state:fail`` (returns once they do)."""
        master_id = self.node_id(master)
        view = self._nodes_view(master)
        replicas = [self.node_by_port(v["port"]) for v in view if v["master_id"] == master_id]
        for node in [master, *replicas]:
            node.stop(signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.alive_nodes():
                try:
                    with node.client(timeout=1.0) as c:
                        states.append(c.execute_command("CLUSTER INFO")["cluster_state"])
                except redis.RedisError:
                    states.append("unknown")
            if states and all(state == "fail" for state in states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster still not failed {timeout}s after losing a shard")
            time.sleep(0.1)

    def describe(self) -> str:
        """Each node's state, its view of the cluster and its log's tail: what a failed wait shows."""
        out = []
        for node in self.nodes:
            state = "frozen" if node.frozen else "alive" if node.alive else "dead"
            out.append(f"--- node {node.port} ({state})")
            if node.alive and not node.frozen:
                try:
                    for v in self._nodes_view(node):
                        flags = ",".join(sorted(v["flags"]))
                        out.append(f"  sees {v['port']} {flags} master={v['master_id'][:8]} slots={len(v['slots'])}")
                except redis.RedisError as exc:
                    out.append(f"  CLUSTER NODES failed: {exc!r}")
            out.append(node.log_tail().rstrip())
        return "\n".join(out)

    def heal(self, timeout: float = 30.0) -> None:
        """Bring every killed or frozen node back (it rejoins as a replica) and wait until healthy."""
        for node in self.nodes:
            if node.frozen:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGCONT)
                node.frozen = False
            elif not node.alive:
                node.start()  # its nodes.conf in the temp dir makes it rejoin
        deadline = time.monotonic() + timeout
        while True:
            if dead := [n.port for n in self.nodes if not n.alive]:
                # A node that exits after binding its client port (its bus port taken, say) would
                # otherwise only show as a timeout.
                raise RuntimeError(f"Redis Cluster node(s) {dead} exited while healing\n{self.describe()}")
            try:
                view = self._nodes_view(self.nodes[0])
                flags_ok = all("fail" not in v["flags"] and "fail?" not in v["flags"] for v in view)
                masters = [v for v in view if "master" in v["flags"] and v["slots"]]
                replicated = all(
                    sum(1 for r in view if r["master_id"] == m["id"]) >= self.replicas_per_master for m in masters
                )
                if flags_ok and replicated and self.healthy():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster did not heal within {timeout}s\n{self.describe()}")
            time.sleep(0.1)

    def move_slot(self, slot: int, target: ClusterNode, timeout: float = 10.0) -> None:
        """Migrate one slot, keys included, to ``target`` (what ``redis-cli --cluster reshard``
        does per slot): IMPORTING/MIGRATING, MIGRATE the keys in batches, then SETSLOT NODE."""
        source = self.master_of_slot(slot)
        if source.port == target.port:
            return
        src_id, dst_id = self.node_id(source), self.node_id(target)
        deadline = time.monotonic() + timeout
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"slot {slot} not migrated within {timeout}s")
                args: list[Any] = ["MIGRATE", "127.0.0.1", target.port, "", 0, 5000]
                if self.password:
                    args += ["AUTH", self.password]
                src.execute_command(*args, "KEYS", *keys)
            dst.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
            src.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for node in self.masters():
            if node.port not in (source.port, target.port):
                with node.client() as c:
                    c.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        while self.master_of_slot(slot).port != target.port or not self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"slot {slot} not owned by {target.port} within {timeout}s")
            time.sleep(0.05)

    def flushall(self) -> None:
        for node in self.masters():
            with node.client() as c:
                c.flushall()
