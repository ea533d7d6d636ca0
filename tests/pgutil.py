"""Helpers for tests that act on the test database's server."""

from __future__ import annotations

import threading


def terminate_backends(pids: set[int]) -> None:
    """Terminate these backends, from a thread of its own with a connection of its own (as the
    database would drop them). Blocks; call it with ``asyncio.to_thread`` from async code."""
    from django.db import connection

    def run() -> None:
        try:
            with connection.cursor() as cursor:
                for pid in pids:
                    cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
