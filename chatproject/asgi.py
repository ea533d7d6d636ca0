"""ASGI entry point: HTTP through Django, WebSockets through Channels.

Run with ``uvicorn chatproject.asgi:application`` or ``daphne chatproject.asgi:application``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings.base")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.auth import OptionalOriginValidator, WebSocketAuthStack  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from core.daphne_compat import patch_daphne  # noqa: E402
from core.startup import log_startup  # noqa: E402

patch_daphne()
log_startup()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OptionalOriginValidator(WebSocketAuthStack(URLRouter(websocket_urlpatterns))),
    }
)
