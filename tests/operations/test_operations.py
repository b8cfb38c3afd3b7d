"""sessions_app.operations: long-running tools as durable operations, their leases and sweep.

The in-process worker runs the operations here (the embedded default); the end-to-end tests
run them in separate worker processes.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from sessions_app import operations, process, store
from sessions_app.models import ChatMessage, ChatSession, Operation
from sessions_app.schemas import ChatMessageData
from tests.chat_fixtures import db_messages, open_socket
from tests.wsclient import send_frame

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("chat_runtime"),
]

SIDE_EFFECT = "tests.tools_for_tests.SlowSideEffect"


@pytest.fixture(autouse=True)
def _fast_leases(settings: Any) -> None:
    settings.CHAT_HEARTBEAT_SECONDS = 0.1
    settings.CHAT_LEASE_SECONDS = 0.6
    settings.CHAT_SWEEP_SECONDS = 0.2
    settings.CHAT_TOOLS = [*settings.CHAT_TOOLS, SIDE_EFFECT]


def crash_mid_turn(session_id: uuid.UUID, partial: str) -> None:
    """A turn whose process died mid-stream: a streaming reply and a stale lease."""
    store.messages_append(
        session_id=session_id,
        messages=[
            ChatMessageData(role="user", content="hi"),
            ChatMessageData(role="assistant", content=partial, status="streaming"),
        ],
    )
    ChatSession.objects.filter(pk=session_id).update(
        turn_id=uuid.uuid4(),
        turn_owner="dead-host:1:abc",
        turn_heartbeat_at=timezone.now() - timedelta(minutes=5),
    )


async def operations_of(session_id: uuid.UUID) -> list[Operation]:
    return await database_sync_to_async(
        lambda: list(Operation.objects.filter(session_id=session_id).order_by("created_at"))
    )()


async def until_operation(socket: Any, op_id: uuid.UUID, status: str) -> dict[str, Any]:
    """Read frames until the client's view shows the operation in ``status``."""
    while socket.view.operations.get(str(op_id), {}).get("status") != status:
        await socket.next()
    return socket.view.operations[str(op_id)]


async def test_operation_runs_after_the_turn_and_the_model_gets_the_result(
    owner: Any, session_id: uuid.UUID
) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame('/tool timer {"seconds": 0.5, "label": "tea"}'))
    first_turn = await socket.until_type("turn_finished")
    started = [f for f in first_turn if f["type"] == "operation_started"]
    assert len(started) == 1 and "close this tab" in started[0]["notice"]
    assert first_turn[-1]["status"] == "completed"  # the turn did not wait
    rest = await socket.until(
        lambda f: f["type"] == "turn_finished" and f["turn_id"] != first_turn[-1]["turn_id"]
    )
    kinds = [f["type"] for f in rest]
    assert "operation_in_progress" in [f["type"] for f in socket.frames]
    assert kinds.index("operation_completed") < kinds.index("turn_started")
    completed = next(f for f in rest if f["type"] == "operation_completed")
    assert completed["operation"]["status"] == "succeeded"
    assert "tea" in completed["message"]["content"]
    stored = await db_messages(session_id)
    assert [(r, st) for _, r, _, st in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("tool", "complete"),
        ("assistant", "complete"),
        ("assistant", "complete"),
    ]
    assert (stored[4][2] or "").startswith("Background result: timer")
    assert socket.view.contents() == stored
    [op] = await operations_of(session_id)
    assert (op.status, op.attempts, op.progress) == ("succeeded", 1, 1.0)


async def test_closing_the_tab_during_an_operation_loses_nothing(
    owner: Any, session_id: uuid.UUID
) -> None:
    first = await open_socket(owner, session_id)
    await first.send(send_frame('/tool timer {"seconds": 0.5}'))
    await first.until_type("operation_started")
    await first.close()
    # A new tab opened while the operation runs gets a snapshot with it, then the result.
    second = await open_socket(owner, session_id)
    snapshot = second.frames[-1]
    running = [op for op in snapshot["operations"] if op["status"] in ("pending", "running")]
    if running:
        await second.until_type("operation_completed")
    await second.until(
        lambda f: (
            f["type"] == "message_updated"
            and f["message"]["content"].startswith("Background result")
        )
    )
    await second.until_type("turn_finished")
    assert second.view.contents() == await db_messages(session_id)


async def test_the_same_request_never_starts_twice(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id)
    call = '/tool timer {"seconds": 1, "label": "once"}'
    await socket.send(send_frame(call))
    await socket.until_type("turn_finished")
    await socket.send(send_frame(call))  # a double click, a retried request
    second = await socket.until_type("turn_finished")
    assert [f["type"] for f in second].count("operation_started") == 0
    assert any(f["type"] == "operation_in_progress" for f in second)
    assert len(await operations_of(session_id)) == 1
    duplicate = [m for m in await db_messages(session_id) if m[1] == "tool"][1]
    assert "already running" in (duplicate[2] or "")
    await socket.until_type("operation_completed")


async def test_draft_document_writes_every_section(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame('/tool draft_document {"topic": "tea", "sections": 3}'))
    frames = await socket.until_type("operation_completed")
    progress = [f["operation"]["progress"] for f in frames if f["type"] == "operation_in_progress"]
    assert progress[-1] == 1.0
    document = frames[-1]["message"]["content"]
    assert document.startswith("# Tea") and document.count("\n## ") == 3


