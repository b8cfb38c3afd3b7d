"""The one place that reads the process environment.

Every reader validates its variable and raises ``ImproperlyConfigured`` naming it, so a
bad deployment fails at start-up instead of at the first request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
DATABASE_ENGINES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
    "sqlite": "django.db.backends.sqlite3",
}
REDIS_SCHEMES = {"redis", "rediss", "unix"}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip()


def env_bool(name: str, *, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(
        f"{name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}"
    )


def env_int(name: str, *, default: int, minimum: int = 0) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer; got {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}; got {number}")
    return number


def env_str(name: str, *, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_url(name: str, *, default: str) -> str:
    """An http(s) URL with a host; the value itself is never echoed (it may hold a secret)."""
    value = env_str(name, default=default)
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(f"{name} must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018  (urllib validates the port lazily)
    except ValueError:
        raise ImproperlyConfigured(f"{name} has an invalid port") from None
    return value


def env_choice(name: str, *, choices: tuple[str, ...], default: str) -> str:
    value = env_str(name, default=default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def env_list(name: str, *, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def sqlite_database(path: str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        # BEGIN IMMEDIATE takes the write lock when a transaction starts, so writers in
        # several threads or processes queue up (for up to ``timeout`` seconds) instead of
        # reading the same sequence counter and colliding.
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }


def database_from_env(
    name: str, *, default_sqlite_path: str, pool_max_size: int = 0
) -> dict[str, Any]:
    """Django ``DATABASES['default']`` from ``name`` (a URL), or an SQLite file when unset.

    PostgreSQL connections come from a pool of at most ``pool_max_size`` per process
    (Django's psycopg pool); 0 opens and closes a connection for each batch of work."""
    value = _raw(name)
    if not value:
        config = sqlite_database(default_sqlite_path)
        # A file, not memory, so the concurrency tests' worker processes share it.
        # One file per test run (its pid), so test runs side by side do not share it.
        test_name = f"test-db-{os.getpid()}.sqlite3"
        config["TEST"] = {"NAME": str(Path(default_sqlite_path).with_name(test_name))}
        return config
    scheme = urlsplit(value).scheme.lower()
    if scheme not in DATABASE_ENGINES:
        raise ImproperlyConfigured(
            f"{name} must be a postgres:// or sqlite:// URL; got scheme {scheme or '(none)'!r}"
        )
    try:
        # No persistent connections: under ASGI each request may run in another thread,
        # and Django documents persistent connections as unsuitable there.
        config = dict(dj_database_url.parse(value, conn_max_age=0))
    except Exception as exc:  # dj-database-url raises several types for bad URLs
        raise ImproperlyConfigured(f"{name} is not a valid database URL: {exc}") from None
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"{name} must name a database, e.g. postgres://host/dbname")
    if scheme == "sqlite":
        return sqlite_database(str(config["NAME"]))
    if pool_max_size:
        # A connection goes back to the pool where it would have been closed (at the end of
        # each database_sync_to_async call and request): set-up is paid once, not per call.
        pool = {"min_size": 1, "max_size": pool_max_size, "timeout": 10}
        config["OPTIONS"] = {**config.get("OPTIONS", {}), "pool": pool}
    return config


def redis_url_from_env(name: str) -> str | None:
    """A validated Redis URL, or ``None`` when the variable is unset or empty."""
    value = _raw(name)
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme.lower() not in REDIS_SCHEMES:
        raise ImproperlyConfigured(
            f"{name} must be a redis://, rediss:// or unix:// URL; "
            f"got scheme {parts.scheme or '(none)'!r}"
        )
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ImproperlyConfigured(f"{name} must name a host, e.g. redis://127.0.0.1:6379/0")
        try:
            parts.port  # noqa: B018  (urllib validates the port lazily)
        except ValueError:
            raise ImproperlyConfigured(f"{name} has an invalid port: {value!r}") from None
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ImproperlyConfigured(f"{name} database number must be an integer; got {db!r}")
    return value
