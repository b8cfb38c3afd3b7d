"""Sessions: their rows, read through the cache; creation, renaming, deletion, usage
totals, titles, the context summary and the event floor.

The database is the source of truth. The cache (``store.cache``) is an optimisation: reads
fall back to the database when it fails or holds garbage, writes touch it only after the
database committed, and a cache failure never fails a call. Ownership: every function taking
``owner_id`` treats another user's session exactly like a missing one (``SessionNotFound``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.utils import timezone

from sessions_app import limits
from sessions_app.errors import SessionNotFound
from sessions_app.models import ChatMessage, ChatSession, UsageRecord
from sessions_app.schemas import (
    ChatMessageData,
    SessionMeta,
    SessionPage,
    SessionState,
    SessionSummary,
    Usage,
)
from sessions_app.store import cache as session_cache
from sessions_app.store.rows import (
    after_commit,
    after_messages_write,
    append_locked,
    as_uuid,
    best_effort,
    locked_row,
    message_from_row,
    meta_from_row,
    session_row,
    usage_add,
    write_failed,
)

logger = logging.getLogger("sessions_app.store")

# The metadata a caller may change through ``session_save``.
SAVED_FIELDS = (
    "title",
    "credentials",
    "successful_agent_runs",
    "successful_agent_schedules",
    "prompt_tokens",
    "completion_tokens",
)


def _session_from_db(session_id: uuid.UUID, owner_id: int | None) -> SessionState:
    row = session_row(session_id, owner_id)
    messages = [message_from_row(m) for m in ChatMessage.objects.filter(session_id=session_id)]
    return SessionState(**meta_from_row(row).model_dump(), messages=messages)


def session_get(*, session_id: uuid.UUID | str, owner_id: int | None = None) -> SessionState:
    """A session with all its messages: cache first, then the database (writing back).

    Raises ``SessionNotFound`` for a missing session and for one ``owner_id`` does not own.
    """
    sid = as_uuid(session_id)
    try:
        generation, meta = session_cache.meta_lookup(sid)
    except Exception:
        logger.warning(
            "cache unavailable reading session %s; using the database", sid, exc_info=True
        )
        return _session_from_db(sid, owner_id)
    if meta is None:
        # The generation was read first: if a write commits meanwhile, this entry is stale
        # on arrival and no reader will ever use it.
        meta = meta_from_row(session_row(sid, None))
        best_effort("write", sid, lambda: session_cache.meta_store(meta, generation=generation))
    if owner_id is not None and meta.owner_id != owner_id:
        raise SessionNotFound(sid)
    wanted = range(1, meta.last_sequence + 1)
    try:
        cached = session_cache.messages_lookup(sid, wanted)
    except Exception:
        logger.warning(
            "cache unavailable reading messages of %s; using the database", sid, exc_info=True
        )
        cached = {}
    missing = [seq for seq in wanted if seq not in cached]
    if missing:
        rows = ChatMessage.objects.filter(session_id=sid, sequence__lte=meta.last_sequence)
        if len(missing) < len(wanted):
            rows = rows.filter(sequence__in=missing)
        loaded = [message_from_row(row) for row in rows]
        cached.update((m.sequence, m) for m in loaded if m.sequence is not None)
        best_effort("write", sid, lambda: session_cache.messages_backfill(sid, loaded))
    messages = [cached[seq] for seq in wanted if seq in cached]
    return SessionState(**meta.model_dump(), messages=messages)


def session_check_owner(*, session_id: uuid.UUID | str, owner_id: int) -> uuid.UUID:
    """The session's id when ``owner_id`` owns it (one indexed query, no messages loaded).
    Raises ``SessionNotFound`` otherwise."""
    return session_row(as_uuid(session_id), owner_id).id


def session_list(*, owner_id: int, page: int = 1, page_size: int | None = None) -> SessionPage:
    """One page of a user's sessions, newest update first, with the total; no messages."""
    size = page_size or settings.CHAT_SESSIONS_PAGE_SIZE
    rows = ChatSession.objects.filter(owner_id=owner_id)
    total = rows.count()
    start = (page - 1) * size
    page_rows = rows.order_by("-updated_at", "-id").only(
        "id",
        "title",
        "created_at",
        "updated_at",
        "last_sequence",
        "prompt_tokens",
        "completion_tokens",
    )[start : start + size]
    items = [
        SessionSummary(
            id=row.id,
            title=row.title,
            created_at=row.created_at,
            updated_at=row.updated_at,
            message_count=row.last_sequence,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
        )
        for row in page_rows
    ]
    return SessionPage(items=items, total=total, page=page, page_size=size)


