from django.apps import AppConfig


class PresenceConfig(AppConfig):
    name = "presence"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save, pre_save

        from core.runtime import runtime

        from . import consumers, firestore, loops, online, signals

        assert consumers  # registers presence's frame handlers and connection hook
        user_model = get_user_model()
        post_save.connect(
            signals.close_sockets_of_deactivated_user, sender=user_model, dispatch_uid="presence-deactivate"
        )
        post_delete.connect(signals.close_sockets_of_deleted_user, sender=user_model, dispatch_uid="presence-deleted")
        pre_save.connect(signals.note_password_change, sender=user_model, dispatch_uid="presence-password-note")
        post_save.connect(signals.revoke_on_password_change, sender=user_model, dispatch_uid="presence-password")
        runtime.register_loop("presence.grace", loops.grace_loop)
        runtime.register_loop("presence.online-batch", online.batcher.run)
        runtime.on_drain("presence.online-batch", online.batcher.flush)
        runtime.register_loop("presence.firestore-sync", firestore.run_sync_loop)
