"""chatproject settings: one package; the environment is read only through ``env``.

With no environment at all the project runs embedded: SQLite file, local-memory cache,
in-memory channel layer. ``DATABASE_URL`` and ``REDIS_URL`` switch to PostgreSQL and Redis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from chatproject.settings.env import (
    database_from_env,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_str,
    env_url,
    redis_url_from_env,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

# --- Production: one switch ------------------------------------------------------------
# CHAT_PRODUCTION=1 turns on everything `manage.py check --deploy` asks for (docs/deploy.md):
# DEBUG off, a real SECRET_KEY and ALLOWED_HOSTS required, secure cookies, HSTS, HTTPS
# redirects (or a proxy's forwarded-protocol header), and no demo conveniences.
CHAT_PRODUCTION = env_bool("CHAT_PRODUCTION", default=False)
DEBUG = env_bool("DJANGO_DEBUG", default=not CHAT_PRODUCTION)
if CHAT_PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off when CHAT_PRODUCTION is on")
_DEV_SECRET_KEY = "django-insecure-chatproject-embedded-development-key-not-for-production"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", default=_DEV_SECRET_KEY if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
# The same test as `check --deploy` (security.W009), but fatal: a weak key forges sessions.
_WEAK_KEY = (
    len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure-")
)
if CHAT_PRODUCTION and _WEAK_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be a random string of at least 50 characters in production "
        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')"
    )
ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS", default=[] if CHAT_PRODUCTION else ["127.0.0.1", "localhost", "[::1]"]
)
if CHAT_PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS must list the host names this server answers to in production "
        "(comma-separated); websocket Origins are checked against it too"
    )
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
if CHAT_PRODUCTION:
    # Cookies only over HTTPS; HTTP is redirected to HTTPS and told to stay there (HSTS).
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
# Behind a TLS-terminating proxy: the header it sets to "https" (e.g. X-Forwarded-Proto).
# Only set it when the proxy always sets (or strips) that header itself.
_PROXY_SSL_HEADER = env_str("DJANGO_SECURE_PROXY_SSL_HEADER", default="")
if _PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    # Before django_tasks_db: its db_worker command is ours (sessions_app/management/commands).
    "sessions_app",
    "django_tasks_db",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "chatproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# --- Database -------------------------------------------------------------------------
VAR_DIR.mkdir(exist_ok=True)
_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", default=4)
DATABASES: dict[str, dict[str, Any]] = {
    "default": database_from_env(
        "DATABASE_URL",
        default_sqlite_path=str(VAR_DIR / "db.sqlite3"),
        pool_max_size=_POOL_MAX_SIZE,
    ),
}
# Threads that run the database calls of async code (sessions_app/infra/db.py). One by default:
# on the measured machine (PostgreSQL on the same host) more threads shortened the queue of
# database calls but slowed the event loop as much (GIL); with a remote database, whose
# round trips a single thread waits through one by one, more can pay. SQLite: always one.
CHAT_DATABASE_THREADS = (
    env_int("CHAT_DATABASE_THREADS", default=1, minimum=1)
    if DATABASES["default"]["ENGINE"].endswith("postgresql")
    else 1
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache and channel layer ---------------------------------------------------
REDIS_URL = redis_url_from_env("REDIS_URL")
# Seconds a cache entry of a session lives after it was written (readers refill expired ones).
CHAT_CACHE_TTL = env_int("CHAT_CACHE_TTL", default=24 * 3600, minimum=1)
# Every cache key of this project starts with this, so one Redis can be shared.
CHAT_CACHE_PREFIX = env_str("CHAT_CACHE_PREFIX", default="chatproject")

if REDIS_URL:
    CACHES: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CHAT_CACHE_PREFIX,
            "TIMEOUT": CHAT_CACHE_TTL,
            "OPTIONS": {
                # The cache is an optimisation: an unreachable Redis must cost a request
                # a fraction of a second, never a hang. The store catches and logs errors.
                "SOCKET_CONNECT_TIMEOUT": env_int("REDIS_CONNECT_TIMEOUT_MS", default=500) / 1000,
                "SOCKET_TIMEOUT": env_int("REDIS_SOCKET_TIMEOUT_MS", default=1000) / 1000,
            },
        }
    }
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            # Redis pub/sub: a group send is one PUBLISH, and one subscriber connection per
            # process receives for every socket. The default RedisChannelLayer costs about
            # five round trips a message, drops past its per-process capacity without a
            # word, and its blocking reads need socket_timeout=None under redis-py 8
            # (docs/architecture.md "The channel layer", docs/performance.md).
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL}],
                "prefix": f"{CHAT_CACHE_PREFIX}:layer:",
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "chatproject",
            "KEY_PREFIX": CHAT_CACHE_PREFIX,
            "TIMEOUT": CHAT_CACHE_TTL,
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Auth, i18n, static -----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
# API clients get a JSON 403 instead of an HTML page.
CSRF_FAILURE_VIEW = "sessions_app.transport.api.csrf_failure"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `manage.py collectstatic` gathers the files WhiteNoise serves in production.
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "static")))
# WhiteNoise warns about a missing root before the first collectstatic.
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# In development WhiteNoise serves straight from the finders, no collectstatic needed;
# production serves what `manage.py collectstatic` gathered (hashed, compressed, cached).
WHITENOISE_USE_FINDERS = not CHAT_PRODUCTION
if CHAT_PRODUCTION:
    STORAGES["staticfiles"]["BACKEND"] = "whitenoise.storage.CompressedManifestStaticFilesStorage"
    # A file missing from the manifest (collectstatic not run) is served unhashed, not a 500.
    WHITENOISE_MANIFEST_STRICT = False

# --- Chat sessions ----------------------------------------------------------------------
# Page size of session lists (API and UI) and its upper bound for clients that ask.
CHAT_SESSIONS_PAGE_SIZE = env_int("CHAT_SESSIONS_PAGE_SIZE", default=20, minimum=1)
CHAT_SESSIONS_MAX_PAGE_SIZE = 100
CHAT_TITLE_MAX_LENGTH = 200

# --- The chat model (sessions_app/model/client.py) ---------------------------------------
# Without OPENAI_BASE_URL the project's own local scripted model answers (docs/local-model.md),
# mounted at /local-model/ of this server: each server calls it at the address it serves on
# (learned from its first connection), unless LOCAL_MODEL_URL names another one.
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL", default="")
CHAT_USING_LOCAL_MODEL = not OPENAI_BASE_URL
LOCAL_MODEL_URL_GIVEN = env_str("LOCAL_MODEL_URL", default="") != ""
LOCAL_MODEL_URL = env_url("LOCAL_MODEL_URL", default="http://127.0.0.1:8000/local-model/v1")
CHAT_MODEL_BASE_URL = OPENAI_BASE_URL or LOCAL_MODEL_URL
if OPENAI_BASE_URL:
    env_url("OPENAI_BASE_URL", default="")  # validates the URL, naming the variable
# The local model takes any key; a real server needs OPENAI_API_KEY.
OPENAI_API_KEY = env_str("OPENAI_API_KEY", default="local-model-needs-no-key")
CHAT_MODEL = env_str("CHAT_MODEL", default="chatproject-local")
# Seconds without a byte from the model before a call fails with model_timeout.
CHAT_MODEL_TIMEOUT = env_int("CHAT_MODEL_TIMEOUT", default=60, minimum=1)
# Retries of transient failures (connection, 429, 5xx) before a stream has started.
CHAT_MODEL_MAX_RETRIES = env_int("CHAT_MODEL_MAX_RETRIES", default=2, minimum=0)
CHAT_SYSTEM_PROMPT = env_str(
    "CHAT_SYSTEM_PROMPT",
    default="You are a helpful assistant. Use the tools you are given when they help.",
)

# --- Turns and the websocket protocol (sessions_app/turns/start.py, consumers.py) --------------
# Model calls per turn: a turn stops with `step_limit` when the model keeps calling tools.
CHAT_TURN_MAX_STEPS = env_int("CHAT_TURN_MAX_STEPS", default=8, minimum=1)
# Partial assistant text is written to the database at least this often while it streams.
CHAT_CHECKPOINT_SECONDS = env_int("CHAT_CHECKPOINT_MS", default=1000, minimum=10) / 1000
# A streaming answer sends its first text at once, then a text_delta at most this often,
# carrying what the model wrote meanwhile (0: every piece as it comes, load permitting).
CHAT_TEXT_DELTA_SECONDS = env_int("CHAT_TEXT_DELTA_MS", default=50, minimum=0) / 1000
CHAT_MESSAGE_MAX_CHARS = env_int("CHAT_MESSAGE_MAX_CHARS", default=32_000, minimum=1)
CHAT_WS_MAX_FRAME_BYTES = env_int("CHAT_WS_MAX_FRAME_BYTES", default=256 * 1024, minimum=1024)
# --- Limits (sessions_app/limits.py; docs/reliability.md#limits) ---------------------------
# Rate limits count in Redis with REDIS_URL (shared by every process), in memory otherwise.
CHAT_WS_FRAMES_PER_SECOND = env_int("CHAT_WS_FRAMES_PER_SECOND", default=20, minimum=1)
CHAT_USER_MESSAGES_PER_MINUTE = env_int("CHAT_USER_MESSAGES_PER_MINUTE", default=30, minimum=1)
# Failed logins in 15 minutes, per username and per client address, before logins are refused.
CHAT_LOGIN_FAILURES_PER_USER = env_int("CHAT_LOGIN_FAILURES_PER_USER", default=10, minimum=1)
CHAT_LOGIN_FAILURES_PER_ADDRESS = env_int("CHAT_LOGIN_FAILURES_PER_ADDRESS", default=50, minimum=1)
CHAT_USER_MAX_RUNNING_TURNS = env_int("CHAT_USER_MAX_RUNNING_TURNS", default=3, minimum=1)
CHAT_USER_MAX_OPERATIONS = env_int("CHAT_USER_MAX_OPERATIONS", default=5, minimum=1)
CHAT_SESSION_MAX_OPERATIONS = env_int("CHAT_SESSION_MAX_OPERATIONS", default=3, minimum=1)
CHAT_USER_MAX_SOCKETS = env_int("CHAT_USER_MAX_SOCKETS", default=30, minimum=1)
CHAT_USER_MAX_SESSIONS = env_int("CHAT_USER_MAX_SESSIONS", default=1000, minimum=1)
# Prompt + completion tokens one turn may spend (the model's own usage reports), all steps.
CHAT_TURN_MAX_TOKENS = env_int("CHAT_TURN_MAX_TOKENS", default=200_000, minimum=100)
# Events kept per session for `resume` (a Redis Stream with REDIS_URL, memory otherwise).
CHAT_EVENT_LOG_SIZE = env_int("CHAT_EVENT_LOG_SIZE", default=5000, minimum=10)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # No secret (API key, passwords, SECRET_KEY) reaches a log line: chatproject/redaction.py.
    "filters": {"redact_secrets": {"()": "chatproject.redaction.RedactSecrets"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        # Through the root handler above: daphne's own logging setup then finds a root
        # handler and adds none, so each line is printed once.
        "sessions_app": {"level": env_str("CHAT_LOG_LEVEL", default="INFO")},
    },
}

# --- Tools (sessions_app.tools; docs/tools.md) ----------------------------------------
# Dotted paths of the BaseTool subclasses offered to the model, in this order. A bad entry
# stops start-up with ImproperlyConfigured naming it.
CHAT_TOOLS: list[str] = [
    "sessions_app.tools.builtin.current_time.CurrentTime",
    "sessions_app.tools.builtin.calculator.Calculator",
    "sessions_app.tools.builtin.search_history.SearchHistory",
    "sessions_app.tools.builtin.draft_document.DraftDocument",
    "sessions_app.tools.builtin.timer.Timer",
    # More tools from the environment (comma-separated dotted paths), e.g. a deployment's own.
    *env_list("CHAT_EXTRA_TOOLS", default=[]),
]
# A tool result longer than this is cut, with a marker, before the model sees it.
CHAT_TOOL_RESULT_MAX_CHARS = env_int("CHAT_TOOL_RESULT_MAX_CHARS", default=20_000, minimum=1000)
# --- end of tools ---------------------------------------------------------------------

# --- Context window (sessions_app/model/context_window.py) ---------------------------------------
# Tokens one model call may be sent, everything counted (system prompt, history, tool schemas),
# plus the tokens kept free for the answer. The oldest turns are left out of the model's view
# (never deleted) to stay within CHAT_CONTEXT_MAX_TOKENS - CHAT_CONTEXT_REPLY_TOKENS.
CHAT_CONTEXT_MAX_TOKENS = env_int("CHAT_CONTEXT_MAX_TOKENS", default=24_000, minimum=1000)
CHAT_CONTEXT_REPLY_TOKENS = env_int("CHAT_CONTEXT_REPLY_TOKENS", default=2_000, minimum=0)
if CHAT_CONTEXT_REPLY_TOKENS >= CHAT_CONTEXT_MAX_TOKENS:
    raise ImproperlyConfigured(
        "CHAT_CONTEXT_REPLY_TOKENS must be smaller than CHAT_CONTEXT_MAX_TOKENS "
        f"({CHAT_CONTEXT_REPLY_TOKENS} >= {CHAT_CONTEXT_MAX_TOKENS})"
    )
# Off by default: when on, the left-out part is summarised by the model (one extra short call
# whenever more is left out) once it holds at least CHAT_CONTEXT_SUMMARY_MIN_MESSAGES messages.
CHAT_CONTEXT_SUMMARY = env_bool("CHAT_CONTEXT_SUMMARY", default=False)
CHAT_CONTEXT_SUMMARY_MIN_MESSAGES = env_int(
    "CHAT_CONTEXT_SUMMARY_MIN_MESSAGES", default=8, minimum=1
)

# --- Long-running operations and leases (sessions_app/operations/service.py, worker.py) -----------
# Operations run through django.tasks on the database queue of django-tasks-db.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
# "in-process": every server process also runs queued operations (the embedded default: no
# extra command). "external": only `manage.py db_worker` processes run them (production).
CHAT_TASK_WORKER = env_choice(
    "CHAT_TASK_WORKER", choices=("in-process", "external"), default="in-process"
)
if CHAT_TASK_WORKER == "external" and not REDIS_URL:
    # Separate worker processes publish their events through Redis; without it no server
    # would ever hear of an operation's progress or end.
    raise ImproperlyConfigured("CHAT_TASK_WORKER=external needs REDIS_URL")
# Operations one in-process worker runs at once.
CHAT_WORKER_CONCURRENCY = env_int("CHAT_WORKER_CONCURRENCY", default=4, minimum=1)
# A turn or operation whose owner has not renewed its lease for this long is presumed dead.
CHAT_LEASE_SECONDS = env_int("CHAT_LEASE_MS", default=30_000, minimum=100) / 1000
CHAT_HEARTBEAT_SECONDS = env_int("CHAT_HEARTBEAT_MS", default=5_000, minimum=50) / 1000
if CHAT_HEARTBEAT_SECONDS >= CHAT_LEASE_SECONDS:
    raise ImproperlyConfigured("CHAT_HEARTBEAT_MS must be shorter than CHAT_LEASE_MS")
# How often each server process looks for work whose owner is gone.
CHAT_SWEEP_SECONDS = env_int("CHAT_SWEEP_MS", default=10_000, minimum=50) / 1000
# Server processes hand back their turns and operations on SIGTERM before stopping.
CHAT_HANDLE_SIGTERM = env_bool("CHAT_HANDLE_SIGTERM", default=True)
# Runs of a retry-safe operation before it fails for good.
CHAT_OPERATION_MAX_ATTEMPTS = env_int("CHAT_OPERATION_MAX_ATTEMPTS", default=3, minimum=1)