def session_usage(*, session_id: uuid.UUID | str, owner_id: int | None = None) -> list[Usage]:
    """The session's usage records, oldest first."""
    sid = as_uuid(session_id)
    session_row(sid, owner_id)
    records = UsageRecord.objects.filter(session_id=sid).order_by("id")
    return [
        Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens) for r in records
    ]


def _check_session_quota(owner_id: int) -> None:
    """Precondition: in ``transaction.atomic()``; the owner's row stays locked till its end."""
    get_user_model().objects.select_for_update().filter(pk=owner_id).first()
    refusal = limits.sessions_refusal(count=ChatSession.objects.filter(owner_id=owner_id).count())
    if refusal is not None:
        raise refusal


def session_create(
    *,
    owner_id: int,
    title: str = "",
    credentials: dict[str, Any] | None = None,
    messages: Sequence[ChatMessageData] = (),
    limited: bool = False,
) -> SessionState:
    """Create a session (and its first messages): database first, failing loudly.

    ``limited`` (a user asking): raises ``LimitExceeded`` when the owner has
    ``CHAT_USER_MAX_SESSIONS`` already, counted under a lock of the owner's row.
    """
    sid = uuid.uuid4()
    generation: int | None = None
    try:
        generation, _ = session_cache.meta_lookup(sid)
    except Exception:
        logger.warning("cache unavailable creating session %s", sid, exc_info=True)
    try:
        with transaction.atomic():
            if limited:
                _check_session_quota(owner_id)
            row = ChatSession.objects.create(
                id=sid, owner_id=owner_id, title=title, credentials=credentials or {}
            )
            saved = append_locked(row, messages)
    except DatabaseError as exc:
        raise write_failed("the new session", None, exc) from exc
    state = SessionState(**meta_from_row(row).model_dump(), messages=saved)
    if generation is not None:
        meta = meta_from_row(row)
        cached_generation = generation
        after_commit(
            "write", sid, lambda: session_cache.meta_store(meta, generation=cached_generation)
        )
    after_commit("write", sid, lambda: session_cache.messages_store(sid, saved))
    return state


def session_save(*, session: SessionState, owner_id: int | None = None) -> SessionState:
    """Persist a session's new messages (those without a sequence) and changed metadata.

    Saved history is never rewritten. Returns the session as stored.
    """
    sid = session.id
    new = [m for m in session.messages if m.sequence is None]
    try:
        with transaction.atomic():
            row = locked_row(sid, owner_id)
            changed = [f for f in SAVED_FIELDS if getattr(row, f) != getattr(session, f)]
            saved = append_locked(row, new)
            if changed:
                for field in changed:
                    setattr(row, field, getattr(session, field))
                row.updated_at = timezone.now()
                row.save(update_fields=[*changed, "updated_at"])
            after_messages_write(sid, saved)
    except DatabaseError as exc:
        raise write_failed("the session", sid, exc) from exc
    saved_iter = iter(saved)
    messages = [m if m.sequence is not None else next(saved_iter) for m in session.messages]
    return SessionState(**meta_from_row(row).model_dump(), messages=messages)


def usage_record(
    *, session_id: uuid.UUID | str, usage: Usage, model: str = "", owner_id: int | None = None
) -> Usage:
    """Record one model call's token usage and add it to the session's totals."""
    sid = as_uuid(session_id)
    try:
        with transaction.atomic():
            totals = usage_add(locked_row(sid, owner_id), usage, model)
    except DatabaseError as exc:
        raise write_failed("token usage", sid, exc) from exc
    assert totals is not None
    return totals


