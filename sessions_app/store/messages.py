"""Messages: appended (only the new rows are written), changed in place, checkpointed,
found by client id, searched, and what a dead turn left unfinished marked interrupted.

Sequence numbers are allocated under the session row's lock, so concurrent writers in any
processes never lose, reorder or duplicate a message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from sessions_app.models import ChatMessage, ChatSession
from sessions_app.schemas import ChatMessageData, MessageSearchHit
from sessions_app.store import cache as session_cache
from sessions_app.store.rows import (
    after_messages_write,
    append_locked,
    as_uuid,
    best_effort,
    forget_message,
    locked_row,
    message_change,
    message_from_row,
    write_failed,
)
from sessions_app.store.sessions import session_check_owner

logger = logging.getLogger("sessions_app.store")


def message_by_client_id(
    *, session_id: uuid.UUID | str, owner_id: int, client_message_id: str
) -> ChatMessageData | None:
    """The message a client sent with ``client_message_id``, if stored (a retried send)."""
    sid = session_check_owner(session_id=session_id, owner_id=owner_id)
    row = ChatMessage.objects.filter(session_id=sid, client_message_id=client_message_id).first()
    return message_from_row(row) if row is not None else None


def messages_append(
    *,
    session_id: uuid.UUID | str,
    messages: Sequence[ChatMessageData],
    owner_id: int | None = None,
) -> list[ChatMessageData]:
    """Append messages to a session and return them with their sequence numbers.

    Atomic across processes: the session row is locked while sequences are allocated, so
    concurrent writers never lose, reorder or duplicate a message.
    """
    sid = as_uuid(session_id)
    try:
        with transaction.atomic():
            row = locked_row(sid, owner_id)
            saved = append_locked(row, messages)
            after_messages_write(sid, saved)
    except DatabaseError as exc:
        raise write_failed(f"{len(messages)} message(s)", sid, exc) from exc
    return saved


class AppendedOnce(NamedTuple):
    """What ``message_append_once`` stored: the message, the ones that follow it (only
    when it is new) and whether it is new."""

    message: ChatMessageData
    followers: list[ChatMessageData]
    created: bool


def message_append_once(
    *,
    session_id: uuid.UUID | str,
    message: ChatMessageData,
    owner_id: int | None = None,
    followers: Sequence[ChatMessageData] = (),
) -> AppendedOnce:
    """Append ``message`` unless one with its ``client_message_id`` is already stored, and
    ``followers`` after it when it is new (a turn's first reply, still empty).

    A retried send is stored once: the check runs under the session row's lock, so two
    processes racing store it once too. Inside a caller's transaction it is part of it (no
    savepoint): a failure rolls the caller's work back as well.
    """
    sid = as_uuid(session_id)
    try:
        with transaction.atomic(savepoint=False):
            row = locked_row(sid, owner_id)
            if message.client_message_id:
                existing = ChatMessage.objects.filter(
                    session_id=sid, client_message_id=message.client_message_id
                ).first()
                if existing is not None:
                    return AppendedOnce(message_from_row(existing), [], False)
            saved = append_locked(row, [message, *followers])
            after_messages_write(sid, saved)
    except DatabaseError as exc:
        raise write_failed("the message", sid, exc) from exc
    return AppendedOnce(saved[0], saved[1:], True)


def message_update(
    *,
    session_id: uuid.UUID | str,
    sequence: int,
    changes: dict[str, Any],
    owner_id: int | None = None,
) -> ChatMessageData:
    """Change a saved message in place (a checkpointed stream, a finished tool result)."""
    sid = as_uuid(session_id)
    try:
        with transaction.atomic():
            locked_row(sid, owner_id)
            updated = message_change(sid, sequence, changes)
            ChatSession.objects.filter(pk=sid).update(updated_at=updated.updated_at)
    except DatabaseError as exc:
        raise write_failed(f"message {sequence}", sid, exc) from exc
    return updated


def message_checkpoint(*, session_id: uuid.UUID | str, sequence: int, content: str) -> bool:
    """Write the text streamed so far into a message that is still streaming.

    The light write of a checkpoint, made every ``CHAT_CHECKPOINT_MS`` of every streaming
    answer: one ``UPDATE`` (no lock on the session row, ``ChatSession.updated_at`` left for
    the final write), then the message's cache entry dropped so readers load the row. A
    reader that loaded the row just before may put the previous text back in the cache
    until the next checkpoint; snapshots fill streaming text from the event log anyway.
    Returns ``False`` when the message no longer streams (it was completed meanwhile).
    """
    sid = as_uuid(session_id)
    try:
        written = ChatMessage.objects.filter(
            session_id=sid, sequence=sequence, status="streaming"
        ).update(content=content, updated_at=timezone.now())
    except DatabaseError as exc:
        raise write_failed(f"message {sequence}", sid, exc) from exc
    best_effort("delete", sid, lambda: session_cache.message_forget(sid, sequence))
    return written == 1


SEARCH_SNIPPET_CHARS = 160


def messages_search(*, owner_id: int, query: str, limit: int) -> list[MessageSearchHit]:
    """Messages of ``owner_id``'s own sessions whose content contains ``query``, ignoring
    case (ASCII only on SQLite, whose LIKE folds no other letters), newest first.

    Ownership is part of the query itself, so another user's message can never be returned.
    Reads only the matching rows (at most ``limit``) and their session titles, never whole
    sessions, and returns snippets rather than contents.
    """
    needle = " ".join(query.split())
    if not needle or limit < 1:
        return []
    rows = (
        ChatMessage.objects.filter(session__owner_id=owner_id, content__icontains=needle)
        .order_by("-created_at", "-id")
        .values_list("session_id", "session__title", "sequence", "role", "content", "created_at")
    )[:limit]
    return [
        MessageSearchHit(
            session_id=session_id,
            session_title=title,
            sequence=sequence,
            role=role,
            created_at=created_at,
            snippet=_search_snippet(content or "", needle, SEARCH_SNIPPET_CHARS),
        )
        for session_id, title, sequence, role, content, created_at in rows
    ]


def _search_snippet(content: str, needle: str, width: int) -> str:
    """About ``width`` characters of ``content`` centred on the first match, on one line."""
    text = " ".join(content.split())
    at = max(text.lower().find(needle.lower()), 0)
    start = max(0, at - (width - len(needle)) // 2)
    end = min(len(text), start + width)
    start = max(0, end - width)
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def message_pk(*, session_id: uuid.UUID | str, sequence: int) -> int:
    """The primary key of a session's message (to link an operation to it)."""
    sid = as_uuid(session_id)
    pk = (
        ChatMessage.objects.filter(session_id=sid, sequence=sequence)
        .values_list("pk", flat=True)
        .first()
    )
    if pk is None:
        raise LookupError(f"session {sid} has no message {sequence}")
    return pk


