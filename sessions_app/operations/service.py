"""Long-running tool operations: the services that create, claim, finish and recover them.

When the model calls a tool with ``is_long_running``, the turn saves a pending tool message
and an ``Operation`` (``operation_create``), publishes ``operation_started`` and goes on. The
work is a ``django.tasks`` task (``sessions_app.operations.task``) on the database queue of
django-tasks-db, run by whichever worker claims it: the server process itself in the
embedded default (``sessions_app.operations.worker``), or ``manage.py db_worker`` processes
in production.

While it runs, the worker holds the operation's lease (``lease_owner`` + ``heartbeat_at``).
An operation whose worker stopped renewing it is recovered (``operation_recover``): a
retry-safe tool is queued again (up to ``CHAT_OPERATION_MAX_ATTEMPTS`` runs), any other fails
with an error that says the server stopped.

Every function here is synchronous (it runs on a database thread) and, where it queues
work, sends ``operation_queued`` after its transaction commits; the task module queues the
task when it hears it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.dispatch import Signal
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from sessions_app import limits, store
from sessions_app.models import ChatSession, Operation
from sessions_app.schemas import ChatMessageData
from sessions_app.store.leases import lease_stale_before
from sessions_app.tools.registry import tool_get

logger = logging.getLogger(__name__)

ACTIVE = (Operation.Status.PENDING, Operation.Status.RUNNING)
FINISHED = (Operation.Status.SUCCEEDED, Operation.Status.FAILED, Operation.Status.CANCELLED)
# Sent after the commit of every write that queued an operation (``operation_id=``).
operation_queued = Signal()

PENDING_CONTENT = (
    "Started in the background as operation {id}. Its result will replace this text when it "
    "finishes; the user may close the page meanwhile and come back later."
)
DUPLICATE_CONTENT = (
    "The same request is already running as operation {id}; its result will appear in the "
    "tool message of call {call_id}."
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


def arguments_key(arguments: Any) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()


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
        transaction.on_commit(lambda: operation_queue(operation_id=operation_id))
    op = Operation.objects.select_related("message").get(pk=op.pk)
    return op, True, stored


def operation_queue(*, operation_id: uuid.UUID) -> None:
    """Queue the operation's task (call after the operation row committed)."""
    operation_queued.send(sender=Operation, operation_id=operation_id)


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
        stale = op.heartbeat_at is None or op.heartbeat_at < lease_stale_before()
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
    transaction.on_commit(lambda: operation_queue(operation_id=operation_id))


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
        Q(heartbeat_at__lt=lease_stale_before()) | Q(heartbeat_at__isnull=True),
        status=Operation.Status.RUNNING,
    )
    return list(rows.values_list("pk", flat=True))


class Recovery(NamedTuple):
    """What ``operation_recover`` did: ``requeued``, ``failed`` or ``none`` (nothing to
    recover: it finished, or its worker renewed the lease meanwhile)."""

    action: str
    operation: Operation | None
    message: ChatMessageData | None


def operation_recover(*, operation_id: uuid.UUID, owner: str | None = None) -> Recovery:
    """Take an unfinished operation away from the worker that ran it: a retry-safe tool goes
    back in the queue for any worker, any other fails with an error that says why.

    Without ``owner``, the crash sweep: only a running operation whose lease is stale is
    recovered, and a retry-safe one at most ``CHAT_OPERATION_MAX_ATTEMPTS`` times in all.
    With ``owner``, the process that runs it hands it back as it shuts down. The condition
    is checked under the row's lock, so two sweepers recover an operation once.
    """
    with transaction.atomic():
        rows = Operation.objects.select_for_update(of=("self",)).select_related("message")
        if owner is None:
            rows = rows.filter(
                Q(heartbeat_at__lt=lease_stale_before()) | Q(heartbeat_at__isnull=True),
                status=Operation.Status.RUNNING,
            )
        else:
            rows = rows.filter(status__in=ACTIVE, lease_owner=owner)
        op = rows.filter(pk=operation_id).first()
        if op is None:
            return Recovery("none", None, None)
        tool = tool_get(op.tool_name)
        retry_safe = tool is not None and tool.retry_safe
        if owner is not None:
            if retry_safe:
                _requeue_locked(op)
                return Recovery("requeued", operation_get(operation_id=operation_id), None)
            error = SHUTDOWN_ERROR.format(tool=op.tool_name)
        elif retry_safe and op.attempts < settings.CHAT_OPERATION_MAX_ATTEMPTS:
            _requeue_locked(op, progress_text="Restarting after the server running it stopped")
            return Recovery("requeued", operation_get(operation_id=operation_id), None)
        elif retry_safe:
            error = EXHAUSTED_ERROR.format(attempts=op.attempts)
        else:
            error = CRASH_ERROR.format(tool=op.tool_name)
        op, message = _finish(
            op, status=Operation.Status.FAILED, content=error, message_status="failed", error=error
        )
        return Recovery("failed", op, message)


def operations_lost_in_queue() -> list[uuid.UUID]:
    """Pending operations with no task waiting or running for them (the process died
    between committing the operation and queueing its task), older than a lease."""
    pending = Operation.objects.filter(
        status=Operation.Status.PENDING, created_at__lt=lease_stale_before()
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
