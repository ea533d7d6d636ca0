from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from typing import Any

import channels.db as channels_db
import django.db as django_db
import pytest
from django.core.management.base import CommandError
from django.test import TransactionTestCase
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import login_throttle, ratelimit, services
from core import redis_client
from core.runtime import runtime
from realtime import registry
from tests.factories import ConversationFactory, UserFactory
from tests.plugin import session_redis

_log = logging.getLogger("tests")
_original_fixture_teardown = TransactionTestCase._fixture_teardown


def _fixture_teardown_retrying(self: TransactionTestCase) -> None:
    """Integration tests keep real server processes running across tests, and their background
    loops (presence grace, reaping, outbox) write to the same database. The TRUNCATE of a
    transactional test's teardown can then lose a deadlock to one of those transactions; that
    says nothing about the code under test, so the flush is tried again."""
    for attempt in range(5):
        try:
            _original_fixture_teardown(self)
            return  # noqa: TRY300
        except CommandError as exc:
            if attempt == 4:
                raise
            _log.warning("test database flush failed (%s: %s), retrying", type(exc.__cause__).__name__, exc.__cause__)
            time.sleep(0.2 * (attempt + 1))


TransactionTestCase._fixture_teardown = _fixture_teardown_retrying  # type: ignore[method-assign]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test stops the runtime it may have started (see below); sync tests, such as
    the browser tests with their own event loop, are left alone."""
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.fixturenames.append("_runtime_stopped_after_test")  # type: ignore[attr-defined]


@pytest.fixture
async def _runtime_stopped_after_test() -> Any:
    """A test's sockets start the runtime's loops on the test's event loop. They are cancelled,
    and the channel layer's connections closed, while that loop still runs, so no background
    task is left for the loop's shutdown to wait on."""
    yield
    if runtime.started and runtime.loop is asyncio.get_running_loop():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runtime.stop(), 5)
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is not None and hasattr(layer, "flush"):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(layer.flush(), 5)


@pytest.fixture(autouse=True)
def _fresh_state() -> Any:
    """Each test starts with an empty Redis and no process-local leftovers."""
    session_redis()
    redis_client.get_sync().flushall()
    redis_client.reset_clients()
    ratelimit.reset_local()
    login_throttle.reset_local()
    services._local_tickets.clear()
    registry.reset_registry()
    yield
    # channels' test communicators patch channels.db.close_old_connections with a no-op while
    # they run; communicators running concurrently (asyncio.gather) can undo those patches out
    # of order and leave the no-op in place, which would stop db_call from closing broken
    # connections in later tests.
    channels_db.close_old_connections = django_db.close_old_connections


@pytest.fixture
def redis_server():
    return session_redis()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def staff_user(db):
    """Staff in the "operator" role (presence/roles.py): every operator permission."""
    return operator(UserFactory(is_staff=True))


def operator(user, role: str = "operator"):
    from django.contrib.auth.models import Group

    from presence.roles import ensure_roles

    ensure_roles()  # a transactional test's flush empties the groups the migration made
    user.groups.add(Group.objects.get(name=role))
    return user


def client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def conversation(user, other_user):
    return ConversationFactory(owner=user, members=[other_user])


def assert_error(response, status: int, code: str) -> dict:
    body = response.json()
    assert response.status_code == status, body
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    if status == 400:
        assert isinstance(body["errors"], dict)
    return body


@pytest.fixture(scope="session")
def firestore_emulator_session():
    from harness.firestore_emulator import FirestoreEmulator

    emulator = FirestoreEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def firestore_emulator(firestore_emulator_session, settings):
    """Firestore sync pointed at the real emulator, wiped before the test."""
    emulator = firestore_emulator_session
    if emulator.proc is None or emulator.proc.poll() is not None:
        emulator.start()
    emulator.wipe()
    settings.FIRESTORE_PROJECT_ID = emulator.project
    settings.FIRESTORE_EMULATOR_HOST = emulator.host
    yield emulator  # noqa: PT022


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_db_sessions(django_db_setup, django_db_blocker):
    """Server processes and worker threads may still hold a session on the test database at
    the end of the run; end them so the database can be dropped."""
    yield
    from django.db import connection

    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        connection.close()


@pytest.fixture(scope="session")
def redis_cluster_session():
    """One real 6-node Redis Cluster (3 masters, 3 replicas) for the whole run."""
    from harness.redis_cluster import RedisCluster

    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_session):
    """The session's cluster, healed (killed or frozen nodes back as replicas) and emptied."""
    redis_cluster_session.heal()
    redis_cluster_session.flushall()
    yield redis_cluster_session
    redis_cluster_session.heal()
