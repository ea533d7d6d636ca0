"""Run uvicorn with tracemalloc on; each SIGUSR1 writes a snapshot (``--trace-memory``, S3).

``python -m bench.memtrace <uvicorn arguments>``: snapshots go to ``$BENCH_MEMTRACE_DIR`` as
``snap-<n>.pickle``. ``diff`` prints what the allocations between two snapshots are, per socket.
Tracing slows the server (connect figures of such a run mean nothing); memory figures hold.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

FRAMES = 1


def _dump(signum: int, frame: Any) -> None:
    out = Path(os.environ["BENCH_MEMTRACE_DIR"])
    n = len(list(out.glob("snap-*.pickle")))
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    snap.dump(str(out / f"snap-{n}.pickle"))
    (out / f"snap-{n}.done").touch()


def diff(before: Path, after: Path, sockets: int, top: int = 40) -> dict[str, Any]:
    """Bytes per socket allocated between two snapshots and still held: by line (the innermost
    frame) and by file."""
    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    out: dict[str, Any] = {"sockets": sockets}
    for key in ("lineno", "filename"):
        stats = new.compare_to(old, key)
        total = sum(s.size_diff for s in stats)
        out["bytes_per_socket"] = total / sockets
        out[f"by_{key}"] = [
            {"where": str(s.traceback[0]), "bytes_per_socket": round(s.size_diff / sockets, 1),
             "count_per_socket": round(s.count_diff / sockets, 2)}
            for s in stats[:top]
        ]  # fmt: skip
    return out


def main() -> None:
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, _dump)
    from uvicorn.main import main as uvicorn_main

    sys.argv = ["uvicorn", *sys.argv[1:]]
    uvicorn_main()


if __name__ == "__main__":
    main()
