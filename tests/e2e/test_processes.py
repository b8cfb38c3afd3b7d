"""End to end across processes: servers, workers and Redis killed or restarted mid-work.

Real daphne processes, real ``manage.py db_worker`` processes, real websockets, on the
PostgreSQL + Redis pass. In a module of their own: no other server may share their queue
(a server with an in-process worker would take their operations).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sessions_app import operations, store
from sessions_app.models import Operation
from sessions_app.schemas import ChatMessageData
from sessions_app.store import cache as session_cache
from sessions_app.transport.feed import apply_text_delta
from tests.e2e.support import FAST_LEASES, db_view, is_final, new_session
from tests.processes import free_port
from tests.servers import (
    ResumingClient,
    daphne,
    daphne_process,
    http_get,
    redis_process,
    worker_process,
)
from tests.wsclient import send_frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def cached_message_count(redis_url: str, session_id: uuid.UUID) -> int:
    """How many of the session's messages a server holds in the cache at ``redis_url``."""
    pattern = f"*{session_cache.message_key(session_id, 0)[:-1]}*"  # any sequence
    with redis.Redis.from_url(redis_url) as client:
        return sum(1 for _ in client.scan_iter(match=pattern))


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
        # Process 2 served the cursor from the shared replay log: one snapshot (the first
        # connect's), no event skipped, none sent twice, and every seq once in order.
        assert client.snapshots == 1
        assert client.gaps_repaired == 0 and client.unasked_repeats == 0
        seqs = [e["seq"] for e in client.view.events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
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
            # The cache recovers: the next turn streams, and the session is cached again.
            ws = client.ws or await client.connect()
            await ws.send(send_frame("/words 5"))
            await client.until(lambda f: f["type"] == "turn_finished")
            assert client.view.contents() == await db_view(session_id)
            # Read back through the server (it refills what the restart lost), then count.
            status, _ = http_get(address, f"/api/sessions/{session_id}/", cookie)
            assert status == 200
            assert cached_message_count(redis_url, session_id) == len(client.view.messages)
    assert redis_url != settings.REDIS_URL  # the suite's own Redis was never touched


WORKER_APP_NAME = "chat-test-worker-restart"


def _terminate_worker_connections() -> int:
    """``pg_terminate_backend`` on the worker's connections (what a PostgreSQL restart does
    to them); how many there were. The worker names them with ``PGAPPNAME``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            [WORKER_APP_NAME],
        )
        (count,) = cursor.fetchone()
    return int(count)


@pytest.mark.postgres
@pytest.mark.redis
async def test_db_worker_goes_on_after_its_connections_are_killed(
    owner: Any, local_model_url: str
) -> None:
    env = {**FAST_LEASES, "CHAT_TASK_WORKER": "external", "LOCAL_MODEL_URL": local_model_url}
    session_id = await database_sync_to_async(new_session)(owner)
    with worker_process("worker-restart", **env, PGAPPNAME=WORKER_APP_NAME) as worker:
        killed = 0
        for _ in range(100):  # until the polling worker had a connection to lose
            killed += await database_sync_to_async(_terminate_worker_connections)()
            if killed:
                break
            await asyncio.sleep(0.05)
        assert killed, "the worker never connected"
        await asyncio.sleep(0.5)  # let it meet the dead connection before work is queued
        assert worker.alive(), worker.describe()
        operation_id = await database_sync_to_async(_queue_timer)(session_id)
        status = None
        for _ in range(300):
            status = await database_sync_to_async(
                lambda: Operation.objects.get(pk=operation_id).status
            )()
            if status == Operation.Status.SUCCEEDED:
                break
            await asyncio.sleep(0.1)
        assert status == Operation.Status.SUCCEEDED, worker.describe()
        assert worker.alive()


def _queue_timer(session_id: uuid.UUID) -> uuid.UUID:
    """A pending ``timer`` operation of the session, queued as a turn would queue it."""
    [message] = store.messages_append(
        session_id=session_id,
        messages=[ChatMessageData(role="tool", name="timer", tool_call_id="c-1", status="pending")],
    )
    op, created, _ = operations.operation_create(
        session_id=session_id,
        message=message,
        tool_name="timer",
        tool_call_id="c-1",
        arguments={"seconds": 0.2, "label": "after the restart"},
    )
    assert created
    return op.id


@pytest.mark.postgres
async def test_a_first_turn_sent_while_redis_is_down_reaches_its_socket(
    owner: Any, cookie: str
) -> None:
    """A never-used session's first message while Redis is down: its events are lost, but
    the socket that sent it converges on the stored exchange once Redis is back, without a
    reload (its ping shows the server ahead, its resume gets a snapshot)."""
    port = free_port()
    env = {**FAST_LEASES, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    session_id = await database_sync_to_async(new_session)(owner)
    with redis_process(port) as redis, daphne(**env) as address:
        client = ResumingClient(address, session_id, cookie)
        ws = await client.connect()
        await client.until(lambda f: f["type"] == "snapshot")  # cursor 0: nothing yet
        redis.kill()
        await ws.send(send_frame("hello there"))
        for _ in range(300):  # the turn runs on the database alone
            stored = await db_view(session_id)
            if len(stored) == 2 and stored[1][3] == "complete":
                break
            await asyncio.sleep(0.1)
        assert len(stored) == 2 and stored[1][3] == "complete"
        with redis_process(port):
            await client.until(lambda f: len(client.view.messages) == 2, deadline=30)
            assert client.view.contents() == await db_view(session_id)


@pytest.mark.postgres
async def test_a_socket_opened_while_redis_is_down_is_closed_with_4503(
    owner: Any, cookie: str
) -> None:
    """The documented close, not an HTTP 500 at the handshake: a client backs off and tries
    again, and once Redis is back its socket works."""
    port = free_port()
    env = {**FAST_LEASES, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    session_id = await database_sync_to_async(new_session)(owner)
    with redis_process(port) as redis, daphne(**env) as address:
        redis.kill()
        async with connect(
            f"ws://{address}/ws/sessions/{session_id}/",
            origin=f"http://{address}",
            additional_headers={"Cookie": cookie},
        ) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
        with redis_process(port):
            client = ResumingClient(address, session_id, cookie)
            await client.connect()
            await client.until(lambda f: f["type"] == "snapshot", deadline=30)


@pytest.mark.postgres
async def test_after_a_redis_restart_a_snapshot_and_the_live_deltas_leave_no_hole(
    owner: Any, cookie: str
) -> None:
    """Redis restarts mid-reply, losing the log's deltas; the database holds the text up to
    its last checkpoint only (checkpoints are rare here). A socket opened then gets a
    snapshot with that text, and the reply must go on growing in front of it before the
    reply ends: the turn sends its whole text again once it sees the log restarted."""
    port = free_port()
    env = {
        **FAST_LEASES,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "CHAT_CHECKPOINT_MS": "60000",
        "LOCAL_MODEL_WORD_DELAY_MS": "10",
    }
    session_id = await database_sync_to_async(new_session)(owner)
    with redis_process(port) as redis, daphne(**env) as address:
        first = ResumingClient(address, session_id, cookie)
        ws = await first.connect()
        await ws.send(send_frame("/words 3000"))
        await first.until(lambda f: f["type"] == "text_delta" and f["offset"] > 300)
        await first.close()
        redis.kill()
        with redis_process(port):
            async with connect(
                f"ws://{address}/ws/sessions/{session_id}/",
                origin=f"http://{address}",
                additional_headers={"Cookie": cookie},
            ) as late:
                await late.send(json.dumps({"type": "resume", "last_seq": None}))
                text: str | None = None
                grew = False
                while not grew:
                    frame = json.loads(await asyncio.wait_for(late.recv(), 30))
                    if frame["type"] == "snapshot":
                        reply = frame["messages"][1]
                        assert reply["status"] == "streaming", "the reply ended too soon"
                        text = reply["content"] or ""
                    elif frame["type"] == "text_delta" and text is not None:
                        longer = apply_text_delta(text, frame["offset"], frame["text"])
                        grew = longer is not None and len(longer) > len(text)
                        text = longer or text
                    elif frame["type"] == "message_updated":
                        break  # the reply ended: it never grew in front of this socket
                assert grew, "the reply stayed frozen at its last checkpoint"
                await late.send(json.dumps({"type": "cancel"}))
