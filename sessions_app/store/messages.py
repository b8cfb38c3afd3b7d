"""The session store: the only code that reads and writes chat sessions and their messages.

The database is the source of truth. The cache (``session_cache``) is an optimisation:
reads fall back to the database when it fails or holds garbage, writes touch it only after
the database committed, and a cache failure never fails a call.

Ownership: every function taking ``owner_id`` treats another user's session exactly like a
missing one (``SessionNotFound``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from sessions_app import limits
from sessions_app.errors import SessionNotFound, StoreWriteError
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

logger = logging.getLogger(__name__)

# The metadata a caller may change through ``session_save``.
SAVED_FIELDS = (
    "title",
    "credentials",
    "successful_agent_runs",
    "successful_agent_schedules",
    "prompt_tokens",
    "completion_tokens",
)
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


# --- conversions -----------------------------------------------------------------------


def _meta_from_row(row: ChatSession) -> SessionMeta:
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


def _message_from_row(row: ChatMessage) -> ChatMessageData:
    data = {field: getattr(row, field) for field in MESSAGE_FIELDS}
    return ChatMessageData(
        **data, sequence=row.sequence, created_at=row.created_at, updated_at=row.updated_at
    )


def _as_uuid(session_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(session_id, uuid.UUID):
        return session_id
    try:
        return uuid.UUID(str(session_id))
    except ValueError:
        raise SessionNotFound(session_id) from None


def _best_effort(action: str, session_id: uuid.UUID, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        logger.warning("cache %s failed for session %s", action, session_id, exc_info=True)


def _after_commit(action: str, session_id: uuid.UUID, fn: Callable[[], Any]) -> None:
    transaction.on_commit(lambda: _best_effort(action, session_id, fn))


def _write_failed(what: str, session_id: uuid.UUID | None, exc: DatabaseError) -> StoreWriteError:
    where = f" of session {session_id}" if session_id else ""
    logger.error("database write failed: %s%s: %s", what, where, exc)
    return StoreWriteError(f"Could not save {what}{where}: the database refused the write.")


# --- reads -----------------------------------------------------------------------------


def _session_from_db(session_id: uuid.UUID, owner_id: int | None) -> SessionState:
    row = _session_row(session_id, owner_id)
    messages = [_message_from_row(m) for m in ChatMessage.objects.filter(session_id=session_id)]
    return SessionState(**_meta_from_row(row).model_dump(), messages=messages)


def _session_row(session_id: uuid.UUID, owner_id: int | None) -> ChatSession:
    rows = ChatSession.objects.filter(pk=session_id)
    if owner_id is not None:
        rows = rows.filter(owner_id=owner_id)
    row = rows.first()
    if row is None:
        raise SessionNotFound(session_id)
    return row


def session_get(*, session_id: uuid.UUID | str, owner_id: int | None = None) -> SessionState:
    """A session with all its messages: cache first, then the database (writing back).

    Raises ``SessionNotFound`` for a missing session and for one ``owner_id`` does not own.
    """
    sid = _as_uuid(session_id)
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
        meta = _meta_from_row(_session_row(sid, None))
        _best_effort("write", sid, lambda: session_cache.meta_store(meta, generation=generation))
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
        loaded = [_message_from_row(row) for row in rows]
        cached.update((m.sequence, m) for m in loaded if m.sequence is not None)
        _best_effort("write", sid, lambda: session_cache.messages_backfill(sid, loaded))
    messages = [cached[seq] for seq in wanted if seq in cached]
    return SessionState(**meta.model_dump(), messages=messages)


def session_check_owner(*, session_id: uuid.UUID | str, owner_id: int) -> uuid.UUID:
    """The session's id when ``owner_id`` owns it (one indexed query, no messages loaded).
    Raises ``SessionNotFound`` otherwise."""
    return _session_row(_as_uuid(session_id), owner_id).id


def message_by_client_id(
    *, session_id: uuid.UUID | str, owner_id: int, client_message_id: str
) -> ChatMessageData | None:
    """The message a client sent with ``client_message_id``, if stored (a retried send)."""
    sid = session_check_owner(session_id=session_id, owner_id=owner_id)
    row = ChatMessage.objects.filter(session_id=sid, client_message_id=client_message_id).first()
    return _message_from_row(row) if row is not None else None


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
    sid = _as_uuid(session_id)
    _session_row(sid, owner_id)
    records = UsageRecord.objects.filter(session_id=sid).order_by("id")
    return [
        Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens) for r in records
    ]


# --- writes ----------------------------------------------------------------------------


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
            saved = _append_locked(row, messages)
    except DatabaseError as exc:
        raise _write_failed("the new session", None, exc) from exc
    state = SessionState(**_meta_from_row(row).model_dump(), messages=saved)
    if generation is not None:
        meta = _meta_from_row(row)
        cached_generation = generation
        _after_commit(
            "write", sid, lambda: session_cache.meta_store(meta, generation=cached_generation)
        )
    _after_commit("write", sid, lambda: session_cache.messages_store(sid, saved))
    return state


def _append_locked(row: ChatSession, messages: Sequence[ChatMessageData]) -> list[ChatMessageData]:
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
    return [_message_from_row(r) for r in new_rows]


def _locked_row(session_id: uuid.UUID, owner_id: int | None) -> ChatSession:
    rows = ChatSession.objects.select_for_update().filter(pk=session_id)
    if owner_id is not None:
        rows = rows.filter(owner_id=owner_id)
    row = rows.first()
    if row is None:
        raise SessionNotFound(session_id)
    return row


def _after_messages_write(sid: uuid.UUID, saved: list[ChatMessageData]) -> None:
    # The bump first: if storing the entries fails, the bumped generation still sends
    # readers to the database for the new last sequence, and they back-fill the missing
    # entries themselves.
    _after_commit("update", sid, lambda: session_cache.messages_written(sid, saved))


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
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic():
            row = _locked_row(sid, owner_id)
            saved = _append_locked(row, messages)
            _after_messages_write(sid, saved)
    except DatabaseError as exc:
        raise _write_failed(f"{len(messages)} message(s)", sid, exc) from exc
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
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic(savepoint=False):
            row = _locked_row(sid, owner_id)
            if message.client_message_id:
                existing = ChatMessage.objects.filter(
                    session_id=sid, client_message_id=message.client_message_id
                ).first()
                if existing is not None:
                    return AppendedOnce(_message_from_row(existing), [], False)
            saved = _append_locked(row, [message, *followers])
            _after_messages_write(sid, saved)
    except DatabaseError as exc:
        raise _write_failed("the message", sid, exc) from exc
    return AppendedOnce(saved[0], saved[1:], True)


def session_save(*, session: SessionState, owner_id: int | None = None) -> SessionState:
    """Persist a session's new messages (those without a sequence) and changed metadata.

    Saved history is never rewritten. Returns the session as stored.
    """
    sid = session.id
    new = [m for m in session.messages if m.sequence is None]
    try:
        with transaction.atomic():
            row = _locked_row(sid, owner_id)
            changed = [f for f in SAVED_FIELDS if getattr(row, f) != getattr(session, f)]
            saved = _append_locked(row, new)
            if changed:
                for field in changed:
                    setattr(row, field, getattr(session, field))
                row.updated_at = timezone.now()
                row.save(update_fields=[*changed, "updated_at"])
            _after_messages_write(sid, saved)
    except DatabaseError as exc:
        raise _write_failed("the session", sid, exc) from exc
    saved_iter = iter(saved)
    messages = [m if m.sequence is not None else next(saved_iter) for m in session.messages]
    return SessionState(**_meta_from_row(row).model_dump(), messages=messages)


def _check_updatable(changes: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a change to a field that is not ``MESSAGE_UPDATABLE``."""
    unknown = set(changes) - set(MESSAGE_UPDATABLE)
    if unknown:
        raise ValueError(f"message fields not updatable: {', '.join(sorted(unknown))}")


