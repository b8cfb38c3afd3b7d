"""What the store's modules share: rows to shapes, the session row's lock, appends, the
cache steps after a commit, and the error a failed write becomes.

Every function here that writes states its transaction precondition; the public services
(``sessions``, ``messages``, ``turn_writes``) are the ones callers outside the store use.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from sessions_app.errors import SessionNotFound, StoreWriteError
from sessions_app.models import ChatMessage, ChatSession, UsageRecord
from sessions_app.schemas import ChatMessageData, SessionMeta, Usage
from sessions_app.store import cache as session_cache

logger = logging.getLogger("sessions_app.store")

MESSAGE_FIELDS = (
    "role",
    "content",
    "name",
    "tool_call_id",
    "refusal",
    "tool_calls",
    "function_call",
    "status",
    "client_message_id",
)


# Updatable in place: everything but who said it and where it stands.
MESSAGE_UPDATABLE = ("content", "refusal", "tool_calls", "function_call", "status", "name")


def meta_from_row(row: ChatSession) -> SessionMeta:
    return SessionMeta(
        id=row.id,
        owner_id=row.owner_id,
        title=row.title,
        created_at=row.created_at,
        updated_at=row.updated_at,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        credentials=row.credentials,
        successful_agent_runs=row.successful_agent_runs,
        successful_agent_schedules=row.successful_agent_schedules,
        last_sequence=row.last_sequence,
        last_event_seq=row.last_event_seq,
    )


def message_from_row(row: ChatMessage) -> ChatMessageData:
    data = {field: getattr(row, field) for field in MESSAGE_FIELDS}
    return ChatMessageData(
        **data, sequence=row.sequence, created_at=row.created_at, updated_at=row.updated_at
    )


def as_uuid(session_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(session_id, uuid.UUID):
        return session_id
    try:
        return uuid.UUID(str(session_id))
    except ValueError:
        raise SessionNotFound(session_id) from None


def best_effort(action: str, session_id: uuid.UUID, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        logger.warning("cache %s failed for session %s", action, session_id, exc_info=True)


def after_commit(action: str, session_id: uuid.UUID, fn: Callable[[], Any]) -> None:
    transaction.on_commit(lambda: best_effort(action, session_id, fn))


def write_failed(what: str, session_id: uuid.UUID | None, exc: DatabaseError) -> StoreWriteError:
    where = f" of session {session_id}" if session_id else ""
    logger.error("database write failed: %s%s: %s", what, where, exc)
    return StoreWriteError(f"Could not save {what}{where}: the database refused the write.")


def session_row(session_id: uuid.UUID, owner_id: int | None) -> ChatSession:
    rows = ChatSession.objects.filter(pk=session_id)
    if owner_id is not None:
        rows = rows.filter(owner_id=owner_id)
    row = rows.first()
    if row is None:
        raise SessionNotFound(session_id)
    return row


def locked_row(session_id: uuid.UUID, owner_id: int | None) -> ChatSession:
    rows = ChatSession.objects.select_for_update().filter(pk=session_id)
    if owner_id is not None:
        rows = rows.filter(owner_id=owner_id)
    row = rows.first()
    if row is None:
        raise SessionNotFound(session_id)
    return row


def append_locked(row: ChatSession, messages: Sequence[ChatMessageData]) -> list[ChatMessageData]:
    """Insert ``messages`` after the last one; only the new rows are written.

    Precondition: inside ``transaction.atomic()`` with ``row`` locked (or just created), so
    the sequence numbers handed out here are unique across processes. Updates ``row``.
    """
    if not messages:
        return []
    now = timezone.now()
    start = row.last_sequence
    new_rows = [
        ChatMessage(
            session_id=row.id,
            sequence=start + offset,
            created_at=now,
            updated_at=now,
            **{field: getattr(message, field) for field in MESSAGE_FIELDS},
        )
        for offset, message in enumerate(messages, start=1)
    ]
    ChatMessage.objects.bulk_create(new_rows)
    row.last_sequence = start + len(new_rows)
    row.updated_at = now
    ChatSession.objects.filter(pk=row.id).update(last_sequence=row.last_sequence, updated_at=now)
    return [message_from_row(r) for r in new_rows]


def after_messages_write(sid: uuid.UUID, saved: list[ChatMessageData]) -> None:
    # The bump first: if storing the entries fails, the bumped generation still sends
    # readers to the database for the new last sequence, and they back-fill the missing
    # entries themselves.
    after_commit("update", sid, lambda: session_cache.messages_written(sid, saved))


def forget_message(sid: uuid.UUID, sequence: int) -> None:
    best_effort("delete", sid, lambda: session_cache.message_forget(sid, sequence))


def check_updatable(changes: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a change to a field that is not ``MESSAGE_UPDATABLE``."""
    unknown = set(changes) - set(MESSAGE_UPDATABLE)
    if unknown:
        raise ValueError(f"message fields not updatable: {', '.join(sorted(unknown))}")


def message_change(sid: uuid.UUID, sequence: int, changes: dict[str, Any]) -> ChatMessageData:
    """Change a message in place. Precondition: in ``transaction.atomic()`` with the session
    row locked; the caller updates the session row's ``updated_at``."""
    check_updatable(changes)
    row = ChatMessage.objects.filter(session_id=sid, sequence=sequence).first()
    if row is None:
        raise LookupError(f"session {sid} has no message {sequence}")
    for field, value in changes.items():
        setattr(row, field, value)
    row.updated_at = timezone.now()
    updated = message_from_row(row)  # validates the changes before they are saved
    row.save(update_fields=[*changes, "updated_at"])
    # Drop the entry before commit: a reader that misses it now back-fills the old row,
    # and the set after commit overwrites that.
    forget_message(sid, sequence)
    after_messages_write(sid, [updated])
    return updated


def usage_add(
    row: ChatSession, usage: Usage | None, model: str, *, updated_at: datetime | None = None
) -> Usage | None:
    """Record ``usage`` and add it to the session's totals, setting ``updated_at`` too when
    given: a message was changed, whose write also bumps the cached generation (one update
    of the session row, one bump). Precondition: in ``transaction.atomic()`` with ``row``
    locked. Returns the new totals (``None`` without ``usage``)."""
    sid = row.id
    changes: dict[str, Any] = {} if updated_at is None else {"updated_at": updated_at}
    totals = None
    if usage is not None:
        UsageRecord.objects.create(
            session_id=sid,
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )
        changes["prompt_tokens"] = F("prompt_tokens") + usage.prompt_tokens
        changes["completion_tokens"] = F("completion_tokens") + usage.completion_tokens
        totals = Usage(
            prompt_tokens=row.prompt_tokens + usage.prompt_tokens,
            completion_tokens=row.completion_tokens + usage.completion_tokens,
        )
        if updated_at is None:
            after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    if changes:
        ChatSession.objects.filter(pk=sid).update(**changes)
    return totals
