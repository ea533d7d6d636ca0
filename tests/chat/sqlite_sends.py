"""Run by tests/chat/test_sqlite_sends.py in a fresh process on an SQLite database (the embedded
mode's default): concurrent sends through chat.services, then the stored seqs as JSON."""

from __future__ import annotations

import json

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from chat import services  # noqa: E402
from chat.models import Conversation, Message  # noqa: E402
from tests.chat.test_services import run_concurrently  # noqa: E402
from tests.factories import ConversationFactory, UserFactory  # noqa: E402


def main() -> None:
    call_command("migrate", verbosity=0)
    senders = [UserFactory() for _ in range(4)]
    conversation = ConversationFactory(owner=senders[0], members=senders[1:])
    count = 40

    def work(i: int) -> None:
        services.message_send(
            sender_id=senders[i % 4].pk,
            conversation_id=conversation.id,
            body=f"m{i}",
            client_msg_id=f"c{i % 30}" if i % 4 == 0 else None,
        )

    _, failures = run_concurrently(count, work)
    errors = [repr(exc) for exc in failures]
    repeat = services.message_send(
        sender_id=senders[0].pk, conversation_id=conversation.id, body="x", client_msg_id="c0"
    )
    # The connect and resume queries prepared once (core/prepared.py) on SQLite as well.
    from rest_framework.authtoken.models import Token

    from chat import selectors
    from chat.auth import _user_for_token

    reader = senders[1]
    token = Token.objects.create(user=reader)
    user = _user_for_token(token.key)
    [(_, resumed, _)] = selectors.resume_messages(
        user_id=reader.pk, cursors={str(conversation.id): 38}, per_conversation=100, total=100
    )
    prepared = {
        "token_user": [user.pk, user.username, user.is_active] == [reader.pk, reader.username, True],
        "conversation_seqs": selectors.conversation_seqs(user_id=reader.pk) == {str(conversation.id): count + 0},
        "resumed": [m.seq for m in resumed],
    }
    print(
        json.dumps(
            {
                "prepared": prepared,
                "vendor": connection.vendor,
                "errors": errors,
                "seqs": list(
                    Message.objects.filter(conversation=conversation).order_by("seq").values_list("seq", flat=True)
                ),
                "last_seq": Conversation.objects.get(pk=conversation.pk).last_seq,
                "repeat": repeat.repeat,
            }
        )
    )


main()