def session_rename(*, session_id: uuid.UUID | str, owner_id: int, title: str) -> SessionMeta:
    """Change the title only; no message is rewritten."""
    sid = as_uuid(session_id)
    try:
        with transaction.atomic():
            row = locked_row(sid, owner_id)
            row.title = title
            row.updated_at = timezone.now()
            row.save(update_fields=["title", "updated_at"])
            after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    except DatabaseError as exc:
        raise write_failed("the new title", sid, exc) from exc
    return meta_from_row(row)


def session_title_set_if_empty(*, session_id: uuid.UUID | str, title: str) -> bool:
    """Set a generated title unless the session has one (the user may have named it
    meanwhile, or deleted the session). One conditional ``UPDATE``; returns whether the
    title was set."""
    sid = as_uuid(session_id)
    try:
        # One statement, its own transaction (or part of the caller's).
        changed = ChatSession.objects.filter(pk=sid, title="").update(title=title) == 1
    except DatabaseError as exc:
        raise write_failed("the generated title", sid, exc) from exc
    if changed:
        after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    return changed


class ContextSummary(NamedTuple):
    """The summary of a session's oldest messages (``sessions_app.model.context_window``)."""

    text: str
    through_sequence: int | None  # it covers the messages up to this sequence; None: none


def session_context_summary(*, session_id: uuid.UUID | str) -> ContextSummary:
    """The stored context summary: one primary-key query of two columns, never cached."""
    sid = as_uuid(session_id)
    found = (
        ChatSession.objects.filter(pk=sid)
        .values_list("context_summary", "context_summary_through")
        .first()
    )
    if found is None:
        raise SessionNotFound(sid)
    return ContextSummary(*found)


def session_context_summary_set(
    *, session_id: uuid.UUID | str, summary: str, through_sequence: int | None
) -> None:
    """Store the summary of the messages up to ``through_sequence`` (replacing the old one)."""
    sid = as_uuid(session_id)
    try:
        with transaction.atomic():
            row = locked_row(sid, None)
            row.context_summary = summary
            row.context_summary_through = through_sequence
            row.save(update_fields=["context_summary", "context_summary_through"])
            after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    except DatabaseError as exc:
        raise write_failed("the context summary", sid, exc) from exc


def session_delete(*, session_id: uuid.UUID | str, owner_id: int) -> None:
    """Delete a session the user owns (messages and operations go with it)."""
    sid = as_uuid(session_id)
    try:
        with transaction.atomic():
            row = locked_row(sid, owner_id)
            last = row.last_sequence
            row.delete()
            after_commit(
                "purge", sid, lambda: session_cache.session_forget(sid, last_sequence=last)
            )
    except DatabaseError as exc:
        raise write_failed("the deletion", sid, exc) from exc


def session_cache_invalidate(*, session_id: uuid.UUID | str) -> None:
    """Drop everything cached about a session. Best effort: failures are only logged."""
    sid = as_uuid(session_id)
    last = ChatSession.objects.filter(pk=sid).values_list("last_sequence", flat=True).first()
    best_effort("purge", sid, lambda: session_cache.session_forget(sid, last_sequence=last or 0))


def event_floor_get(*, session_id: uuid.UUID | str) -> int:
    """The session's event floor: the highest event seq saved in the database; 0 only for a
    session with no message (nor a missing one). A session with messages but no saved floor
    had events whose floor was never written (Redis was down, say): it counts as 1, so a
    lost counter restarts past them and old cursors get a snapshot."""
    sid = as_uuid(session_id)
    row = ChatSession.objects.filter(pk=sid).values_list("last_event_seq", "last_sequence").first()
    if row is None:
        return 0
    floor, messages = row
    return max(floor, 1 if messages else 0)


def event_floor_raise(*, session_id: uuid.UUID | str, seq: int) -> None:
    """Raise the session's event floor to ``seq`` (never lowers it). No cache entry depends on it
    being current, so the cache is left alone."""
    sid = as_uuid(session_id)
    ChatSession.objects.filter(pk=sid, last_event_seq__lt=seq).update(last_event_seq=seq)


def session_owner(*, session_id: uuid.UUID | str) -> int:
    """The owner's id of a session. Raises ``SessionNotFound``."""
    sid = as_uuid(session_id)
    owner_id = ChatSession.objects.filter(pk=sid).values_list("owner_id", flat=True).first()
    if owner_id is None:
        raise SessionNotFound(sid)
    return owner_id
