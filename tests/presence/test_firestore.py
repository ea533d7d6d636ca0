"""Status sync against the real Firestore emulator."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from presence import firestore
from presence.models import StatusOutbox, UserStatus
from presence.services import status_set, went_offline, went_online
from tests.chat.wsutil import connect
from tests.factories import ConversationFactory, UserFactory

pytestmark = [pytest.mark.firestore, pytest.mark.django_db(transaction=True)]


def doc(user_id: int) -> dict | None:
    try:
        snap = firestore._doc(user_id).get(retry=None, timeout=5)
    except Exception:
        firestore.reset_client()
        raise
    return snap.to_dict() if snap.exists else None


def drain() -> None:
    deadline = time.monotonic() + 10
    while StatusOutbox.objects.exists():
        StatusOutbox.objects.update(next_attempt_at=timezone.now())
        firestore.sync_due()
        assert time.monotonic() < deadline, "outbox did not drain"


def test_document_fields_follow_each_transition(firestore_emulator, user):
    went_online(user_id=user.pk)
    drain()
    d = doc(user.pk)
    assert set(d) == {"user_id", "status", "text", "online", "last_seen", "updated_at", "version"}
    assert (d["user_id"], d["status"], d["online"], d["version"]) == (user.pk, "online", True, 1)
    assert d["updated_at"] is not None

    status_set(user_id=user.pk, status="busy", text="focus")
    drain()
    d = doc(user.pk)
    assert (d["status"], d["text"], d["version"]) == ("busy", "focus", 2)

    status_set(user_id=user.pk, status="invisible")
    drain()
    assert (doc(user.pk)["status"], doc(user.pk)["online"]) == ("offline", False)

    status_set(user_id=user.pk, status="online")
    went_offline(user_id=user.pk)
    drain()
    d = doc(user.pk)
    assert (d["status"], d["online"], d["version"]) == ("offline", False, 5)
    assert d["last_seen"]


def test_an_older_version_never_overwrites_a_newer_one(firestore_emulator, user):
    assert firestore.write_status(user_id=user.pk, version=5, payload={"status": "busy", "online": True})
    assert not firestore.write_status(user_id=user.pk, version=4, payload={"status": "online", "online": True})
    assert doc(user.pk)["status"] == "busy"


def test_concurrent_writers_end_with_the_latest_version(firestore_emulator, user):
    errors: list[Exception] = []

    def writer(version: int) -> None:
        try:
            firestore.write_status(user_id=user.pk, version=version, payload={"status": f"v{version}", "online": True})
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    d = doc(user.pk)
    assert (d["version"], d["status"]) == (12, "v12")


def test_coalesced_outbox_sends_only_the_latest_state(firestore_emulator, user):
    went_online(user_id=user.pk)
    status_set(user_id=user.pk, status="away")
    status_set(user_id=user.pk, status="busy")
    assert StatusOutbox.objects.count() == 1
    assert StatusOutbox.objects.get().version == 3
    drain()
    assert doc(user.pk)["version"] == 3


def test_statuses_waiting_out_a_backoff_go_as_soon_as_firestore_answers_again(firestore_emulator, user):
    """After failed writes a row may wait up to MAX_BACKOFF_SECONDS; the sync loop's probe sends
    every such row as soon as Firestore answers a read, and leaves them waiting while it does not."""
    went_online(user_id=user.pk)
    status_set(user_id=user.pk, status="busy", text="back soon")
    later = timezone.now() + timezone.timedelta(seconds=firestore.MAX_BACKOFF_SECONDS)
    StatusOutbox.objects.update(attempts=6, next_attempt_at=later)
    firestore_emulator.stop()
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 (whatever the client raises for a refused call)
            firestore.probe_and_release()
        assert StatusOutbox.objects.get().next_attempt_at == later
    finally:
        firestore_emulator.start()
    deadline = time.monotonic() + 30
    while True:  # the emulator answers reads a moment after its port opens
        try:
            assert firestore.probe_and_release() == 1
            break
        except Exception:
            firestore.reset_client()
            assert time.monotonic() < deadline, "the emulator did not answer"
            time.sleep(0.5)
    assert firestore.sync_due() == 1
    assert not StatusOutbox.objects.exists()
    sent = doc(user.pk)
    assert (sent["version"], sent["status"], sent["text"]) == (2, "busy", "back soon")


async def test_emulator_down_chat_keeps_working_then_status_catches_up(firestore_emulator, settings):
    alice, bob = await database_sync_to_async(lambda: [UserFactory(), UserFactory()])()
    conv = await database_sync_to_async(ConversationFactory)(owner=alice, members=[bob])
    a = await connect(alice)
    await asyncio.to_thread(firestore_emulator.stop)
    try:
        b = await connect(bob)
        ack = await b.request({"type": "message.send", "id": "m", "conversation_id": str(conv.id), "body": "hi"})
        assert ack["type"] == "ack"
        assert (await a.expect_type("message.new"))["message"]["body"] == "hi"
        ack = await b.request({"type": "status.set", "id": "s", "status": "busy", "text": "still here"})
        assert ack["presence"]["status"] == "busy"
        busy = await a.expect(lambda f: f["type"] == "presence" and f["user_id"] == bob.pk and f["status"] == "busy")

        from health.checks import run_all

        services = await run_all()
        assert services["firestore"]["status"] == "down"
        row = await database_sync_to_async(StatusOutbox.objects.get)(user_id=bob.pk)
        assert row.version == busy["version"]
    finally:
        await asyncio.to_thread(firestore_emulator.start)

    # The instance's sync loop retries with backoff; once the emulator answers, the latest
    # state lands without anybody doing anything.
    deadline = time.monotonic() + 45
    while True:
        try:
            d = await asyncio.to_thread(doc, bob.pk)
        except Exception:
            d = None  # the emulator is still starting
        if d and d["version"] == busy["version"]:
            break
        assert time.monotonic() < deadline, f"status did not catch up: {d}"
        await asyncio.sleep(0.5)
    assert (d["status"], d["text"], d["online"]) == ("busy", "still here", True)
    assert (await run_all())["firestore"]["status"] == "ok"
    await a.close()
    await b.close()


def test_resync_command_pushes_every_users_status(firestore_emulator, user, other_user):
    from django.core.management import call_command

    UserStatus.objects.create(user=user, status="away", online=True, version=9, public_version=7)
    UserStatus.objects.create(user=other_user, status="busy", online=False, version=3, public_version=3)
    call_command("presence_resync", "--now")
    assert (doc(user.pk)["status"], doc(user.pk)["version"]) == ("away", 7)
    assert (doc(other_user.pk)["status"], doc(other_user.pk)["version"]) == ("offline", 3)
