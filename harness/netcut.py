"""Cut one process off from some TCP ports on loopback while the rest of its network works: a
network partition between an app instance and Redis, say, with nginx and PostgreSQL still
reachable.

The process runs in a cgroup (v2) of its own, and an nftables table drops the packets of that
cgroup's sockets to and from the given ports, in both directions (its requests, the replies and
the pub/sub pushes), as a partition does: nothing is refused, connections just hang. Everything
stays on 127.0.0.1: the rules match the socket's cgroup, not an address, so it works with
Sentinel or a Redis Cluster, where the app connects straight to whatever addresses they name.

Needs root, ``nft`` (Debian's ``nftables``) and cgroup v2 mounted under /sys/fs/cgroup (nft
names cgroups by their path there). :func:`unavailable` says why not, so a test can skip.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


def _nft() -> str | None:
    return shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


def cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            path = Path(fields[1])
            if path == CGROUP_FS or CGROUP_FS in path.parents:
                return path
    return None


def unavailable() -> str | None:
    """Why a cut cannot be made on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "cutting a process off needs root (nftables rules and a cgroup of its own)"
    if _nft() is None:
        return "nft is not installed (apt-get install nftables)"
    if cgroup2_mount() is None:
        return "cgroup v2 is not mounted under /sys/fs/cgroup"
    return None


class CgroupCut:
    """A cgroup for one process, and the nftables table that cuts it off from ``ports``.

    Start the process with :meth:`wrap` (it joins the cgroup before it opens any socket: a
    socket belongs to the cgroup its creator was in), then :meth:`cut` and :meth:`heal`."""

    def __init__(self, name: str) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        mount = cgroup2_mount()
        assert mount is not None
        tag = f"{name}-{os.getpid()}"
        self.table = "chat_cut_" + "".join(ch if ch.isalnum() else "_" for ch in tag)
        self.dir = mount / f"chat-cut-{tag}"
        self.dir.mkdir(exist_ok=True)
        self.nft_path = str(self.dir.relative_to(CGROUP_FS))
        self.level = 0
        self.is_cut = False
        atexit.register(self.close)
        try:
            self.level = self._find_level(len(self.dir.relative_to(mount).parts))
        except BaseException:
            self.close()
            raise

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` started inside the cgroup (same pid: the shell execs it)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.dir / "cgroup.procs"), *command]

    def _rules(self, ports: list[int], level: int, verdict: str) -> str:
        match = f'socket cgroupv2 level {level} "{self.nft_path}"'
        port_set = "{ " + ", ".join(str(p) for p in sorted(set(ports))) + " }"
        return (
            f"table inet {self.table} {{\n"
            "  chain out {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    tcp dport {port_set} {match} {verdict}\n"
            "  }\n"
            "  chain in {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    tcp sport {port_set} {match} {verdict}\n"
            "  }\n"
            "}\n"
        )

    def _apply(self, rules: str) -> None:
        nft = _nft()
        assert nft is not None
        done = subprocess.run([nft, "-f", "-"], input=rules, text=True, capture_output=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"nft refused the rules: {done.stderr.strip()}")

    def _delete(self) -> None:
        nft = _nft()
        if nft is not None:
            subprocess.run([nft, "delete", "table", "inet", self.table], capture_output=True, timeout=10)

    def _find_level(self, depth: int) -> int:
        """The cgroup's level in the kernel's hierarchy, which nft must be told. It is the depth
        under the mount, unless this runs in a cgroup namespace (a container) whose root is
        deeper: try a few levels down, with a probe process that must be refused."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = int(listener.getsockname()[1])
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    listener.accept()[0].close()
                except OSError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        probe = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)"
        try:
            for level in range(depth, depth + 6):
                self._apply(self._rules([port], level, "reject with tcp reset"))
                try:
                    done = subprocess.run(
                        self.wrap([sys.executable, "-c", probe, str(port)]), capture_output=True, timeout=10
                    )
                finally:
                    self._delete()
                if done.returncode != 0:
                    # Refused inside the cgroup; and outside it still connects.
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    return level
        finally:
            stop.set()
            thread.join(2)
            listener.close()
        raise RuntimeError(f"the nftables cgroup match never applied to {self.dir}")

    def cut(self, ports: list[int]) -> None:
        """Drop every packet between the cgroup's sockets and ``ports`` from now on."""
        self._delete()
        self._apply(self._rules(ports, self.level, "drop"))
        self.is_cut = True

    def heal(self) -> None:
        self._delete()
        self.is_cut = False

    def close(self) -> None:
        """Remove the rules and the cgroup (any process still in it moves back to the root)."""
        self.heal()
        if self.dir.exists():
            try:
                for pid in (self.dir / "cgroup.procs").read_text().split():
                    (self.dir.parent / "cgroup.procs").write_text(pid)
                self.dir.rmdir()
            except OSError:
                pass
