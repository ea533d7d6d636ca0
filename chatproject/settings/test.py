"""Test settings: base.py with a throw-away database name and quick password hashing.

The test run's own redis-server is started by tests/plugin.py before these settings load, and
handed over through REDIS_HOST / REDIS_PORT like in production.
"""

import os

from .base import *  # noqa: F403
from .base import DATABASES

# One test database per run, so several runs can share a PostgreSQL server.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_DATABASE_NAME", f"test_chat_{os.getpid()}")}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The test process keeps Python's collector as it is: it opens and drops database connections
# per test and thread, and with the servers' high thresholds they waited for a collection long
# enough to exhaust PostgreSQL's connections. Servers started by the tests use base.py's.
GC_THRESHOLDS = None
GC_FREEZE_AT_START = False
