from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from chat.models import Conversation, Message, Participant

PASSWORD = "correct-horse-battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Conversation
        skip_postgeneration_save = True

    title = factory.Sequence(lambda n: f"conversation {n}")
    owner = factory.SubFactory(UserFactory)

    @factory.post_generation
    def members(obj, create, extracted, **kwargs):
        if not create:
            return
        Participant.objects.get_or_create(conversation=obj, user=obj.owner, defaults={"role": "owner"})
        for user in extracted or []:
            Participant.objects.get_or_create(conversation=obj, user=user)


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message
