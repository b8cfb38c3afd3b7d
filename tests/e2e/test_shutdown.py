"""End to end: SIGTERM on a server process (a rolling deploy) loses nothing.

In its own module, so no other server process of the test run shares the queue with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django_tasks_db.models import DBTaskResult

from sessions_app.models import ChatSession, Operation
from tests.conftest import OWNER_PASSWORD
from tests.e2e.support import FAST_LEASES, db_view, is_final, new_session
from tests.servers import ResumingClient, daphne, daphne_process, session_cookie
from tests.wsclient import send_frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def test_sigterm_hands_work_back_before_stopping(owner: Any) -> None:
    """A rolling deploy: the server stops taking turns, keeps the partial answer, re-queues
    its retry-safe operation and releases its lease; another server finishes the work."""
    cookie = await database_sync_to_async(session_cookie)(owner.get_username(), OWNER_PASSWORD)
    session_id = await database_sync_to_async(new_session)(owner)
    with daphne_process("daphne-old", **FAST_LEASES) as (old, old_process):
        client = ResumingClient(old, session_id, cookie)
        ws = await client.connect()
        await ws.send(send_frame('/tool timer {"seconds": 3, "label": "deploy"}'))
        await client.until(
            lambda f: f["type"] == "operation_in_progress" and f["operation"]["status"] == "running"
        )
        await client.until(lambda f: f["type"] == "turn_finished")
        await ws.send(send_frame("/words 3000"))
        await client.until(lambda f: f["type"] == "text_delta" and f["offset"] > 50)
        old_process.stop_grace = 20.0
        status = await asyncio.to_thread(old_process.stop)  # SIGTERM, then wait
        assert status is not None and status >= 0  # it exited by itself, not by SIGKILL
        # A clean stop: the drain worked and closed its connections (the model client's
        # aiohttp session logs an ERROR at exit when left open).
        log = old_process.log_text()
        assert "Traceback" not in log and " ERROR " not in log, old_process.log_tail()
    stored = await db_view(session_id)
    reply = stored[-1]
    assert reply[1] == "assistant" and reply[3] == "interrupted" and reply[2]
    session = await database_sync_to_async(ChatSession.objects.get)(pk=session_id)
    assert session.turn_id is None  # the lease was handed back, not left to expire
    op = await database_sync_to_async(Operation.objects.get)(session_id=session_id)
    assert op.status == "pending" and op.lease_owner == ""
    queued = await database_sync_to_async(
        lambda: list(DBTaskResult.objects.values_list("status", "args_kwargs"))
    )()
    assert ("READY", {"args": [], "kwargs": {"operation_id": str(op.id)}}) in queued, queued
    with daphne("daphne-new", **FAST_LEASES) as new:
        client.move_to(new)
        await client.until(lambda f: f["type"] == "operation_completed", deadline=60)
        await client.until(is_final)
    op = await database_sync_to_async(Operation.objects.get)(session_id=session_id)
    assert op.status == "succeeded"