async def _session_with_running_operation(
    owner: Any, tool_name: str, arguments: dict[str, Any], *, attempts: int = 1
) -> tuple[uuid.UUID, uuid.UUID]:
    """A session whose operation's worker died: running, heartbeat long ago."""

    def build() -> tuple[uuid.UUID, uuid.UUID]:
        call = {"id": "call_x", "type": "function", "function": {"name": tool_name}}
        state = store.session_create(
            owner_id=owner.pk,
            messages=[
                ChatMessageData(role="user", content="go"),
                ChatMessageData(role="assistant", content=None, tool_calls=[call]),
                ChatMessageData(
                    role="tool", tool_call_id="call_x", name=tool_name, status="pending"
                ),
            ],
        )
        message = ChatMessage.objects.get(session_id=state.id, sequence=3)
        op = Operation.objects.create(
            session_id=state.id,
            message=message,
            tool_call_id="call_x",
            tool_name=tool_name,
            arguments=arguments,
            status="running",
            attempts=attempts,
            lease_owner="dead-host:1:abc",
            heartbeat_at=timezone.now() - timedelta(minutes=5),
            started_at=timezone.now() - timedelta(minutes=5),
        )
        return state.id, op.id

    return await database_sync_to_async(build)()


async def test_stale_retry_safe_operation_runs_again(owner: Any) -> None:
    session_id, op_id = await _session_with_running_operation(owner, "timer", {"seconds": 0.2})
    socket = await open_socket(owner, session_id)
    await process.sweep_once()
    frames = await socket.until_type("operation_completed")
    assert any(f["type"] == "operation_in_progress" for f in frames)
    op = await database_sync_to_async(Operation.objects.get)(pk=op_id)
    assert (op.status, op.attempts) == ("succeeded", 2)


async def test_stale_unsafe_operation_fails_with_a_clear_error(owner: Any) -> None:
    session_id, op_id = await _session_with_running_operation(
        owner, "slow_side_effect", {"seconds": 1}
    )
    socket = await open_socket(owner, session_id)
    await process.sweep_once()  # the process's own sweep may have come first: either way
    failed = await until_operation(socket, op_id, "failed")
    # A snapshot may show the operation failed a moment before its message (it reads them
    # one after the other); the operation_failed event then brings the message.
    while socket.view.messages[3]["status"] == "pending":
        await socket.next()
    assert "server running this operation stopped" in failed["error"]
    assert socket.view.messages[3]["status"] == "failed"
    op = await database_sync_to_async(Operation.objects.get)(pk=op_id)
    assert (op.status, op.attempts) == ("failed", 1)
    # The model is told, as after an operation that ended in its run: a follow-up turn.
    await socket.until(lambda f: f["type"] == "turn_finished" and f["status"] == "completed")
    stored = await db_messages(session_id)
    assert [(role, status) for _, role, _, status in stored[3:]] == [("assistant", "complete")]
    assert socket.view.contents() == stored


async def test_retry_safe_operation_gives_up_after_max_attempts(owner: Any, settings: Any) -> None:
    settings.CHAT_OPERATION_MAX_ATTEMPTS = 2
    _, op_id = await _session_with_running_operation(owner, "timer", {"seconds": 0.2}, attempts=2)
    await process.sweep_once()
    op = await database_sync_to_async(Operation.objects.get)(pk=op_id)
    assert op.status == "failed" and "2 times" in (op.error or "")


async def test_a_dead_turn_is_interrupted_and_the_session_usable_again(
    owner: Any, session_id: uuid.UUID
) -> None:
    await database_sync_to_async(crash_mid_turn)(session_id, "half an ans")
    socket = await open_socket(owner, session_id)
    assert socket.frames[-1]["running"] is False  # the lease is stale: nothing runs
    await process.sweep_once()  # the process's own sweep may have come first: either way
    while socket.view.messages[2]["status"] != "interrupted":
        await socket.next()
    stored = await db_messages(session_id)
    assert stored[1][2:] == ("half an ans", "interrupted")
    await socket.send(send_frame("again"))
    await socket.until(lambda f: f["type"] == "turn_finished" and f["status"] == "completed")
    final = (await db_messages(session_id))[-1]
    assert final[1] == "assistant" and final[3] == "complete" and "again" in (final[2] or "")


async def test_admin_retry_and_fail(owner: Any) -> None:
    session_id, op_id = await _session_with_running_operation(
        owner, "slow_side_effect", {"seconds": 0.1}
    )
    failed = await database_sync_to_async(operations.operation_fail)(
        operation_id=op_id, error="Error: stopped by staff."
    )
    assert failed is not None and failed[0].status == "failed"
    assert await database_sync_to_async(operations.operation_retry)(operation_id=op_id)
    socket = await open_socket(owner, session_id)
    await socket.until_type("operation_completed")
    op = await database_sync_to_async(Operation.objects.get)(pk=op_id)
    assert op.status == "succeeded" and op.result == "done once"


async def test_an_operation_whose_task_was_lost_is_queued_again(owner: Any) -> None:
    """The process died between committing the operation and queueing its task."""
    session_id, op_id = await _session_with_running_operation(owner, "timer", {"seconds": 0.1})
    await database_sync_to_async(
        lambda: Operation.objects.filter(pk=op_id).update(
            status="pending", lease_owner="", heartbeat_at=None, attempts=0,
            created_at=timezone.now() - timedelta(minutes=5),
        )
    )()  # fmt: skip
    socket = await open_socket(owner, session_id)
    await process.sweep_once()
    done = await until_operation(socket, op_id, "succeeded")
    assert done["attempts"] == 1


async def test_a_send_recovers_a_dead_turn_first(owner: Any, session_id: uuid.UUID) -> None:
    await database_sync_to_async(crash_mid_turn)(session_id, "cut sh")
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("next"))
    await socket.until(lambda f: f["type"] == "turn_finished" and f["status"] == "completed")
    stored = await db_messages(session_id)
    assert stored[1][2:] == ("cut sh", "interrupted")
    assert [st for _, _, _, st in stored] == ["complete", "interrupted", "complete", "complete"]
