"""ASGI entry point: HTTP through Django, WebSockets through Channels, lifespan for the runtime.

Run with ``uvicorn chatproject.asgi:application`` or ``daphne chatproject.asgi:application``.
Under uvicorn the ``lifespan`` protocol starts the runtime (background loops) before the first
request; daphne has no lifespan, so the first request or socket starts it.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings.base")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from chat.routing import WebSocketEntry, websocket_urlpatterns  # noqa: E402
from core.daphne_compat import patch_daphne  # noqa: E402
from core.runtime import LifespanApp, RuntimeStarter  # noqa: E402
from core.startup import log_startup, tune_gc  # noqa: E402
from realtime.admission import AdmissionGate  # noqa: E402

patch_daphne()
log_startup()

application = ProtocolTypeRouter(
    {
        "http": RuntimeStarter(django_asgi_app),
        # A socket's connect starts the runtime itself (and answers 1011 if it cannot), so a
        # refused handshake starts nothing. Origin, authentication and route run inside one app
        # (chat/routing.py): nothing of them stays alive per socket.
        "websocket": AdmissionGate(WebSocketEntry(websocket_urlpatterns)),
        "lifespan": LifespanApp(),
    }
)
tune_gc()
