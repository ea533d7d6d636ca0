"""Settings for every environment.

The environment is read here and nowhere else. A bad value stops start-up with one line that
names the variable (``SystemExit``), so an operator sees the cause, not a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import dj_database_url

from .env import (
    ConfigError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    parse_gc_thresholds,
    parse_hostports,
    parse_rate,
    port_open,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent


# --- Core -----------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)
# Development-only default; production.py refuses to start without DJANGO_SECRET_KEY.
SECRET_KEY = env_str("DJANGO_SECRET_KEY") or "dev-only-insecure-secret-key-change-me"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTANCE_ID = env_str("INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}"
if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", INSTANCE_ID):
    raise ConfigError("INSTANCE_ID", "use 1-64 letters, digits, '.', '_' or '-'")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, not a CDN
    "realtime",
    "chat",
    "presence",
    "health",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "chat.middleware.ApplicationErrorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
WSGI_APPLICATION = "chatproject.wsgi.application"
ASGI_APPLICATION = "chatproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
try:
    # Persistent connections (checked before reuse): opening a PostgreSQL connection per call
    # dominated the cost of a WebSocket connect and of a send.
    _db = dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0), conn_health_checks=True
    )
except Exception as exc:  # dj-database-url raises several types for a bad URL  # noqa: BLE001
    raise ConfigError("DATABASE_URL", f"not a database URL ({exc.__class__.__name__})") from None
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock up front, so concurrent sends queue on the
    # lock instead of failing with "database is locked" when they upgrade a read lock.
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif _db["ENGINE"] == "django.db.backends.postgresql":
    # libpq waits forever for a server that accepts and never answers; fail the request instead
    # (a connect_timeout in DATABASE_URL's query string wins).
    _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and the channel layer ------------------------------------------------------------

REDIS_HOST = env_str("REDIS_HOST")
REDIS_PORT = env_int("REDIS_PORT", 6379, minimum=1)
REDIS_USERNAME = env_str("REDIS_USERNAME")  # an ACL user; empty is the default user
REDIS_PASSWORD = env_str("REDIS_PASSWORD")
REDIS_SSL = env_bool("REDIS_SSL", False)
# A CA bundle to verify Redis's certificate with (a self-managed CA); empty: the system's store.
REDIS_SSL_CA_CERTS = env_str("REDIS_SSL_CA_CERTS")
if REDIS_SSL_CA_CERTS and not os.path.isfile(REDIS_SSL_CA_CERTS):
    raise ConfigError("REDIS_SSL_CA_CERTS", f"no such file: {REDIS_SSL_CA_CERTS!r}")
REDIS_DB = env_int("REDIS_DB", 0, minimum=0)
REDIS_SENTINELS = parse_hostports("REDIS_SENTINELS", env_str("REDIS_SENTINELS")) if env_str("REDIS_SENTINELS") else []
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER", "mymaster")
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "chat")
# REDIS_CLUSTER: REDIS_HOST:REDIS_PORT is any node of a Redis Cluster, or a configuration endpoint.
REDIS_CLUSTER = env_bool("REDIS_CLUSTER", False)
if REDIS_CLUSTER and REDIS_SENTINELS:
    raise ConfigError("REDIS_CLUSTER", "a Redis Cluster is not found through Sentinel; unset REDIS_SENTINELS")
if REDIS_CLUSTER and REDIS_DB:
    raise ConfigError("REDIS_DB", "a Redis Cluster has database 0 only")

# CHAT_MODE: "auto" (cluster when Redis is configured or answers on localhost:6379), "single"
# or "cluster". Single mode is one process with an in-process channel layer.
CHAT_MODE = env_str("CHAT_MODE", "auto").lower()
if CHAT_MODE not in {"auto", "single", "cluster"}:
    raise ConfigError("CHAT_MODE", f"expected auto, single or cluster, got {CHAT_MODE!r}")
if CHAT_MODE == "auto":
    if REDIS_HOST or REDIS_SENTINELS:
        CHAT_MODE = "cluster"
    else:
        CHAT_MODE = "cluster" if port_open("localhost", REDIS_PORT) else "single"
REDIS_HOST = REDIS_HOST or "localhost"

REDIS = {
    "host": REDIS_HOST,
    "port": REDIS_PORT,
    "username": REDIS_USERNAME or None,
    "password": REDIS_PASSWORD or None,
    "cluster": REDIS_CLUSTER,
    "ssl": REDIS_SSL,
    "ssl_ca_certs": REDIS_SSL_CA_CERTS or None,
    "db": REDIS_DB,
    "sentinels": REDIS_SENTINELS,
    "sentinel_master": REDIS_SENTINEL_MASTER,
}


def _layer_host() -> dict[str, Any] | str:
    if REDIS_SENTINELS:
        return {
            "sentinels": REDIS_SENTINELS,
            "master_name": REDIS_SENTINEL_MASTER,
            "sentinel_kwargs": {"password": REDIS_PASSWORD} if REDIS_PASSWORD else {},
            "username": REDIS_USERNAME or None,
            "password": REDIS_PASSWORD or None,
            "db": REDIS_DB,
        }
    scheme = "rediss" if REDIS_SSL else "redis"
    auth = f"{REDIS_USERNAME}:{REDIS_PASSWORD}@" if REDIS_PASSWORD else ""
    return f"{scheme}://{auth}{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


def _cluster_layer_options() -> dict[str, Any]:
    options: dict[str, Any] = {"require_full_coverage": False}
    if REDIS_USERNAME:
        options["username"] = REDIS_USERNAME
    if REDIS_PASSWORD:
        options["password"] = REDIS_PASSWORD
    if REDIS_SSL:
        options["ssl"] = True
        if REDIS_SSL_CA_CERTS:
            options["ssl_ca_certs"] = REDIS_SSL_CA_CERTS
    return options


# "pubsub" (RedisPubSubChannelLayer, the default: chosen by the fan-out benchmark, see README)
# or "core" (RedisChannelLayer: lists and sorted sets, survives short subscriber gaps).
CHANNEL_LAYER_BACKEND = env_str("CHANNEL_LAYER_BACKEND", "pubsub").lower()
if CHANNEL_LAYER_BACKEND not in {"pubsub", "core"}:
    raise ConfigError("CHANNEL_LAYER_BACKEND", f"expected pubsub or core, got {CHANNEL_LAYER_BACKEND!r}")
if REDIS_CLUSTER and CHANNEL_LAYER_BACKEND != "pubsub":
    raise ConfigError("CHANNEL_LAYER_BACKEND", "on a Redis Cluster events travel on sharded pub/sub; use pubsub")
if CHAT_MODE == "cluster" and REDIS_CLUSTER:
    # Sharded pub/sub: one shard channel per group, one connection per master.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis_cluster.RedisClusterChannelLayer",
            "CONFIG": {
                "hosts": [{"host": REDIS_HOST, "port": REDIS_PORT}],
                "prefix": f"{REDIS_KEY_PREFIX}:layer",
                "cluster_kwargs": _cluster_layer_options(),
            },
        }
    }
elif CHAT_MODE == "cluster" and CHANNEL_LAYER_BACKEND == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "realtime.pubsub_layer.RedisPubSubLayer",
            "CONFIG": {"hosts": [_layer_host()], "prefix": f"{REDIS_KEY_PREFIX}:layer"},
        }
    }
elif CHAT_MODE == "cluster":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [_layer_host()],
                "prefix": f"{REDIS_KEY_PREFIX}:layer",
                # One channel per instance carries every event of its sockets.
                "capacity": 10000,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Chat behaviour -------------------------------------------------------------------------

PRESENCE_GRACE_SECONDS = env_float("PRESENCE_GRACE_SECONDS", 10.0)
INSTANCE_TTL_SECONDS = env_float("INSTANCE_TTL_SECONDS", 15.0, minimum=1.0)
# The heartbeat is renewed several times per TTL, so one late renewal does not kill an instance.
INSTANCE_HEARTBEAT_SECONDS = env_float("INSTANCE_HEARTBEAT_SECONDS", INSTANCE_TTL_SECONDS / 3, minimum=0.1)
WS_HEARTBEAT_INTERVAL_SECONDS = env_int("WS_HEARTBEAT_INTERVAL_SECONDS", 25, minimum=1)
# The cyclic garbage collector (core/startup.py): its three thresholds, and whether the objects
# made at start-up are frozen out of its scans. Python's defaults (700,10,10) had an instance
# holding thousands of sockets spend much of a reconnect storm in full collections.
GC_THRESHOLDS = parse_gc_thresholds("GC_THRESHOLDS", env_str("GC_THRESHOLDS", "50000,20,100"))
GC_FREEZE_AT_START = env_bool("GC_FREEZE_AT_START", True)
WS_MAX_FRAME_BYTES = env_int("WS_MAX_FRAME_BYTES", 65536, minimum=1024)
# Outgoing frames, and bytes (0: no byte bound), queued for one socket before it is closed with
# 4008: what one client that does not read may cost this process.
WS_SEND_QUEUE_FRAMES = env_int("WS_SEND_QUEUE_FRAMES", 1000, minimum=10)
WS_SEND_QUEUE_BYTES = env_int("WS_SEND_QUEUE_BYTES", 8 * 1024 * 1024, minimum=0)
MESSAGE_MAX_CHARS = env_int("MESSAGE_MAX_CHARS", 4000, minimum=1)
RATE_LIMIT_MESSAGES = env_str("RATE_LIMIT_MESSAGES", "10/s burst 30")
RATE_LIMIT_PER_SECOND, RATE_LIMIT_BURST = parse_rate("RATE_LIMIT_MESSAGES", RATE_LIMIT_MESSAGES)
# A cluster-wide budget per user for every other write and frame type (chat/ratelimit.py);
# HTTP and the socket share the budget of one action. Sustained refusals close a socket (1008).
RATE_LIMIT_TYPING = env_str("RATE_LIMIT_TYPING", "2/s burst 10")
RATE_LIMIT_READS = env_str("RATE_LIMIT_READS", "5/s burst 20")
RATE_LIMIT_STATUS = env_str("RATE_LIMIT_STATUS", "1/s burst 5")
RATE_LIMIT_PRESENCE_SYNC = env_str("RATE_LIMIT_PRESENCE_SYNC", "1/s burst 5")
RATE_LIMIT_PINGS = env_str("RATE_LIMIT_PINGS", "2/s burst 10")
RATE_LIMIT_RESUMES = env_str("RATE_LIMIT_RESUMES", "1/s burst 5")
RATE_LIMIT_TICKETS = env_str("RATE_LIMIT_TICKETS", "1/s burst 10")
RATE_LIMIT_CONVERSATIONS = env_str("RATE_LIMIT_CONVERSATIONS", "1/s burst 10")
RATE_LIMITS = {
    "typing": parse_rate("RATE_LIMIT_TYPING", RATE_LIMIT_TYPING),
    "read": parse_rate("RATE_LIMIT_READS", RATE_LIMIT_READS),
    "status": parse_rate("RATE_LIMIT_STATUS", RATE_LIMIT_STATUS),
    "presence_sync": parse_rate("RATE_LIMIT_PRESENCE_SYNC", RATE_LIMIT_PRESENCE_SYNC),
    "ping": parse_rate("RATE_LIMIT_PINGS", RATE_LIMIT_PINGS),
    "resume": parse_rate("RATE_LIMIT_RESUMES", RATE_LIMIT_RESUMES),
    "ticket": parse_rate("RATE_LIMIT_TICKETS", RATE_LIMIT_TICKETS),
    "conversation": parse_rate("RATE_LIMIT_CONVERSATIONS", RATE_LIMIT_CONVERSATIONS),
}
TYPING_MAX_PARTICIPANTS = env_int("TYPING_MAX_PARTICIPANTS", 100, minimum=0)
TYPING_EXPIRY_SECONDS = 10
WS_TICKET_TTL_SECONDS = 60
MESSAGES_PAGE_MAX = 200
RESUME_MAX_PER_CONVERSATION = 1000
RESUME_MAX_CONVERSATIONS = 1000
# Clients of a lost socket wait a random time in [0, this] before reconnecting (sent in hello).
# On SIGTERM: health answers 503 "draining" and handshakes are refused this long before sockets
# are closed with 1012 (time for a balancer polling health to take the instance out).
DRAIN_NOTICE_SECONDS = env_float("DRAIN_NOTICE_SECONDS", 1.0)
if DRAIN_NOTICE_SECONDS > 5:
    raise ConfigError("DRAIN_NOTICE_SECONDS", "at most 5 (an instance exits within 10 s of SIGTERM)")
WS_RECONNECT_WINDOW_MS = env_int("WS_RECONNECT_WINDOW_MS", 10000, minimum=0)
# Messages one resume frame may send in all; past it, resume.truncated (the client pages).
RESUME_MAX_TOTAL_MESSAGES = env_int("RESUME_MAX_TOTAL_MESSAGES", 10000, minimum=1)
# Admission: above these an instance refuses handshakes with HTTP 503 and Retry-After (the
# balancer tries another instance) rather than let every connect crawl; 0 turns a limit off.
# The rate is about what one instance on one core takes without its connects slowing down.
WS_MAX_CONNECTS_PER_SECOND = env_int("WS_MAX_CONNECTS_PER_SECOND", 500, minimum=0)
WS_MAX_SOCKETS = env_int("WS_MAX_SOCKETS", 20000, minimum=0)

# --- Firestore ------------------------------------------------------------------------------

FIRESTORE_PROJECT_ID = env_str("FIRESTORE_PROJECT_ID") or env_str("GOOGLE_CLOUD_PROJECT")
FIRESTORE_EMULATOR_HOST = env_str("FIRESTORE_EMULATOR_HOST")
FIRESTORE_STATUS_COLLECTION = env_str("FIRESTORE_STATUS_COLLECTION", "user_status")

# --- Metrics --------------------------------------------------------------------------------

METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- Auth, REST framework, OpenAPI ----------------------------------------------------------

# Every authenticate() (the token login, the admin login, anything else) goes through the
# throttled backend: failed attempts per account and attempts per client address.
AUTHENTICATION_BACKENDS = ["chat.backends.ThrottledModelBackend"]
LOGIN_RATE_LIMIT_ACCOUNT = env_str("LOGIN_RATE_LIMIT_ACCOUNT", "5/m burst 10")
LOGIN_ACCOUNT_PER_SECOND, LOGIN_ACCOUNT_BURST = parse_rate("LOGIN_RATE_LIMIT_ACCOUNT", LOGIN_RATE_LIMIT_ACCOUNT)
LOGIN_RATE_LIMIT_ADDRESS = env_str("LOGIN_RATE_LIMIT_ADDRESS", "30/m burst 30")
LOGIN_ADDRESS_PER_SECOND, LOGIN_ADDRESS_BURST = parse_rate("LOGIN_RATE_LIMIT_ADDRESS", LOGIN_RATE_LIMIT_ADDRESS)
# API tokens expire this long after they were issued (0: never); an expired one is a 401 over
# HTTP and a 4401 close on the socket, and the next login issues a new one.
TOKEN_TTL_SECONDS = env_int("TOKEN_TTL_SECONDS", 30 * 24 * 3600, minimum=0)
# How often each instance reads the database's credential-change counter (raised by triggers on
# a deactivation, a password change, a deleted user, token or session, even by a bulk update
# that fires no signal) and, when it moved, re-checks the credentials of its live sockets.
CREDENTIAL_CHECK_SECONDS = env_float("CREDENTIAL_CHECK_SECONDS", 1.0, minimum=0.1)
# How often every live socket's credential is re-checked whatever the counter says: tokens and
# sessions that expire with time, and databases without the triggers (then: every round).
CREDENTIAL_SWEEP_SECONDS = env_float("CREDENTIAL_SWEEP_SECONDS", 60.0, minimum=0.1)
# Who may put whom into a conversation: "open" (any active user) or "contacts" (only users
# who already share a conversation with the actor).
CONVERSATION_ADD_POLICY = env_str("CONVERSATION_ADD_POLICY", "open").lower()
if CONVERSATION_ADD_POLICY not in {"open", "contacts"}:
    raise ConfigError("CONVERSATION_ADD_POLICY", f"expected open or contacts, got {CONVERSATION_ADD_POLICY!r}")
# Live sockets one user may hold across the cluster; the next handshake is closed with 4429.
WS_MAX_SOCKETS_PER_USER = env_int("WS_MAX_SOCKETS_PER_USER", 20, minimum=1)
# Live sockets one client address may hold across the cluster (0: no cap); the next handshake
# is closed with 4429. IPv6 addresses count by their /64. Off by default: behind a proxy that is
# not in TRUSTED_PROXIES, or behind carrier NAT, many clients share one address.
WS_MAX_SOCKETS_PER_ADDRESS = env_int("WS_MAX_SOCKETS_PER_ADDRESS", 0, minimum=0)
# Peers (addresses or networks) whose X-Forwarded-For names the client address of a socket.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ConfigError("TRUSTED_PROXIES", f"expected addresses or networks, got {_proxy!r}") from None

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    # Token first, so an unauthenticated call gets 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "chat.authentication.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["core.validation.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Chat API",
    "DESCRIPTION": "HTTP API of the chat backend. Every WebSocket action has an endpoint here.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "core.openapi.add_error_responses"],
}

# --- I18N, static ---------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The client SDK is served as it is published (clients/js/src), at /static/sdk/.
STATICFILES_DIRS = [("sdk", BASE_DIR / "clients" / "js" / "src")]
WHITENOISE_USE_FINDERS = True

# --- Logging --------------------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ConfigError("LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {LOG_LEVEL!r}")
LOG_FORMAT = env_str("LOG_FORMAT", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "core.logging.ContextFilter"}},
    "formatters": {
        "json": {"()": "core.logging.JsonFormatter"},
        "plain": {"()": "core.logging.KeyValueFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": sys.stderr,
            "filters": ["context"],
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
        "uvicorn.access": {"level": "WARNING"},
        # uvicorn's own lines (start-up, WebSocket handshakes with their query string) in the
        # same format and through the same redaction as ours.
        "uvicorn": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
    },
}