def _message_change(sid: uuid.UUID, sequence: int, changes: dict[str, Any]) -> ChatMessageData:
    """Change a message in place. Precondition: in ``transaction.atomic()`` with the session
    row locked; the caller updates the session row's ``updated_at``."""
    _check_updatable(changes)
    row = ChatMessage.objects.filter(session_id=sid, sequence=sequence).first()
    if row is None:
        raise LookupError(f"session {sid} has no message {sequence}")
    for field, value in changes.items():
        setattr(row, field, value)
    row.updated_at = timezone.now()
    updated = _message_from_row(row)  # validates the changes before they are saved
    row.save(update_fields=[*changes, "updated_at"])
    # Drop the entry before commit: a reader that misses it now back-fills the old row,
    # and the set after commit overwrites that.
    _forget_message(sid, sequence)
    _after_messages_write(sid, [updated])
    return updated


def message_update(
    *,
    session_id: uuid.UUID | str,
    sequence: int,
    changes: dict[str, Any],
    owner_id: int | None = None,
) -> ChatMessageData:
    """Change a saved message in place (a checkpointed stream, a finished tool result)."""
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic():
            _locked_row(sid, owner_id)
            updated = _message_change(sid, sequence, changes)
            ChatSession.objects.filter(pk=sid).update(updated_at=updated.updated_at)
    except DatabaseError as exc:
        raise _write_failed(f"message {sequence}", sid, exc) from exc
    return updated


