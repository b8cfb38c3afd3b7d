"""Long-running tool operations: create, dispatch, run, complete, recover.

When the model calls a tool with ``is_long_running``, the turn saves a pending tool message
and an ``Operation`` (``operation_create``), publishes ``operation_started`` and goes on. The
work is a ``django.tasks`` task (``run_operation``) on the database queue of django-tasks-db,
run by whichever worker claims it: the server process itself in the embedded default
(``sessions_app.operations.worker``), or ``manage.py db_worker`` processes in production.
When it ends, the tool message gets the result or the error, the cache is invalidated (by
the store), the outcome is broadcast, and a follow-up turn gives the model the result.

While it runs, the worker holds the operation's lease (``lease_owner`` + ``heartbeat_at``).
The sweep (``operations_sweep``) finds operations whose worker stopped renewing it: a
retry-safe tool is dispatched again (up to ``CHAT_OPERATION_MAX_ATTEMPTS`` runs), any other
fails with an error that says the server stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.tasks import task
from django.utils import timezone

from sessions_app import events, limits, process, store
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import client as llm
from sessions_app.models import ChatSession, Operation
from sessions_app.schemas import ChatMessageData
from sessions_app.tools.base import ToolContext
from sessions_app.tools.registry import tool_execute, tool_get

logger = logging.getLogger(__name__)

ACTIVE = (Operation.Status.PENDING, Operation.Status.RUNNING)
FINISHED = (Operation.Status.SUCCEEDED, Operation.Status.FAILED, Operation.Status.CANCELLED)
# Progress is written to the database at most this often (it is published every time).
PROGRESS_WRITE_SECONDS = 1.0

PENDING_CONTENT = (
    "Started in the background as operation {id}. Its result will replace this text when it "
    "finishes; the user may close the page meanwhile and come back later."
)
DUPLICATE_CONTENT = (
    "The same request is already running as operation {id}; its result will appear in the "
    "tool message of call {call_id}."
)
FINISHED_NOTICE = (
    "Background operation finished: tool call {call_id} ({tool}). Its result is now in the "
    "tool message of that call; tell the user about it."
)
CRASH_ERROR = (
    "Error: the server running this operation stopped (a restart or a crash) before it "
    "finished. It was not started again because {tool} is not safe to repeat; ask again to "
    "retry it."
)
EXHAUSTED_ERROR = "Error: the operation was interrupted {attempts} times; giving up."
SHUTDOWN_ERROR = (
    "Error: the server shut down while this operation ran. It was not started again because "
    "{tool} is not safe to repeat; ask again to retry it."
)


def operation_out(op: Operation) -> dict[str, Any]:
    """An operation as clients see it (events, snapshots)."""
    return {
        "id": str(op.id),
        "tool_name": op.tool_name,
        "tool_call_id": op.tool_call_id,
        "status": op.status,
        "arguments": op.arguments,
        "progress": op.progress,
        "progress_text": op.progress_text or None,
        "error": op.error,
        "attempts": op.attempts,
        "created_at": op.created_at.isoformat(),
        "started_at": op.started_at.isoformat() if op.started_at else None,
        "finished_at": op.finished_at.isoformat() if op.finished_at else None,
        "message_sequence": op.message.sequence if op.message_id and op.message else None,
    }


def arguments_key(arguments: Any) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()


def _stale_before() -> datetime:
    return timezone.now() - timedelta(seconds=settings.CHAT_LEASE_SECONDS)


# --- services (sync: they run in a thread) ------------------------------------------------------


def operation_create(
    *,
    session_id: uuid.UUID,
    message: ChatMessageData,
    tool_name: str,
    tool_call_id: str,
    arguments: Any,
) -> tuple[Operation, bool, ChatMessageData]:
    """Create the operation of a long-running tool call, or find the one already doing it.

    Returns the operation, whether it is new, and the tool message as now stored. The same
    tool call, or the same tool with the same arguments while one is pending or running in
    the session, never starts twice: the existing operation is returned. Dispatch happens
    after commit. Raises ``LimitExceeded`` (nothing created) when a new one would pass the
    user's or the session's limit of unfinished operations.
    """
    assert message.sequence is not None
    with transaction.atomic():
        # The owner's row, then the session's, serialise creators: the duplicate check and
        # the limits hold (the same order as every other lock of both).
        owner_id = store.session_owner(session_id=session_id)
        get_user_model().objects.select_for_update().filter(pk=owner_id).first()
        ChatSession.objects.select_for_update().filter(pk=session_id).first()
        existing = Operation.objects.filter(session_id=session_id, tool_call_id=tool_call_id)
        found = existing.select_related("message").first()
        if found is None:
            key = arguments_key(arguments)
            for candidate in Operation.objects.filter(
                session_id=session_id, tool_name=tool_name, status__in=ACTIVE
            ).select_related("message"):
                if arguments_key(candidate.arguments) == key:
                    found = candidate
                    break
        if found is not None:
            content = DUPLICATE_CONTENT.format(id=found.id, call_id=found.tool_call_id)
            stored = message
            if found.tool_call_id != tool_call_id:
                stored = store.message_update(
                    session_id=session_id,
                    sequence=message.sequence,
                    changes={"content": content, "status": "complete"},
                )
            return found, False, stored
        unfinished = Operation.objects.filter(status__in=ACTIVE)
        refusal = limits.operations_refusal(
            in_session=unfinished.filter(session_id=session_id).count(),
            of_user=unfinished.filter(session__owner_id=owner_id).count(),
        )
        if refusal is not None:
            raise refusal
        op = Operation.objects.create(
            session_id=session_id,
            message_id=store.message_pk(session_id=session_id, sequence=message.sequence),
            tool_call_id=tool_call_id,
            tool_name=tool_name,
            arguments=arguments,
        )
        stored = store.message_update(
            session_id=session_id,
            sequence=message.sequence,
            changes={"content": PENDING_CONTENT.format(id=op.id)},
        )
        operation_id = op.id
        transaction.on_commit(lambda: operation_dispatch(operation_id=operation_id))
    op = Operation.objects.select_related("message").get(pk=op.pk)
    return op, True, stored


def operation_dispatch(*, operation_id: uuid.UUID) -> None:
    """Queue the operation's task (after the operation row committed)."""
    run_operation.enqueue(operation_id=str(operation_id))
    process.worker_wake()


