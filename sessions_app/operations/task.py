"""Running an operation: the ``django.tasks`` task, its lease, its outcome, its recovery.

``run_operation`` is queued when ``operation_queued`` is sent (after the operation's row
committed) and run by whichever worker claims it. It takes the operation's lease, runs the
tool while renewing the lease, records the outcome on the operation and its tool message
(the store invalidates the cache), publishes it, and then awaits every ``on_finished`` hook:
the follow-up turn that gives the model the result (registered by ``SessionsAppConfig``).

``operations_sweep`` (a crash-sweep hook) and ``operations_hand_back`` (a drain hook) recover
operations whose worker died or is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.dispatch import receiver
from django.tasks import task

from sessions_app import events, process, store
from sessions_app.events import frames
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import client as llm
from sessions_app.models import Operation
from sessions_app.operations import worker
from sessions_app.operations.service import (
    Recovery,
    operation_claim,
    operation_complete,
    operation_heartbeat,
    operation_queue,
    operation_queued,
    operation_recover,
    operations_lost_in_queue,
    operations_stale,
)
from sessions_app.schemas import ChatMessageData
from sessions_app.tools.base import ToolContext
from sessions_app.tools.registry import tool_execute

logger = logging.getLogger(__name__)

# Progress is written to the database at most this often (it is published every time).
PROGRESS_WRITE_SECONDS = 1.0

FinishedHook = Callable[[Operation], Awaitable[None]]
_finished_hooks: list[FinishedHook] = []
# The operations this process runs, for the drain to hand back.
_running: dict[uuid.UUID, asyncio.Future[Any]] = {}


def on_finished(hook: FinishedHook) -> FinishedHook:
    """Await ``hook(operation)`` after an operation's outcome was recorded and published."""
    if hook not in _finished_hooks:
        _finished_hooks.append(hook)
    return hook


async def _finished(op: Operation) -> None:
    for hook in _finished_hooks:
        await hook(op)


@receiver(operation_queued)
def _queue_task(sender: Any, *, operation_id: uuid.UUID, **kwargs: Any) -> None:
    run_operation.enqueue(operation_id=str(operation_id))
    worker.worker_wake()


# --- publishing ------------------------------------------------------------------------------


def _outcome(op: Operation, message: ChatMessageData | None) -> frames.SessionEvent:
    """``operation_completed`` / ``operation_failed`` with the operation and its message."""
    kind = (
        frames.OperationCompleted
        if op.status == Operation.Status.SUCCEEDED
        else frames.OperationFailed
    )
    shown = events.message_out(message) if message is not None else None
    return kind(operation=events.operation_out(op), message=shown)


async def publish_outcome(op: Operation, message: ChatMessageData | None) -> None:
    """Publish how an operation ended."""
    await events.event_publish(op.session_id, _outcome(op, message))


def publish_outcome_sync(op: Operation, message: ChatMessageData | None) -> None:
    """``publish_outcome`` for synchronous code (the admin)."""
    events.event_publish_sync(op.session_id, _outcome(op, message))


async def publish_recovery(recovery: Recovery) -> None:
    """Tell the session what ``operation_recover`` did."""
    op = recovery.operation
    if op is None:
        return
    if recovery.action == "requeued":
        await events.event_publish(
            op.session_id, frames.OperationInProgress(operation=events.operation_out(op))
        )
    elif recovery.action == "failed":
        await publish_outcome(op, recovery.message)
        operation_follow_up(op)


def operation_follow_up(op: Operation) -> None:
    """Run the ``on_finished`` hooks of an operation that ended outside its run (the sweep,
    staff) as background work of this process. Where there is none (a management command),
    the model reads the outcome in the history of the user's next message."""
    name = f"follow-up of operation {op.id}"
    if not process.spawn_threadsafe(lambda: _finished(op), name):
        logger.info("no follow-up turn for operation %s: no background work here", op.id)


# --- recovery --------------------------------------------------------------------------------


