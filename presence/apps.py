from django.apps import AppConfig


class PresenceConfig(AppConfig):
    name = "presence"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from .signals import close_sockets_of_deactivated_user

        post_save.connect(
            close_sockets_of_deactivated_user, sender=get_user_model(), dispatch_uid="presence-deactivate"
        )