def operation_get(*, operation_id: uuid.UUID) -> Operation | None:
    return Operation.objects.select_related("message").filter(pk=operation_id).first()


def operations_of(*, session_id: uuid.UUID) -> list[Operation]:
    return list(
        Operation.objects.filter(session_id=session_id)
        .select_related("message")
        .order_by("created_at")
    )


def operation_claim(*, operation_id: uuid.UUID, owner: str) -> Operation | None:
    """Take the operation's lease to run it; ``None`` when it must not run here.

    A finished operation, or one a live worker holds, is not run again: a task delivered
    twice (or re-dispatched while the first run still lives) does nothing.
    """
    with transaction.atomic():
        op = Operation.objects.select_for_update(of=("self",)).filter(pk=operation_id).first()
        if op is None or op.status in FINISHED:
            return None
        stale = op.heartbeat_at is None or op.heartbeat_at < _stale_before()
        if op.status == Operation.Status.RUNNING and not stale and op.lease_owner != owner:
            return None
        now = timezone.now()
        op.status = Operation.Status.RUNNING
        op.lease_owner = owner
        op.started_at = op.started_at or now
        op.heartbeat_at = now
        op.attempts += 1
        op.save(update_fields=["status", "lease_owner", "started_at", "heartbeat_at", "attempts"])
    return operation_get(operation_id=operation_id)


