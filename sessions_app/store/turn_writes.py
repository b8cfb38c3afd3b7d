"""The two hottest writes of a turn, each on two paths: one PL/pgSQL call on PostgreSQL, the
ORM elsewhere.

``turn_begin`` is the work before a turn starts: the owner's row locked, the lease taken,
the running turns counted, the session's row locked, the client message id looked up, the
messages inserted, the session row moved on. ``message_complete`` is a model call's last
write: the message changed in place, its usage inserted and added to the session's totals.
On PostgreSQL each is one call of a function of migration 0004 (``chat_turn_begin_v1``,
``chat_message_complete_v2``) that takes the same locks in the same order and makes the
same checks, each statement seeing what committed before it: one round trip, its own
transaction, because the process's database calls share one thread (``infra.db``) that
waits for every round trip. Elsewhere (SQLite, or inside a caller's transaction, whose
all-or-nothing and after-commit cache writes the ORM keeps) the ORM does the same work in
one transaction. tests/store/test_turn_writes.py checks that both paths give the same
outcomes, and that the functions' column lists match ``MESSAGE_FIELDS``.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from sessions_app import limits
from sessions_app.errors import LeaseLost, SessionNotFound
from sessions_app.schemas import ChatMessageData, Usage
from sessions_app.store import leases
from sessions_app.store.messages import message_append_once, message_by_client_id
from sessions_app.store.rows import (
    MESSAGE_FIELDS,
    after_messages_write,
    as_uuid,
    check_updatable,
    forget_message,
    locked_row,
    message_change,
    usage_add,
    write_failed,
)


def pg_functions_usable() -> bool:
    """Whether to call the PL/pgSQL functions: the default database is PostgreSQL (which
    has them) and no transaction of the caller's is open."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


class TurnBegun(NamedTuple):
    """``turn_begin``'s answer: ``outcome`` is ``created`` (the lease is taken and
    ``messages`` are stored), ``duplicate`` (the client message id is stored already:
    nothing changed), ``busy`` or ``stale`` (a live or a dead turn holds the lease)."""

    outcome: str
    messages: list[ChatMessageData]


def turn_begin(
    *,
    session_id: uuid.UUID,
    owner_id: int,
    turn_id: uuid.UUID,
    process: str,
    messages: list[ChatMessageData],
) -> TurnBegun:
    """Take the session's turn lease for ``turn_id`` (owned by ``process``) and store
    ``messages`` after the last one, unless the first one's client message id is stored
    already (then ``duplicate``, with that stored message, and the lease is not kept).

    Raises ``SessionNotFound`` (missing, or not ``owner_id``'s), ``LimitExceeded`` (the
    user's running turns) and ``StoreWriteError``, holding nothing.
    """
    begin = _turn_begin_pg if pg_functions_usable() else _turn_begin_orm
    begun = begin(
        session_id=session_id,
        owner_id=owner_id,
        turn_id=turn_id,
        process=process,
        messages=messages,
    )
    if begun.outcome == "duplicate" and not begun.messages:
        existing = message_by_client_id(
            session_id=session_id,
            owner_id=owner_id,
            client_message_id=messages[0].client_message_id or "",
        )
        assert existing is not None  # stored messages are never deleted alone
        return TurnBegun("duplicate", [existing])
    return begun


def _turn_begin_orm(
    *,
    session_id: uuid.UUID,
    owner_id: int,
    turn_id: uuid.UUID,
    process: str,
    messages: list[ChatMessageData],
) -> TurnBegun:
    with transaction.atomic():
        taken = leases.turn_lease_acquire(
            session_id=session_id,
            turn_id=turn_id,
            owner=process,
            owner_id=owner_id,
            take_stale=False,
        )
        if not taken:
            stale = leases.turn_leases_stale(session_id=session_id)
            return TurnBegun("stale" if stale else "busy", [])
        first, *followers = messages
        stored = message_append_once(
            session_id=session_id, owner_id=owner_id, message=first, followers=followers
        )
        if not stored.created:
            transaction.set_rollback(True)  # a retried send: the lease goes back
            return TurnBegun("duplicate", [stored.message])
    return TurnBegun("created", [stored.message, *stored.followers])


