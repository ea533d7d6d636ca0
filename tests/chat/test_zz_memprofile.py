import gc
import tracemalloc

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from chatproject.asgi import application
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
N = 300


def make():
    users = [UserFactory() for _ in range(N)]
    for i in range(0, N, 10):
        ConversationFactory(owner=users[i], members=users[i + 1 : i + 10])
    return [Token.objects.create(user=u).key for u in users]


async def test_profile():
    tokens = await database_sync_to_async(make)()
    socks = []
    # warm: one connect + its caches per user, then close
    for t in tokens[:20]:
        c = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", f"Token {t}".encode())])
        await c.connect(timeout=5)
        await c.receive_output(5)
        socks.append(c)
    gc.collect()
    tracemalloc.start(25)
    s0 = tracemalloc.take_snapshot()
    for t in tokens[20:]:
        c = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", f"Token {t}".encode())])
        await c.connect(timeout=5)
        await c.receive_output(5)
        socks.append(c)
    import asyncio

    await asyncio.sleep(1)
    gc.collect()
    s1 = tracemalloc.take_snapshot()
    n = len(tokens) - 20
    stats = s1.compare_to(s0, "traceback")
    total = sum(s.size_diff for s in stats)
    print(f"\nTOTAL {total / n:.0f} B/socket")
    by_file = s1.compare_to(s0, "filename")
    for s in by_file[:15]:
        print(f"{s.size_diff / n:8.0f} B  {s.traceback[0].filename}")
    for s in stats[:25]:
        print(f"--- {s.size_diff / n:8.0f} B/socket count {s.count_diff}")
        for fr in s.traceback.format()[-12:]:
            if "site-packages/asgiref/testing" in fr:
                continue
            print("   ", fr.strip()[:150])
    for c in socks:
        await c.disconnect()
