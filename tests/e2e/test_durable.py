"""End to end: work outlives sockets. One real daphne process, real websockets, both passes.

The tests that kill or restart processes are in ``e2e/test_processes.py``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from tests.e2e.support import FAST_LEASES, SCRIPT, db_view, is_final, new_session, normalized
from tests.servers import ResumingClient, daphne
from tests.wsclient import send_frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def run_scenario(
    address: str, owner: Any, cookie: str, *, disconnect_after: Any = None
) -> tuple[ResumingClient, uuid.UUID]:
    session_id = await database_sync_to_async(new_session)(owner)
    client = ResumingClient(address, session_id, cookie)
    ws = await client.connect()
    await ws.send(send_frame(SCRIPT, "script-1"))
    await client.until(is_final, disconnect_after=disconnect_after)
    await client.until(lambda f: f["type"] == "turn_finished")
    await client.close()
    return client, session_id


# --- one server process (both passes) ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    with daphne(**FAST_LEASES) as address:
        yield address


async def test_disconnects_at_random_points_change_nothing(
    server: str, owner: Any, cookie: str
) -> None:
    """The socket closes at 100+ random points of a turn with tools and an operation; the
    client's view and the database equal those of an undisturbed run."""
    reference, reference_id = await run_scenario(server, owner, cookie)
    expected = normalized(await db_view(reference_id))
    assert normalized(reference.view.contents()) == expected
    rng = random.Random(20261125)
    disconnects = 0
    while disconnects < 100:
        client, session_id = await run_scenario(
            server, owner, cookie, disconnect_after=lambda: rng.randint(1, 4)
        )
        disconnects += client.connections - 1
        stored = await db_view(session_id)
        assert normalized(stored) == expected
        assert client.view.contents() == stored
    assert disconnects >= 100


async def test_a_third_tab_gets_a_snapshot_then_the_completion(
    server: str, owner: Any, cookie: str
) -> None:
    session_id = await database_sync_to_async(new_session)(owner)
    first = ResumingClient(server, session_id, cookie)
    second = ResumingClient(server, session_id, cookie)
    ws = await first.connect()
    await second.connect()
    await ws.send(send_frame('/tool timer {"seconds": 1.5}'))
    await first.until(lambda f: f["type"] == "operation_in_progress")
    third = ResumingClient(server, session_id, cookie)
    await third.connect()  # no cursor: a snapshot, with the running operation in it
    await third.until(lambda f: f["type"] == "snapshot")
    assert [op["status"] for op in third.view.operations.values()] in (["running"], ["pending"])
    for client in (first, second, third):
        await client.until(is_final)
        await client.until(lambda f: f["type"] == "turn_finished")
    assert first.view.events == second.view.events
    assert first.view.contents() == second.view.contents() == third.view.contents()
    assert third.view.contents() == await db_view(session_id)
