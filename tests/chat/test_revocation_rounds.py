"""The credential re-check costs one tiny query a round while nothing changes: the database's
triggers raise a counter on every change that can end a credential, by any writer, and only then
are all sockets' credentials looked up (tests/security/test_revocation.py proves the closes over
real servers)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session as DjangoSession
from django.utils import timezone
from rest_framework.authtoken.models import Token

from chat import revocation
from realtime.router import router
from realtime.session import Session
from tests.factories import UserFactory

User = get_user_model()


def counter() -> int | None:
    return revocation.generation()


@pytest.mark.django_db(transaction=True)
def test_the_counter_moves_on_every_change_that_can_end_a_credential_and_on_nothing_else():
    user = UserFactory()
    token = Token.objects.create(user=user)
    store = SessionStore()
    store["k"] = 1
    store.save()

    def moved(change) -> bool:
        before = counter()
        change()
        return counter() != before

    assert not moved(lambda: User.objects.filter(pk=user.pk).update(last_login=timezone.now()))
    assert not moved(lambda: User.objects.filter(pk=user.pk).update(first_name="Al"))
    store["k"] = 2
    assert not moved(store.save)  # a session's ordinary update ends nothing
    assert moved(lambda: User.objects.filter(pk=user.pk).update(is_active=False))
    assert moved(lambda: User.objects.filter(pk=user.pk).update(password="pbkdf2_sha256$1$x$y"))
    assert moved(lambda: Token.objects.filter(pk=token.pk).delete())
    assert moved(lambda: DjangoSession.objects.all().delete())
    assert moved(lambda: User.objects.filter(pk=user.pk).delete())


class Checks:
    """Records the credentials each round looks up (and revokes none)."""

    def __init__(self) -> None:
        self.rounds: list[set[int]] = []

    async def __call__(self, credentials: list[revocation.Credential]) -> dict[revocation.Credential, int]:
        self.rounds.append({c.user_id for c in credentials})
        return {}


@pytest.fixture
def tracked(monkeypatch):
    checks = Checks()
    monkeypatch.setattr(revocation, "_verdicts", checks)
    monkeypatch.setattr(revocation, "_tracked", {})
    monkeypatch.setattr(revocation, "_fresh", set())
    monkeypatch.setattr(router, "by_user", {})

    def add(user_id: int) -> None:
        session = Session(
            lambda message: None, connection_id=f"c{user_id}", user_id=user_id, queue_limit=8, on_dead=lambda: None
        )
        router.by_user[user_id] = {session}
        revocation.track(session, revocation.Credential(user_id=user_id, method="token", password_mark="m"))

    checks.add = add
    return checks


@pytest.mark.django_db(transaction=True)
async def test_a_round_without_a_change_looks_up_only_the_sockets_new_since_the_last(tracked, settings):
    settings.CREDENTIAL_SWEEP_SECONDS = 3600
    tracked.add(1)
    tracked.add(2)
    state = revocation.Rounds()
    await revocation.check_round(state)  # the first round checks everything
    await revocation.check_round(state)  # nothing changed, nobody new
    tracked.add(3)
    await revocation.check_round(state)  # only the new socket
    assert tracked.rounds == [{1, 2}, {3}]

    await database_sync_to_async(UserFactory)()
    await database_sync_to_async(lambda: User.objects.update(is_active=False))()  # no signal
    await revocation.check_round(state)
    assert tracked.rounds[-1] == {1, 2, 3}
    await revocation.check_round(state)
    assert len(tracked.rounds) == 3


@pytest.mark.django_db(transaction=True)
async def test_the_sweep_checks_every_socket_even_without_a_change(tracked, settings):
    settings.CREDENTIAL_SWEEP_SECONDS = 0.1
    tracked.add(1)
    state = revocation.Rounds()
    await revocation.check_round(state)
    state.swept_at -= 1  # as if the sweep interval had passed
    await revocation.check_round(state)
    assert tracked.rounds == [{1}, {1}]
