"""Health for load balancers and operators, and the Prometheus scrape endpoint."""

from __future__ import annotations

import ipaddress
import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.errors import PermissionDenied, error_response
from core.runtime import runtime
from realtime import admission
from realtime.router import router

from . import checks


@require_GET
async def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "instance_id": settings.INSTANCE_ID})


@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    if runtime.draining:
        # At once, without probing anything: the balancer must stop sending here now.
        draining = {"status": "draining", "instance_id": settings.INSTANCE_ID, "mode": settings.CHAT_MODE}
        return JsonResponse(draining, status=503)
    services = await checks.run_all()
    core = ["database", "channel_layer"] + (["redis"] if settings.CHAT_MODE == "cluster" else [])
    if any(services[name]["status"] == "down" for name in core):
        status, code = "unavailable", 503
    elif any(s["status"] == "down" for s in services.values()) or admission.limits.shedding():
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    body = {
        "status": status,
        "instance_id": settings.INSTANCE_ID,
        "mode": settings.CHAT_MODE,
        "services": services,
        "connections": {"local": router.local_connection_count()},
    }
    return JsonResponse(body, status=code)


def _metrics_allowed(request: HttpRequest) -> bool:
    if settings.METRICS_TOKEN:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and secrets.compare_digest(header[7:], settings.METRICS_TOKEN):
            return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOWED_NETWORKS)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _metrics_allowed(request):
        return error_response(PermissionDenied("Metrics are not public."))
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