def message_complete(
    *,
    session_id: uuid.UUID | str,
    sequence: int,
    changes: dict[str, Any],
    usage: Usage | None,
    model: str = "",
) -> tuple[ChatMessageData, Usage | None]:
    """The last write of a model call: its message changed in place and its token usage
    recorded, in one transaction. Returns the message and the session's usage totals
    (``None`` without ``usage``). On PostgreSQL one round trip (``store_pg``)."""
    sid = _as_uuid(session_id)
    from sessions_app.store import turn_writes  # the store's other half, which imports this one

    if turn_writes.enabled():
        return turn_writes.message_complete(
            session_id=sid, sequence=sequence, changes=changes, usage=usage, model=model
        )
    try:
        with transaction.atomic():
            row = _locked_row(sid, None)
            updated = _message_change(sid, sequence, changes)
            totals = _usage_add(row, usage, model, updated_at=updated.updated_at)
    except DatabaseError as exc:
        raise _write_failed(f"message {sequence}", sid, exc) from exc
    return updated, totals


def message_checkpoint(*, session_id: uuid.UUID | str, sequence: int, content: str) -> bool:
    """Write the text streamed so far into a message that is still streaming.

    The light write of a checkpoint, made every ``CHAT_CHECKPOINT_MS`` of every streaming
    answer: one ``UPDATE`` (no lock on the session row, ``ChatSession.updated_at`` left for
    the final write), then the message's cache entry dropped so readers load the row. A
    reader that loaded the row just before may put the previous text back in the cache
    until the next checkpoint; snapshots fill streaming text from the event log anyway.
    Returns ``False`` when the message no longer streams (it was completed meanwhile).
    """
    sid = _as_uuid(session_id)
    try:
        written = ChatMessage.objects.filter(
            session_id=sid, sequence=sequence, status="streaming"
        ).update(content=content, updated_at=timezone.now())
    except DatabaseError as exc:
        raise _write_failed(f"message {sequence}", sid, exc) from exc
    _best_effort("delete", sid, lambda: session_cache.message_forget(sid, sequence))
    return written == 1