def _turn_begin_pg(
    *,
    session_id: uuid.UUID,
    owner_id: int,
    turn_id: uuid.UUID,
    process: str,
    messages: list[ChatMessageData],
) -> TurnBegun:
    """One statement, its own transaction; its cache writes follow the commit at once."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.CHAT_LEASE_SECONDS)
    payload = json.dumps([m.model_dump(mode="json", include=set(MESSAGE_FIELDS)) for m in messages])
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT outcome, first_sequence, running FROM chat_turn_begin_v1("
                "%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                [
                    session_id,
                    owner_id,
                    turn_id,
                    process,
                    now,
                    stale_before,
                    settings.CHAT_USER_MAX_RUNNING_TURNS,
                    messages[0].client_message_id if messages else None,
                    payload,
                ],
            )
            outcome, first_sequence, running = cursor.fetchone()
    except DatabaseError as exc:
        raise write_failed("the message", session_id, exc) from exc
    if outcome == "missing":
        raise SessionNotFound(session_id)
    if outcome == "limited":
        refusal = limits.running_turns_refusal(running=running)
        assert refusal is not None  # the function counted against the same limit
        raise refusal
    if outcome != "created":
        return TurnBegun(outcome, [])
    saved = [
        m.model_copy(update={"sequence": first_sequence + i, "created_at": now, "updated_at": now})
        for i, m in enumerate(messages)
    ]
    after_messages_write(session_id, saved)  # autocommit: runs now, after the commit
    return TurnBegun(outcome, saved)


def message_complete(
    *,
    session_id: uuid.UUID | str,
    sequence: int,
    changes: dict[str, Any],
    usage: Usage | None,
    model: str = "",
    turn_id: uuid.UUID | None = None,
) -> tuple[ChatMessageData, Usage | None]:
    """The last write of a model call: its message changed in place and its token usage
    recorded, in one transaction. Returns the message and the session's usage totals
    (``None`` without ``usage``). With ``turn_id``, only while that turn holds the
    session's lease, checked under the session row's lock.

    Raises ``LeaseLost`` (nothing written), ``ValueError`` for a change it refuses (before
    anything is written), ``SessionNotFound``, ``LookupError`` (no such message) and
    ``StoreWriteError``.
    """
    sid = as_uuid(session_id)
    complete = _message_complete_pg if pg_functions_usable() else _message_complete_orm
    return complete(
        session_id=sid,
        sequence=sequence,
        changes=changes,
        usage=usage,
        model=model,
        turn_id=turn_id,
    )


def _message_complete_orm(
    *,
    session_id: uuid.UUID,
    sequence: int,
    changes: dict[str, Any],
    usage: Usage | None,
    model: str,
    turn_id: uuid.UUID | None,
) -> tuple[ChatMessageData, Usage | None]:
    try:
        with transaction.atomic():
            row = locked_row(session_id, None)
            if turn_id is not None and row.turn_id != turn_id:
                raise LeaseLost(f"turn {turn_id} no longer holds session {session_id}")
            updated = message_change(session_id, sequence, changes)
            totals = usage_add(row, usage, model, updated_at=updated.updated_at)
    except DatabaseError as exc:
        raise write_failed(f"message {sequence}", session_id, exc) from exc
    return updated, totals


def _message_complete_pg(
    *,
    session_id: uuid.UUID,
    sequence: int,
    changes: dict[str, Any],
    usage: Usage | None,
    model: str,
    turn_id: uuid.UUID | None,
) -> tuple[ChatMessageData, Usage | None]:
    check_updatable(changes)
    # The changed fields as the message would hold them (a ValidationError is a ValueError).
    checked = ChatMessageData.model_validate({"role": "user", **changes})
    payload = json.dumps(checked.model_dump(mode="json", include=set(changes)))
    now = timezone.now()
    # Dropped before the write, as on the ORM path: a reader that misses the entry now
    # back-fills the old row, and the write after the commit overwrites that.
    forget_message(session_id, sequence)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT * FROM chat_message_complete_v2(%s, %s, %s::jsonb, %s, %s, %s, %s, %s)",
                [
                    session_id,
                    sequence,
                    payload,
                    now,
                    model,
                    usage.prompt_tokens if usage is not None else None,
                    usage.completion_tokens if usage is not None else None,
                    turn_id,
                ],
            )
            row = cursor.fetchone()
    except DatabaseError as exc:
        raise write_failed(f"message {sequence}", session_id, exc) from exc
    outcome, *fields, created_at, prompt_tokens, completion_tokens = row
    if outcome == "missing":
        raise SessionNotFound(session_id)
    if outcome == "lease_lost":
        raise LeaseLost(f"turn {turn_id} no longer holds session {session_id}")
    if outcome == "no_message":
        raise LookupError(f"session {session_id} has no message {sequence}")
    data = dict(zip(MESSAGE_FIELDS, fields, strict=True))
    for key in ("tool_calls", "function_call"):
        if isinstance(data[key], str):  # Django loads jsonb as text, for JSONField to parse
            data[key] = json.loads(data[key])
    updated = ChatMessageData(**data, sequence=sequence, created_at=created_at, updated_at=now)
    after_messages_write(session_id, [updated])  # autocommit: runs now
    totals = None
    if usage is not None:
        totals = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return updated, totals
