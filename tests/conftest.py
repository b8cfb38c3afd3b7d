"""Fixtures shared by every test module: two fixed users, and the backends in use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache

OWNER_PASSWORD = "owner-pass-123"
STRANGER_PASSWORD = "stranger-pass-123"

USING_POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
USING_REDIS = bool(settings.REDIS_URL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_pg = pytest.mark.skip(reason="needs DATABASE_URL=postgres://… (runs in the second pass)")
    skip_redis = pytest.mark.skip(reason="needs REDIS_URL=redis://… (runs in the second pass)")
    for item in items:
        if "postgres" in item.keywords and not USING_POSTGRES:
            item.add_marker(skip_pg)
        if "redis" in item.keywords and not USING_REDIS:
            item.add_marker(skip_redis)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Real hashers cost ~0.3 s per user; tests don't need their strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    """Each test starts with an empty cache (a real Redis db is flushed too)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def owner(db: Any) -> Any:
    return get_user_model().objects.create_user("owner", password=OWNER_PASSWORD)


@pytest.fixture
def stranger(db: Any) -> Any:
    return get_user_model().objects.create_user("stranger", password=STRANGER_PASSWORD)