def operation_heartbeat(
    *, operation_id: uuid.UUID, owner: str, progress: float | None = None, text: str | None = None
) -> Operation | None:
    """Renew the lease (and store progress). ``None`` when this worker lost the lease."""
    changes: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if text is not None:
        changes["progress"] = progress
        changes["progress_text"] = text[:200]
    updated = Operation.objects.filter(
        pk=operation_id, lease_owner=owner, status=Operation.Status.RUNNING
    ).update(**changes)
    return operation_get(operation_id=operation_id) if updated else None


def _finish(
    op: Operation, *, status: str, content: str, message_status: str, error: str | None
) -> tuple[Operation, ChatMessageData | None]:
    """Write the outcome to the operation and its tool message. Precondition: in atomic()."""
    op.status = status
    op.finished_at = timezone.now()
    op.error = error
    if status == Operation.Status.SUCCEEDED:
        op.result = content
        op.progress = 1.0
    op.save(update_fields=["status", "finished_at", "error", "result", "progress"])
    message = None
    if op.message is not None:
        message = store.message_update(
            session_id=op.session_id,
            sequence=op.message.sequence,
            changes={"content": content, "status": message_status},
        )
    return op, message


def operation_complete(
    *, operation_id: uuid.UUID, owner: str, ok: bool, content: str
) -> tuple[Operation, ChatMessageData | None] | None:
    """Record the run's outcome, unless the lease was lost meanwhile (then ``None``)."""
    with transaction.atomic():
        op = (
            Operation.objects.select_for_update(of=("self",))
            .select_related("message")
            .filter(pk=operation_id, lease_owner=owner, status=Operation.Status.RUNNING)
            .first()
        )
        if op is None:
            return None
        status = Operation.Status.SUCCEEDED if ok else Operation.Status.FAILED
        return _finish(
            op,
            status=status,
            content=content,
            message_status="complete" if ok else "failed",
            error=None if ok else content,
        )


def operation_fail(
    *, operation_id: uuid.UUID, error: str
) -> tuple[Operation, ChatMessageData | None] | None:
    """Fail an unfinished operation with ``error`` (the admin)."""
    with transaction.atomic():
        rows = Operation.objects.select_for_update(of=("self",)).select_related("message")
        rows = rows.filter(pk=operation_id, status__in=ACTIVE)
        op = rows.first()
        if op is None:
            return None
        return _finish(
            op, status=Operation.Status.FAILED, content=error, message_status="failed", error=error
        )


def _requeue_locked(op: Operation, **changes: Any) -> None:
    """Put an operation back in the queue, with ``changes``: no lease, dispatched again after
    commit. Precondition: ``op`` is locked inside ``transaction.atomic()``."""
    fields = {"status": Operation.Status.PENDING, "lease_owner": "", "heartbeat_at": None}
    fields.update(changes)
    for name, value in fields.items():
        setattr(op, name, value)
    op.save(update_fields=list(fields))
    operation_id = op.id
    transaction.on_commit(lambda: operation_dispatch(operation_id=operation_id))


def operation_hand_back(
    *, operation_id: uuid.UUID, owner: str
) -> tuple[str, Operation | None, Any]:
    """Shutdown: give back an operation this process runs. A retry-safe one goes back in
    the queue for another process; any other fails with an error that says why.

    Returns what was done (``requeued``, ``failed``, ``none``), the operation and its
    message, like ``operation_recover``.
    """
    with transaction.atomic():
        op = (
            Operation.objects.select_for_update(of=("self",))
            .select_related("message")
            .filter(pk=operation_id, status__in=ACTIVE, lease_owner=owner)
            .first()
        )
        if op is None:
            return "none", None, None
        tool = tool_get(op.tool_name)
        if tool is not None and tool.retry_safe:
            _requeue_locked(op)
            return "requeued", operation_get(operation_id=operation_id), None
        error = SHUTDOWN_ERROR.format(tool=op.tool_name)
        op, message = _finish(
            op, status=Operation.Status.FAILED, content=error, message_status="failed", error=error
        )
        return "failed", op, message