def _usage_add(
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
            _after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    if changes:
        ChatSession.objects.filter(pk=sid).update(**changes)
    return totals


def usage_record(
    *, session_id: uuid.UUID | str, usage: Usage, model: str = "", owner_id: int | None = None
) -> Usage:
    """Record one model call's token usage and add it to the session's totals."""
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic():
            totals = _usage_add(_locked_row(sid, owner_id), usage, model)
    except DatabaseError as exc:
        raise _write_failed("token usage", sid, exc) from exc
    assert totals is not None
    return totals


def session_rename(*, session_id: uuid.UUID | str, owner_id: int, title: str) -> SessionMeta:
    """Change the title only; no message is rewritten."""
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic():
            row = _locked_row(sid, owner_id)
            row.title = title
            row.updated_at = timezone.now()
            row.save(update_fields=["title", "updated_at"])
            _after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    except DatabaseError as exc:
        raise _write_failed("the new title", sid, exc) from exc
    return _meta_from_row(row)


def session_title_set_if_empty(*, session_id: uuid.UUID | str, title: str) -> bool:
    """Set a generated title unless the session has one (the user may have named it
    meanwhile, or deleted the session). One conditional ``UPDATE``; returns whether the
    title was set."""
    sid = _as_uuid(session_id)
    try:
        # One statement, its own transaction (or part of the caller's).
        changed = ChatSession.objects.filter(pk=sid, title="").update(title=title) == 1
    except DatabaseError as exc:
        raise _write_failed("the generated title", sid, exc) from exc
    if changed:
        _after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    return changed


class ContextSummary(NamedTuple):
    """The summary of a session's oldest messages (``sessions_app.model.context_window``)."""

    text: str
    through_sequence: int | None  # it covers the messages up to this sequence; None: none


def session_context_summary(*, session_id: uuid.UUID | str) -> ContextSummary:
    """The stored context summary: one primary-key query of two columns, never cached."""
    sid = _as_uuid(session_id)
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
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic():
            row = _locked_row(sid, None)
            row.context_summary = summary
            row.context_summary_through = through_sequence
            row.save(update_fields=["context_summary", "context_summary_through"])
            _after_commit("update", sid, lambda: session_cache.generation_bump(sid))
    except DatabaseError as exc:
        raise _write_failed("the context summary", sid, exc) from exc


def session_delete(*, session_id: uuid.UUID | str, owner_id: int) -> None:
    """Delete a session the user owns (messages and operations go with it)."""
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic():
            row = _locked_row(sid, owner_id)
            last = row.last_sequence
            row.delete()
            _after_commit(
                "purge", sid, lambda: session_cache.session_forget(sid, last_sequence=last)
            )
    except DatabaseError as exc:
        raise _write_failed("the deletion", sid, exc) from exc


def session_cache_invalidate(*, session_id: uuid.UUID | str) -> None:
    """Drop everything cached about a session. Best effort: failures are only logged."""
    sid = _as_uuid(session_id)
    last = ChatSession.objects.filter(pk=sid).values_list("last_sequence", flat=True).first()
    _best_effort("purge", sid, lambda: session_cache.session_forget(sid, last_sequence=last or 0))


# --- event sequence floor (sessions_app.events.log) ------------------------------------------


def event_floor_get(*, session_id: uuid.UUID | str) -> int:
    """The session's event floor: the highest event seq saved in the database (0 for a
    missing session, or one that never had an event)."""
    sid = _as_uuid(session_id)
    last = ChatSession.objects.filter(pk=sid).values_list("last_event_seq", flat=True).first()
    return last or 0


def event_floor_raise(*, session_id: uuid.UUID | str, seq: int) -> None:
    """Raise the session's event floor to ``seq`` (never lowers it). No cache entry depends on it
    being current, so the cache is left alone."""
    sid = _as_uuid(session_id)
    ChatSession.objects.filter(pk=sid, last_event_seq__lt=seq).update(last_event_seq=seq)


# --- message search (the search_history tool) -------------------------------------------

# Appended after the module's own imports to keep this block self-contained.
from sessions_app.schemas import MessageSearchHit  # noqa: E402

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


def session_owner(*, session_id: uuid.UUID | str) -> int:
    """The owner's id of a session. Raises ``SessionNotFound``."""
    sid = _as_uuid(session_id)
    owner_id = ChatSession.objects.filter(pk=sid).values_list("owner_id", flat=True).first()
    if owner_id is None:
        raise SessionNotFound(sid)
    return owner_id


def message_pk(*, session_id: uuid.UUID | str, sequence: int) -> int:
    """The primary key of a session's message (to link an operation to it)."""
    sid = _as_uuid(session_id)
    pk = (
        ChatMessage.objects.filter(session_id=sid, sequence=sequence)
        .values_list("pk", flat=True)
        .first()
    )
    if pk is None:
        raise LookupError(f"session {sid} has no message {sequence}")
    return pk


def _forget_message(sid: uuid.UUID, sequence: int) -> None:
    _best_effort("delete", sid, lambda: session_cache.message_forget(sid, sequence))


def messages_interrupt_unfinished(
    *, session_id: uuid.UUID | str, tool_content: str
) -> list[ChatMessageData]:
    """Mark what a dead turn left unfinished: streaming text is kept and marked
    ``interrupted``; pending tool calls that are not operations get ``tool_content`` (the
    model needs an answer to every call). Operations' messages are left to their sweep."""
    sid = _as_uuid(session_id)
    try:
        with transaction.atomic():
            _locked_row(sid, None)
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
            changed = [_message_from_row(row) for row in rows]
            if changed:
                for row in rows:
                    _forget_message(sid, row.sequence)
                _after_messages_write(sid, changed)
    except DatabaseError as exc:
        raise _write_failed("the interrupted messages", sid, exc) from exc
    return changed
