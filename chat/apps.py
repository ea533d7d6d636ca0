from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core.runtime import runtime
        from realtime.router import router

        from . import authcache, checks, revocation, selectors, streams, topics

        assert checks  # registers the system checks
        authcache.connect_signals()
        topics.connect_signals()
        router.set_stream_source(streams.fetch_messages, selectors.alatest_seqs)
        runtime.register_loop("chat.credential-check", revocation.run_credential_check_loop)
