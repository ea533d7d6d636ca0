"""Create demo users and a demo conversation (idempotent): the quick start runs it."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

from chat import services
from chat.models import Conversation

DEMO_USERS = ["alice", "bob", "carol"]
DEMO_PASSWORD = "demo-password"  # noqa: S105 (the documented demo login)
DEMO_TITLE = "Welcome"


class Command(BaseCommand):
    help = "Create demo users (alice, bob, carol; password 'demo-password'), an admin and a demo conversation."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        with transaction.atomic():
            users = []
            for name in DEMO_USERS:
                user, created = user_model.objects.get_or_create(username=name)
                if created:
                    user.set_password(DEMO_PASSWORD)
                    user.save()
                users.append(user)
            admin, created = user_model.objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True}
            )
            if created:
                admin.set_password(DEMO_PASSWORD)
                admin.save()
            if not Conversation.objects.filter(title=DEMO_TITLE, owner=users[0]).exists():
                services.conversation_create(
                    creator_id=users[0].pk, title=DEMO_TITLE, participant_ids=[u.pk for u in users[1:]]
                )
        for user in [*users, admin]:
            Token.objects.get_or_create(user=user)
        self.stdout.write(
            f"demo users: {', '.join(DEMO_USERS)} and admin (staff); password '{DEMO_PASSWORD}'. "
            "Get a token with POST /api/auth/token/."
        )
