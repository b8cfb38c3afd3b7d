"""Hypothesis profiles for the fuzz tests (docs/reliability.md#fuzzing).

- ``ci`` (the default): derandomized, no example database, so every run of the suite tries
  the same inputs and a failure reproduces; a failure prints the blob to replay it with
  ``@reproduce_failure``.
- ``dev``: random inputs on every run (still no database), for looking for new failures:
  ``HYPOTHESIS_PROFILE=dev``. ``FUZZ_SCALE=10`` multiplies every example count.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from hypothesis import HealthCheck, settings

from sessions_app import store
from sessions_app.schemas import ChatMessageData

_COMMON = {
    "database": None,
    "deadline": None,
    "print_blob": True,
    # Fixtures are set up once per test, not per example: the tests compare the stored data
    # before and after each example instead of relying on a fresh database.
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}

settings.register_profile("ci", derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("dev", derandomize=False, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
async def fuzzed_session(owner: Any) -> uuid.UUID:
    """The owner's session the fuzzers aim at: a title and two messages to leave unchanged."""
    state = await database_sync_to_async(store.session_create)(
        owner_id=owner.pk,
        title="fuzzed",
        messages=[
            ChatMessageData(role="user", content="before", client_message_id="c-0"),
            ChatMessageData(role="assistant", content="unchanged"),
        ],
    )
    return state.id
