"""The real-process helpers clean up after themselves."""

from __future__ import annotations

import os
import signal

from harness.processes import RedisServer


def test_redis_server_leaves_no_folder_behind_when_stopped():
    server = RedisServer().start()
    folder = server.dir
    assert os.path.isdir(folder)
    server.stop()
    assert not os.path.exists(folder)


def test_redis_server_restarted_empty_still_runs_and_then_cleans_up():
    server = RedisServer().start()
    server.restart_empty()
    assert server.proc is not None and server.proc.poll() is None
    server.stop(signal.SIGKILL)
    assert not os.path.exists(server.dir)