def operation_retry(*, operation_id: uuid.UUID) -> bool:
    """The admin's retry: a failed or stuck operation runs again from the start."""
    with transaction.atomic():
        op = (
            Operation.objects.select_for_update(of=("self",))
            .select_related("message")
            .filter(pk=operation_id)
            .first()
        )
        if op is None or op.status == Operation.Status.SUCCEEDED:
            return False
        _requeue_locked(op, error=None, finished_at=None)
        if op.message is not None:
            store.message_update(
                session_id=op.session_id,
                sequence=op.message.sequence,
                changes={"content": PENDING_CONTENT.format(id=op.id), "status": "pending"},
            )
    return True


def operations_stale() -> list[uuid.UUID]:
    """Running operations whose worker stopped renewing the lease."""
    rows = Operation.objects.filter(
        Q(heartbeat_at__lt=_stale_before()) | Q(heartbeat_at__isnull=True),
        status=Operation.Status.RUNNING,
    )
    return list(rows.values_list("pk", flat=True))


def operation_recover(*, operation_id: uuid.UUID) -> tuple[str, Operation | None, Any]:
    """Recover one stale operation: re-dispatch a retry-safe one, fail any other.

    Returns what was done (``requeued``, ``failed``, ``none``), the operation and its
    message. Re-checks staleness under the row lock, so two sweepers act once.
    """
    with transaction.atomic():
        op = (
            Operation.objects.select_for_update(of=("self",))
            .select_related("message")
            .filter(
                Q(heartbeat_at__lt=_stale_before()) | Q(heartbeat_at__isnull=True),
                pk=operation_id,
                status=Operation.Status.RUNNING,
            )
            .first()
        )
        if op is None:
            return "none", None, None
        tool = tool_get(op.tool_name)
        retry_safe = tool is not None and tool.retry_safe
        if retry_safe and op.attempts < settings.CHAT_OPERATION_MAX_ATTEMPTS:
            _requeue_locked(op, progress_text="Restarting after the server running it stopped")
            return "requeued", operation_get(operation_id=operation_id), None
        error = (
            EXHAUSTED_ERROR.format(attempts=op.attempts)
            if retry_safe
            else CRASH_ERROR.format(tool=op.tool_name)
        )
        op, message = _finish(
            op, status=Operation.Status.FAILED, content=error, message_status="failed", error=error
        )
        return "failed", op, message


# --- publishing ------------------------------------------------------------------------------


def _outcome(op: Operation, message: ChatMessageData | None) -> tuple[str, dict[str, Any]]:
    from sessions_app.turns.runner import message_out

    kind = "operation_completed" if op.status == Operation.Status.SUCCEEDED else "operation_failed"
    fields = {
        "operation": operation_out(op),
        "message": message_out(message) if message is not None else None,
    }
    return kind, fields


async def publish_outcome(op: Operation, message: ChatMessageData | None) -> None:
    """``operation_completed`` / ``operation_failed`` with the operation and its message."""
    kind, fields = _outcome(op, message)
    await events.event_publish(op.session_id, kind, **fields)


def publish_outcome_sync(op: Operation, message: ChatMessageData | None) -> None:
    """``publish_outcome`` for synchronous code (the admin)."""
    kind, fields = _outcome(op, message)
    events.event_publish_sync(op.session_id, kind, **fields)


def operations_lost_in_queue() -> list[uuid.UUID]:
    """Pending operations with no task waiting or running for them (the process died
    between committing the operation and queueing its task), older than a lease."""
    from django.tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    pending = Operation.objects.filter(
        status=Operation.Status.PENDING, created_at__lt=_stale_before()
    ).values_list("pk", flat=True)
    lost = []
    for operation_id in pending:
        queued = DBTaskResult.objects.filter(
            status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING],
            args_kwargs__kwargs__operation_id=str(operation_id),
        )
        if not queued.exists():
            lost.append(operation_id)
    return lost


