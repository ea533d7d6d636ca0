"""Production: tightens base.py and demands the secrets it must not default."""

import os

from .base import *  # noqa: F403
from .base import env_bool, env_int

if not os.environ.get("DJANGO_SECRET_KEY", "").strip():
    raise SystemExit("configuration error: DJANGO_SECRET_KEY: required in production")

DEBUG = False
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# HTTPS only: TLS ends at the proxy, which sets X-Forwarded-Proto (see README "Security").
# Health checks and the metrics scrape come from the balancer over plain HTTP: not redirected.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_REDIRECT_EXEMPT = [r"^api/health", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Preloading is a commitment browsers keep for months: the operator's decision, not a default.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
WHITENOISE_USE_FINDERS = False
