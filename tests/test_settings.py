"""chatproject.settings: embedded defaults, switching by environment, failing fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatproject.settings import env

ROOT = Path(__file__).resolve().parent.parent
SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({
    "db": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "cache": settings.CACHES["default"]["BACKEND"],
    "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "hosts": settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts"),
    "ttl": settings.CHAT_CACHE_TTL,
    "pool": settings.DATABASES["default"].get("OPTIONS", {}).get("pool"),
}))
"""


def run_settings(**environ: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    clean.update(environ, DJANGO_SETTINGS_MODULE="chatproject.settings")
    return subprocess.run(
        [sys.executable, "-c", SHOW_SETTINGS], cwd=ROOT, env=clean, capture_output=True, text=True
    )


def test_no_environment_runs_embedded() -> None:
    result = run_settings()
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["db"] == "django.db.backends.sqlite3"
    assert shown["db_name"].endswith("db.sqlite3")
    assert shown["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert shown["layer"] == "channels.layers.InMemoryChannelLayer"


def test_urls_switch_to_postgres_and_redis() -> None:
    result = run_settings(
        DATABASE_URL="postgres://app:secret@db.internal:5433/chat",
        REDIS_URL="redis://cache.internal:6380/2",
        CHAT_CACHE_TTL="600",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["db"] == "django.db.backends.postgresql"
    assert shown["db_name"] == "chat"
    assert shown["cache"] == "django_redis.cache.RedisCache"
    assert shown["layer"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert shown["hosts"] == [{"address": "redis://cache.internal:6380/2"}]
    assert shown["ttl"] == 600
    # Connections come from a pool: set-up is paid once, not per database call.
    assert shown["pool"] == {"min_size": 1, "max_size": 4, "timeout": 10}


def test_the_database_pool_is_sized_or_turned_off() -> None:
    url = "postgres://app@db.internal:5433/chat"
    shown = json.loads(run_settings(DATABASE_URL=url, DATABASE_POOL_MAX_SIZE="12").stdout)
    assert shown["pool"]["max_size"] == 12
    shown = json.loads(run_settings(DATABASE_URL=url, DATABASE_POOL_MAX_SIZE="0").stdout)
    assert shown["pool"] is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/chat"),
        ("DATABASE_URL", "postgres://localhost:notaport/chat"),
        ("DATABASE_URL", "postgres://localhost"),
        ("REDIS_URL", "http://localhost:6379"),
        ("REDIS_URL", "redis://localhost:99999999/0"),
        ("REDIS_URL", "redis:///0"),
        ("REDIS_URL", "redis://localhost:6379/zero"),
        ("CHAT_CACHE_TTL", "a day"),
        ("CHAT_CACHE_TTL", "0"),
        ("DATABASE_POOL_MAX_SIZE", "-1"),
        ("DJANGO_DEBUG", "maybe"),
    ],
)
def test_bad_value_fails_at_startup_naming_the_variable(variable: str, value: str) -> None:
    result = run_settings(**{variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr.splitlines()[-1]


def test_secret_key_required_without_debug() -> None:
    result = run_settings(DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr.splitlines()[-1]
    assert run_settings(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="x" * 50).returncode == 0


def test_error_messages_do_not_echo_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@localhost:6379")
    with pytest.raises(ImproperlyConfigured) as error:
        env.redis_url_from_env("REDIS_URL")
    assert "hunter2" not in str(error.value)
    monkeypatch.setenv("DATABASE_URL", "mysql://user:hunter2@localhost/db")
    with pytest.raises(ImproperlyConfigured) as error:
        env.database_from_env("DATABASE_URL", default_sqlite_path="x.sqlite3")
    assert "hunter2" not in str(error.value)


def test_env_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_INT", " 42 ")
    monkeypatch.setenv("X_LIST", "a.example, b.example,,")
    assert env.env_bool("X_BOOL", default=False) is True
    assert env.env_int("X_INT", default=1) == 42
    assert env.env_list("X_LIST", default=[]) == ["a.example", "b.example"]
    assert env.env_str("X_MISSING", default="d") == "d"
    assert env.redis_url_from_env("X_MISSING") is None