async def operations_sweep() -> None:
    """Recover every stale operation (any process may run this, any number of times)."""
    for operation_id in await db_sync_to_async(operations_lost_in_queue)():
        logger.warning("operation %s had no queued task; queueing it again", operation_id)
        await db_sync_to_async(operation_dispatch)(operation_id=operation_id)
    stale = await db_sync_to_async(operations_stale)()
    for operation_id in stale:
        action, op, message = await db_sync_to_async(operation_recover)(operation_id=operation_id)
        if op is not None:
            logger.warning("operation %s of %s was stale: %s", op.id, op.session_id, action)
            await publish_recovery(action, op, message)


async def publish_recovery(action: str, op: Operation, message: ChatMessageData | None) -> None:
    """Tell the session what ``operation_recover`` / ``operation_hand_back`` did."""
    if action == "requeued":
        await events.event_publish(
            op.session_id, "operation_in_progress", operation=operation_out(op)
        )
    elif action == "failed":
        await publish_outcome(op, message)
        operation_follow_up(op)


# --- the task ------------------------------------------------------------------------------


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
            op.session_id, "operation_in_progress", operation=operation_out(op)
        )
        runner = _OperationRun(op, owner)
        return await runner.run()
    finally:
        if process.home_loop() is not asyncio.get_running_loop():
            await llm.clients_close()  # a worker's loop of its own, ending with this task


class _OperationRun:
    def __init__(self, op: Operation, owner: str) -> None:
        self.op = op
        self.owner = owner
        self.last_write = 0.0
        self.lost = False

    async def heartbeat(self, work: asyncio.Task[Any]) -> None:
        while not work.done():
            await asyncio.sleep(settings.CHAT_HEARTBEAT_SECONDS)
            try:
                renewed = await db_sync_to_async(operation_heartbeat)(
                    operation_id=self.op.id, owner=self.owner
                )
            except Exception:
                # One failed renewal is not a lost lease: try again at the next beat.
                logger.warning("could not renew operation %s", self.op.id, exc_info=True)
                continue
            if renewed is None:
                # Swept as dead (this process stalled): someone else owns it now.
                self.lost = True
                work.cancel()
                return

    async def progress(self, fraction: float | None, text: str) -> None:
        now = time.monotonic()
        if now - self.last_write >= PROGRESS_WRITE_SECONDS or fraction in (0.0, 1.0):
            self.last_write = now
            updated = await db_sync_to_async(operation_heartbeat)(
                operation_id=self.op.id, owner=self.owner, progress=fraction, text=text
            )
            if updated is not None:
                self.op = updated
        payload = operation_out(self.op)
        payload.update(progress=fraction, progress_text=text)
        await events.event_publish(self.op.session_id, "operation_in_progress", operation=payload)

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        from sessions_app.model import client as llm

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
        process.operation_started(op.id, work)
        beat = asyncio.ensure_future(self.heartbeat(work))
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
            process.operation_finished(op.id)
        finished = await db_sync_to_async(operation_complete)(
            operation_id=op.id, owner=self.owner, ok=outcome.ok, content=outcome.content
        )
        if finished is None:
            return "lease lost"
        done, message = finished
        await publish_outcome(done, message)
        await _continue_conversation(done)
        return done.status


def operation_follow_up(op: Operation) -> None:
    """Tell the model how an operation ended outside its run (the sweep, staff) in a
    follow-up turn, as background work of this process. Where there is none (a management
    command), the model reads the outcome in the history of the user's next message."""
    name = f"follow-up of operation {op.id}"
    if not process.background(lambda: _continue_conversation(op), name):
        logger.info("no follow-up turn for operation %s: no background work here", op.id)


async def _continue_conversation(op: Operation) -> None:
    """Give the model the result: a follow-up turn, unless one runs (it will see it)."""
    from sessions_app import turns

    notice = FINISHED_NOTICE.format(call_id=op.tool_call_id, tool=op.tool_name)
    owner_id = await db_sync_to_async(store.session_owner)(session_id=op.session_id)
    await turns.turn_continue(session_id=op.session_id, owner_id=owner_id, notice=notice)
