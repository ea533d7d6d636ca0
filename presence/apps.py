from django.apps import AppConfig


class PresenceConfig(AppConfig):
    name = "presence"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from core.runtime import runtime

        from . import consumers, firestore, loops, online
        from .signals import close_sockets_of_deactivated_user

        assert consumers  # registers presence's frame handlers and connection hook
        post_save.connect(
            close_sockets_of_deactivated_user, sender=get_user_model(), dispatch_uid="presence-deactivate"
        )
        runtime.register_loop("presence.grace", loops.grace_loop)
        runtime.register_loop("presence.online-batch", online.batcher.run)
        runtime.on_drain("presence.online-batch", online.batcher.flush)
        runtime.register_loop("presence.firestore-sync", firestore.run_sync_loop)
