"""Create the benchmark's users, tokens and conversations in the (throw-away) database.

Run by bench/scenarios.py with DATABASE_URL pointing at the benchmark database:

    python bench/setup_data.py --out DATA.json --receivers 200 --senders 4 --pool 10000

* conversation "fanout": the receivers and the senders (S1, S2); with --cluster-fanout a second
  one with receivers and senders of its own for the chat-cluster target, which shares the
  database: in one conversation each target's instances would fill the other's seqs from the
  database as gaps;
* the pool users (S3 idle sockets, S4 reconnect storm) in small conversations of --group users
  each; the storm sender takes part in the conversations of the first --storm-clients of them.

Writes {"conv_fanout", "receivers", "senders", "pool", "storm_sender"}: receivers and senders as
[user_id, username, token], pool users as [user_id, username, token, conversation_id], the storm
sender as [user_id, username, token, [conversation_id, ...]].
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--receivers", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--pool", type=int, default=10000)
    parser.add_argument("--group", type=int, default=10, help="pool users per conversation")
    parser.add_argument("--storm-clients", type=int, default=2000)
    parser.add_argument("--source", default=str(ROOT), help="source tree of the chat server")
    parser.add_argument("--cluster-fanout", action="store_true", help="a second fan-out conversation")
    args = parser.parse_args()

    sys.path.insert(0, args.source)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings.base")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from chat.models import Conversation, Participant

    User = get_user_model()  # noqa: N806

    def make_users(prefix: str, count: int) -> list[list]:
        users = User.objects.bulk_create(
            [User(username=f"{prefix}{i:05d}", password="!bench-unusable") for i in range(count)],
            batch_size=2000,
        )
        tokens = Token.objects.bulk_create([Token(key=secrets.token_hex(20), user=u) for u in users], batch_size=2000)
        return [[u.pk, u.username, t.key] for u, t in zip(users, tokens, strict=True)]

    def make_fanout(prefix: str) -> tuple[list[list], list[list], str]:
        receivers = make_users(f"{prefix}recv", args.receivers)
        senders = make_users(f"{prefix}send", args.senders)
        fanout = Conversation.objects.create(title=f"bench fan-out {prefix}".strip(), owner_id=senders[0][0])
        Participant.objects.bulk_create(
            [
                Participant(conversation=fanout, user_id=uid, role="owner" if uid == senders[0][0] else "member")
                for uid, _, _ in senders + receivers
            ],
            batch_size=2000,
        )
        return receivers, senders, str(fanout.pk)

    extra: dict[str, object] = {}
    with transaction.atomic():
        receivers, senders, fanout = make_fanout("")
        if args.cluster_fanout:
            c_receivers, c_senders, c_fanout = make_fanout("c")
            extra = {"cluster": {"conv_fanout": c_fanout, "receivers": c_receivers, "senders": c_senders}}
        pool = make_users("pool", args.pool)
        storm_sender = make_users("storm", 1)[0]
        groups = [pool[i : i + args.group] for i in range(0, len(pool), args.group)]
        convs = Conversation.objects.bulk_create(
            [Conversation(title=f"bench pool {i}", owner_id=g[0][0]) for i, g in enumerate(groups)], batch_size=2000
        )
        members = []
        storm_convs = []
        for i, (conv, group) in enumerate(zip(convs, groups, strict=True)):
            for j, user in enumerate(group):
                members.append(Participant(conversation=conv, user_id=user[0], role="owner" if j == 0 else "member"))
                user.append(str(conv.pk))
            if i * args.group < args.storm_clients:
                members.append(Participant(conversation=conv, user_id=storm_sender[0]))
                storm_convs.append(str(conv.pk))
        Participant.objects.bulk_create(members, batch_size=2000)
        storm_sender.append(storm_convs)
    Path(args.out).write_text(
        json.dumps(
            {
                "conv_fanout": fanout,
                "receivers": receivers,
                "senders": senders,
                "pool": pool,
                "storm_sender": storm_sender,
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
