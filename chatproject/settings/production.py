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
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_CONTENT_TYPE_NOSNIFF = True
WHITENOISE_USE_FINDERS = False
