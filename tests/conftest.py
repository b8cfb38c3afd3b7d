"""Fixtures shared by every test module: two fixed users, and the backends in use."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connections
from django.test import Client

# Fixtures of consumer-level tests (chat_runtime, session_id, ...).
pytest_plugins = ["tests.chat_fixtures"]

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


@pytest.fixture(scope="session", autouse=True)
def _close_executor_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Before the test database is dropped, close the connection the thread behind
    ``database_sync_to_async`` keeps (a test that ran sync_to_async code without the
    ``chat_runtime`` fixture leaves it open, and the drop would find a user)."""
    yield
    with django_db_blocker.unblock():
        asyncio.run(database_sync_to_async(connections.close_all)())


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Real hashers cost ~0.3 s per user; tests don't need their strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_signal_handlers(settings: Any) -> None:
    """Background work started in the test process must not take over pytest's SIGTERM."""
    settings.CHAT_HANDLE_SIGTERM = False


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    """Each test starts with an empty cache (a real Redis db is flushed too)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> Iterator[None]:
    """Each test gets its own channel layer. A layer keeps asyncio state (locks, receiver
    tasks, subscriptions) that belongs to the loop it ran on; left to the next test's loop it
    hangs or fails there (seen in CI with channels-redis's RedisChannelLayer: one timeout,
    then 15 tests failing with "bound to a different event loop")."""
    yield
    channel_layers.backends.clear()


@pytest.fixture
def owner(db: Any) -> Any:
    return get_user_model().objects.create_user("owner", password=OWNER_PASSWORD)


@pytest.fixture
def stranger(db: Any) -> Any:
    return get_user_model().objects.create_user("stranger", password=STRANGER_PASSWORD)


def client_for(user: Any, password: str, **kwargs: Any) -> Client:
    """A test client logged in as ``user``."""
    client = Client(**kwargs)
    assert client.login(username=user.get_username(), password=password)
    return client


@pytest.fixture
def owner_client(owner: Any) -> Client:
    return client_for(owner, OWNER_PASSWORD)


@pytest.fixture
def stranger_client(stranger: Any) -> Client:
    return client_for(stranger, STRANGER_PASSWORD)


# --- real processes: the local scripted model (tests/processes.py, docs/local-model.md) ---

LOCAL_MODEL_WORD_DELAY_MS = 5


@pytest.fixture(scope="session")
def local_model_url() -> Iterator[str]:
    """Base URL (ending in ``/v1``) of a ``manage.py local_model`` started for this session.

    It paces streams at 5 ms per piece and accepts any API key.
    """
    import sys

    from tests.processes import ManagedProcess, free_port

    port = free_port()
    command = [
        sys.executable,
        "manage.py",
        "local_model",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--word-delay-ms={LOCAL_MODEL_WORD_DELAY_MS}",
    ]
    with ManagedProcess(
        command,
        name="local-model",
        env={"LOCAL_MODEL_API_KEY": ""},
        ready_line="local model listening on",
        ready_port=port,
    ):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test's report shows the log tails of the processes still running."""
    from tests.processes import LIVE

    report = yield
    if report.failed:
        for process in LIVE:
            report.sections.append((f"process {process.name}", process.describe()))
    return report
