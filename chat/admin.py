from django.contrib import admin

from .models import Conversation, Message, Participant


class ParticipantInline(admin.TabularInline):
    model = Participant
    extra = 0
    raw_id_fields = ["user"]
    readonly_fields = ["joined_at", "last_read_seq", "last_read_at"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "owner", "last_seq", "last_message_at", "created_at"]
    search_fields = ["title", "id"]
    raw_id_fields = ["owner"]
    readonly_fields = ["id", "last_seq", "last_message_at", "created_at"]
    inlines = [ParticipantInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["conversation", "seq", "sender", "short_body", "created_at"]
    list_select_related = ["sender", "conversation"]
    search_fields = ["body", "sender__username"]
    list_filter = ["created_at"]
    raw_id_fields = ["conversation", "sender"]
    readonly_fields = ["id", "conversation", "seq", "sender", "client_msg_id", "created_at"]

    @admin.display(description="body")
    def short_body(self, obj: Message) -> str:
        return obj.body if len(obj.body) <= 80 else obj.body[:77] + "..."
