from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from health import views as health_views
from realtime import views as realtime_views

handler400 = "core.errors.handler400"
handler403 = "core.errors.handler403"
handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health", health_views.health, name="health"),
    path("api/health/", health_views.health),
    path("api/health/live", health_views.live, name="health-live"),
    path("api/health/live/", health_views.live),
    path("metrics", health_views.metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/schema/ws/", realtime_views.ws_schema, name="ws-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include("chat.urls")),
    path("api/", include("presence.urls")),
    path("", include("web.urls")),
]
