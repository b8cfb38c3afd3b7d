"""The store's PostgreSQL half: the two hottest writes of a turn in one round trip each.

Before a turn starts, the ORM path (``sessions_app.turns.start._begin``) makes about nine round
trips to the database in one transaction: the owner's row locked, the lease taken, the
running turns counted, the session's row locked, the client message id looked up, the
messages inserted, the session row moved on, ``BEGIN`` and ``COMMIT``. Each of them holds
the one database thread of the process (``sessions_app.infra.db``) while it waits, so under load
every turn waited in that thread's queue behind the others (docs/performance.md). On
PostgreSQL the same work is one call of ``chat_turn_begin_v1`` (migration 0004), a
PL/pgSQL function that takes the same locks in the same order and makes the same checks,
each statement seeing what committed before it: one round trip, its own transaction. A
model call's last write (``store.message_complete``: the session row locked, the message
read, changed and saved, its usage inserted and added to the totals) is one call of
``chat_message_complete_v1`` in the same way.

Other databases (the embedded SQLite) keep the ORM path; both run the same tests.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from sessions_app import limits
from sessions_app.errors import SessionNotFound
from sessions_app.schemas import ChatMessageData, Usage
from sessions_app.store import messages as store


def enabled() -> bool:
    """Whether to take the paths of this module: the default database has their functions
    (PostgreSQL) and no transaction of the caller's is open (inside one, the ORM paths
    keep its all-or-nothing and its after-commit cache writes)."""
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
    """Take the session's turn lease and store ``messages`` after the last one, unless the
    first one's client message id is stored already; one statement, its own transaction.

    Precondition: ``enabled()`` (its cache writes follow the commit at once). Raises
    ``SessionNotFound`` (missing, or not ``owner_id``'s), ``LimitExceeded`` (the user's
    running turns) and ``StoreWriteError``.
    """
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.CHAT_LEASE_SECONDS)
    payload = json.dumps(
        [m.model_dump(mode="json", include=set(store.MESSAGE_FIELDS)) for m in messages]
    )
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
        raise store._write_failed("the message", session_id, exc) from exc
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
    store._after_messages_write(session_id, saved)  # autocommit: runs now, after the commit
    return TurnBegun(outcome, saved)


def message_complete(
    *,
    session_id: uuid.UUID,
    sequence: int,
    changes: dict[str, Any],
    usage: Usage | None,
    model: str,
) -> tuple[ChatMessageData, Usage | None]:
    """``store.message_complete`` in one statement (``chat_message_complete_v1``): the
    message changed in place, its usage recorded and added to the session's totals.

    Precondition: ``enabled()``. Raises what the ORM path
    raises: ``ValueError`` for a change it refuses (before anything is written),
    ``SessionNotFound``, ``LookupError`` (no such message) and ``StoreWriteError``.
    """
    store._check_updatable(changes)
    # The changed fields as the message would hold them (a ValidationError is a ValueError).
    checked = ChatMessageData.model_validate({"role": "user", **changes})
    payload = json.dumps(checked.model_dump(mode="json", include=set(changes)))
    now = timezone.now()
    # Dropped before the write, as on the ORM path: a reader that misses the entry now
    # back-fills the old row, and the write after the commit overwrites that.
    store._forget_message(session_id, sequence)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT * FROM chat_message_complete_v1(%s, %s, %s::jsonb, %s, %s, %s, %s)",
                [
                    session_id,
                    sequence,
                    payload,
                    now,
                    model,
                    usage.prompt_tokens if usage is not None else None,
                    usage.completion_tokens if usage is not None else None,
                ],
            )
            row = cursor.fetchone()
    except DatabaseError as exc:
        raise store._write_failed(f"message {sequence}", session_id, exc) from exc
    outcome, *fields, created_at, prompt_tokens, completion_tokens = row
    if outcome == "missing":
        raise SessionNotFound(session_id)
    if outcome == "no_message":
        raise LookupError(f"session {session_id} has no message {sequence}")
    data = dict(zip(store.MESSAGE_FIELDS, fields, strict=True))
    for key in ("tool_calls", "function_call"):
        if isinstance(data[key], str):  # Django loads jsonb as text, for JSONField to parse
            data[key] = json.loads(data[key])
    updated = ChatMessageData(**data, sequence=sequence, created_at=created_at, updated_at=now)
    store._after_messages_write(session_id, [updated])  # autocommit: runs now
    totals = None
    if usage is not None:
        totals = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return updated, totals
