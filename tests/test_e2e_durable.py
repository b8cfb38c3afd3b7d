"""End to end: work outlives sockets, server processes, workers and Redis.

Real daphne processes, real ``manage.py db_worker`` processes, real websockets. The tests
that need several processes to share state run on the PostgreSQL + Redis pass.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from sessions_app import store
from sessions_app.models import ChatMessage, Operation
from tests.conftest import OWNER_PASSWORD
from tests.processes import free_port
from tests.servers import (
    ResumingClient,
    daphne,
    daphne_process,
    redis_process,
    session_cookie,
    worker_process,
)
from tests.wsclient import send_frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

FAST_LEASES = {
    "CHAT_HEARTBEAT_MS": "200",
    "CHAT_LEASE_MS": "1500",
    "CHAT_SWEEP_MS": "300",
    "LOCAL_MODEL_WORD_DELAY_MS": "5",
    "CHAT_EXTRA_TOOLS": "tests.tools_for_tests.SlowSideEffect",
}
SCRIPT = '/tool calculator {"expression": "6*7"}\n/tool timer {"seconds": 1, "label": "tea"}'
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def cookie(owner: Any) -> str:
    return session_cookie(owner.get_username(), OWNER_PASSWORD)


def new_session(owner: Any) -> uuid.UUID:
    return store.session_create(owner_id=owner.pk).id


async def db_view(session_id: uuid.UUID) -> list[tuple[int, str, str | None, str]]:
    def read() -> list[tuple[int, str, str | None, str]]:
        rows = ChatMessage.objects.filter(session_id=session_id).order_by("sequence")
        return [(m.sequence, m.role, m.content, m.status) for m in rows]

    return await database_sync_to_async(read)()


def normalized(view: list[tuple[int, str, str | None, str]]) -> list[tuple[Any, ...]]:
    """Operation ids differ between runs; everything else must be equal."""
    return [
        (seq, role, UUID.sub("<id>", content or ""), status) for seq, role, content, status in view
    ]


def is_final(frame: dict[str, Any]) -> bool:
    """The end of the scenario: the follow-up turn after the operation has finished."""
    return (
        frame["type"] == "message_updated"
        and frame["message"]["status"] == "complete"
        and (frame["message"]["content"] or "").startswith("Background result")
    )


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


# --- several processes on PostgreSQL + Redis ---------------------------------------------------


needs_services = [pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.postgres
@pytest.mark.redis
async def test_server_killed_client_resumes_on_another(
    owner: Any, cookie: str, local_model_url: str
) -> None:
    env = {**FAST_LEASES, "CHAT_TASK_WORKER": "external", "LOCAL_MODEL_URL": local_model_url}
    session_id = await database_sync_to_async(new_session)(owner)
    with (
        worker_process(**env),
        daphne_process("daphne-1", **env) as (first, first_process),
        daphne("daphne-2", **env) as second,
    ):
        client = ResumingClient(first, session_id, cookie)
        ws = await client.connect()
        await ws.send(send_frame('/tool timer {"seconds": 2, "label": "slow"}'))
        await client.until(lambda f: f["type"] == "turn_finished")  # the operation runs on
        await client.close()
        first_process.kill()  # SIGKILL
        client.move_to(second)
        await client.until(is_final)
        await client.until(lambda f: f["type"] == "turn_finished")
        assert client.view.gaps == []
        assert client.view.contents() == await db_view(session_id)
        assert any(e["type"] == "operation_completed" for e in client.view.events)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize(
    ("tool", "outcome"),
    [
        ('timer {"seconds": 3, "label": "safe"}', "succeeded"),
        ('slow_side_effect {"seconds": 3}', "failed"),
    ],
)
async def test_worker_killed_mid_operation(
    owner: Any, cookie: str, local_model_url: str, tool: str, outcome: str
) -> None:
    env = {**FAST_LEASES, "CHAT_TASK_WORKER": "external", "LOCAL_MODEL_URL": local_model_url}
    session_id = await database_sync_to_async(new_session)(owner)
    with daphne(**env) as address:
        client = ResumingClient(address, session_id, cookie)
        ws = await client.connect()
        with worker_process("worker-1", **env) as doomed:
            await ws.send(send_frame(f"/tool {tool}"))
            await client.until(
                lambda f: (
                    f["type"] == "operation_in_progress" and f["operation"]["status"] == "running"
                )
            )
            doomed.kill()
        with worker_process("worker-2", **env):
            kind = "operation_completed" if outcome == "succeeded" else "operation_failed"
            await client.until(lambda f: f["type"] == kind, deadline=30)
        op = await database_sync_to_async(Operation.objects.get)(session_id=session_id)
        assert op.status == outcome
        if outcome == "failed":
            assert "server running this operation stopped" in (op.error or "")
            assert op.attempts == 1  # never run twice
        else:
            assert op.attempts == 2


@pytest.mark.postgres
@pytest.mark.redis
async def test_redis_restarted_mid_turn(owner: Any, cookie: str) -> None:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    env = {**FAST_LEASES, "REDIS_URL": redis_url, "LOCAL_MODEL_WORD_DELAY_MS": "20"}
    session_id = await database_sync_to_async(new_session)(owner)
    with redis_process(port) as redis, daphne(**env) as address:
        client = ResumingClient(address, session_id, cookie)
        ws = await client.connect()
        await ws.send(send_frame("/words 200"))
        await client.until(lambda f: f["type"] == "text_delta" and f["offset"] > 100)
        redis.kill()
        with redis_process(port):
            await client.until(
                lambda f: (
                    f["type"] == "turn_finished" or (f["type"] == "snapshot" and not f["running"])
                ),
                deadline=60,
            )
            stored = await db_view(session_id)
            assert stored[1][3] == "complete" and len((stored[1][2] or "").split()) == 200
            assert client.view.contents() == stored
            # The cache recovers: the next turn streams and is cached again.
            await client.ws.send(send_frame("/words 5")) if client.ws else None
            await client.until(lambda f: f["type"] == "turn_finished")
            assert client.view.contents() == await db_view(session_id)
    assert redis_url != settings.REDIS_URL  # the suite's own Redis was never touched