def messages_interrupt_unfinished(
    *, session_id: uuid.UUID | str, tool_content: str
) -> list[ChatMessageData]:
    """Mark what a dead turn left unfinished: streaming text is kept and marked
    ``interrupted``; pending tool calls that are not operations get ``tool_content`` (the
    model needs an answer to every call). Operations' messages are left to their sweep."""
    sid = as_uuid(session_id)
    try:
        with transaction.atomic():
            locked_row(sid, None)
            rows = list(
                ChatMessage.objects.filter(session_id=sid)
                .filter(
                    Q(status=ChatMessage.Status.STREAMING)
                    | Q(role=ChatMessage.Role.TOOL, status=ChatMessage.Status.PENDING)
                )
                .exclude(operation__isnull=False)
                .order_by("sequence")
            )
            now = timezone.now()
            for row in rows:
                if row.role == ChatMessage.Role.TOOL:
                    row.content = tool_content
                row.status = ChatMessage.Status.INTERRUPTED
                row.updated_at = now
                row.save(update_fields=["content", "status", "updated_at"])
            changed = [message_from_row(row) for row in rows]
            if changed:
                for row in rows:
                    forget_message(sid, row.sequence)
                after_messages_write(sid, changed)
    except DatabaseError as exc:
        raise write_failed("the interrupted messages", sid, exc) from exc
    return changed
