"""What a client missed: the events after its cursor, or a snapshot when the log cannot say.

``feed_since`` is the one answer to "what happened after ``seq``": the websocket's
``resume`` and gap repair and the JSON API's ``events/`` both use it.

A snapshot is a session's whole state at a stated ``seq``. The head ``seq`` is read first,
then the database. Every event up to the head was published after its change committed, so
the database read already reflects it; events after the head may be reflected too, and the
client re-applies them harmlessly (events set state). Text streamed since the last
checkpoint is not in the database yet: it is taken from the deltas the log still holds.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

from sessions_app import events, operations, store
from sessions_app.events import frames
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model.client import model_info
from sessions_app.schemas import ChatMessageData
from sessions_app.store import leases


def apply_text_delta(content: str, offset: int, text: str) -> str | None:
    """``content`` with a delta applied; ``None`` when the delta leaves a hole (a gap)."""
    if offset > len(content):
        return None
    end = offset + len(text)
    if end <= len(content):
        return content  # already applied
    return content + text[len(content) - offset :]


def _with_deltas(messages: list[ChatMessageData], log: list[events.Event], head: int) -> None:
    streaming = {m.sequence: m for m in messages if m.status == "streaming"}
    if not streaming:
        return
    for event in log:
        if event["seq"] > head or event.get("type") != "text_delta":
            continue
        message = streaming.get(event.get("message_sequence"))
        if message is None:
            continue
        updated = apply_text_delta(message.content or "", event["offset"], event["text"])
        if updated is not None:
            message.content = updated


async def snapshot_build(session_id: uuid.UUID, owner_id: int) -> frames.Snapshot:
    """The ``snapshot`` frame of a session. Raises ``SessionNotFound``."""
    head = await events.event_head(session_id)
    state = await db_sync_to_async(store.session_get)(session_id=session_id, owner_id=owner_id)
    messages = [m.model_copy() for m in state.messages]
    _with_deltas(messages, await events.events_recent(session_id), head)
    ops = await db_sync_to_async(operations.operations_of)(session_id=session_id)
    live_turn = await db_sync_to_async(leases.turn_lease_live)(session_id=session_id)
    info = model_info()
    return frames.Snapshot(
        seq=head,
        session=frames.SnapshotSession(
            id=str(state.id),
            title=state.title,
            usage=state.usage,
            message_count=state.last_sequence,
        ),
        messages=[events.message_out(m) for m in messages],
        running=live_turn is not None,
        turn_id=str(live_turn) if live_turn else None,
        operations=[events.operation_out(op) for op in ops],
        model=frames.ModelOut(name=info.name, offline_demo=info.offline_demo),
    )


class Feed(NamedTuple):
    """What a client missed: ``events`` after its cursor in order, or else a ``snapshot``."""

    events: list[events.Event] | None
    snapshot: frames.Snapshot | None


async def feed_since(session_id: uuid.UUID, owner_id: int, after: int | None) -> Feed:
    """The events after ``after``, or a snapshot when there is no cursor or the log lost
    some of what followed it. Raises ``SessionNotFound``."""
    missed = None if after is None else await events.events_since(session_id, after)
    if missed is not None:
        return Feed(missed, None)
    return Feed(None, await snapshot_build(session_id, owner_id))
