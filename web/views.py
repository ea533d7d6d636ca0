"""The browser chat app at ``/``: a sign-in form (Django session) and one page that the SDK
(clients/js, served as static files) drives. Every user-supplied text is rendered by the
page's script with textContent; the templates hold only the signed-in user's id and name,
passed through ``json_script``."""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods, require_POST


@ensure_csrf_cookie
@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    """The chat for a signed-in user, else the sign-in form (POST signs in)."""
    if request.method == "POST":
        user = authenticate(
            request, username=request.POST.get("username", ""), password=request.POST.get("password", "")
        )
        if user is None or not user.is_active:
            return render(request, "web/login.html", {"error": "Wrong username or password."}, status=400)
        login(request, user)
        return HttpResponseRedirect("/")
    if not request.user.is_authenticated:
        return render(request, "web/login.html")
    me = {"id": request.user.pk, "username": request.user.get_username()}
    return render(request, "web/chat.html", {"me": me})


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect("/")