async def operations_sweep() -> None:
    """Recover every stale operation (any process may run this, any number of times)."""
    for operation_id in await db_sync_to_async(operations_lost_in_queue)():
        logger.warning("operation %s had no queued task; queueing it again", operation_id)
        await db_sync_to_async(operation_queue)(operation_id=operation_id)
    for operation_id in await db_sync_to_async(operations_stale)():
        recovery = await db_sync_to_async(operation_recover)(operation_id=operation_id)
        if recovery.operation is not None:
            op = recovery.operation
            logger.warning(
                "operation %s of %s was stale: %s", op.id, op.session_id, recovery.action
            )
            await publish_recovery(recovery)


async def operations_hand_back() -> None:
    """Shutdown: give back every operation this process runs (re-queued when retry-safe,
    failed otherwise), then stop their work and let each record its end."""
    owner = process.process_id()
    for operation_id in list(_running):
        recovery = await db_sync_to_async(operation_recover)(operation_id=operation_id, owner=owner)
        await publish_recovery(recovery)
    works = list(_running.values())
    for work in works:
        work.cancel()
    if works:
        await asyncio.wait(works, timeout=2)


# --- the task --------------------------------------------------------------------------------


@task()
async def run_operation(operation_id: str) -> str:
    """Run one operation to its end. Safe to deliver twice: ``operation_claim`` decides."""
    owner = process.process_id()
    try:
        op = await db_sync_to_async(operation_claim)(
            operation_id=uuid.UUID(operation_id), owner=owner
        )
        if op is None:
            return "skipped"
        await events.event_publish(
            op.session_id, frames.OperationInProgress(operation=events.operation_out(op))
        )
        return await _OperationRun(op, owner).run()
    finally:
        if process.home_loop() is not asyncio.get_running_loop():
            await llm.clients_close()  # a worker's loop of its own, ending with this task


class _OperationRun:
    def __init__(self, op: Operation, owner: str) -> None:
        self.op = op
        self.owner = owner
        self.last_write = 0.0
        self.lost = False

    async def renew(self) -> bool:
        renewed = await db_sync_to_async(operation_heartbeat)(
            operation_id=self.op.id, owner=self.owner
        )
        return renewed is not None

    async def progress(self, fraction: float | None, text: str) -> None:
        now = time.monotonic()
        if now - self.last_write >= PROGRESS_WRITE_SECONDS or fraction in (0.0, 1.0):
            self.last_write = now
            updated = await db_sync_to_async(operation_heartbeat)(
                operation_id=self.op.id, owner=self.owner, progress=fraction, text=text
            )
            if updated is not None:
                self.op = updated
        shown = events.operation_out(self.op).model_copy(
            update={"progress": fraction, "progress_text": text}
        )
        await events.event_publish(self.op.session_id, frames.OperationInProgress(operation=shown))

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        text, usage = await llm.complete_text(messages=messages)
        if usage is not None:
            await db_sync_to_async(store.usage_record)(
                session_id=self.op.session_id, usage=usage, model=settings.CHAT_MODEL
            )
        return text

    async def run(self) -> str:
        op = self.op
        owner_id = await db_sync_to_async(store.session_owner)(session_id=op.session_id)
        context = ToolContext(
            session_id=op.session_id,
            owner_id=owner_id,
            tool_call_id=op.tool_call_id,
            progress=self.progress,
            complete=self.complete,
        )
        work = asyncio.ensure_future(
            tool_execute(name=op.tool_name, raw_arguments=json.dumps(op.arguments), context=context)
        )
        _running[op.id] = work

        def lost() -> None:
            # Swept as dead (this process stalled): someone else owns it now.
            self.lost = True
            work.cancel()

        beat = asyncio.ensure_future(process.keep_renewing(self.renew, lost, f"operation {op.id}"))
        try:
            outcome = await work
        except asyncio.CancelledError:
            if self.lost:
                return "lease lost"
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            _running.pop(op.id, None)
        finished = await db_sync_to_async(operation_complete)(
            operation_id=op.id, owner=self.owner, ok=outcome.ok, content=outcome.content
        )
        if finished is None:
            return "lease lost"
        done, message = finished
        await publish_outcome(done, message)
        await _finished(done)
        return done.status
