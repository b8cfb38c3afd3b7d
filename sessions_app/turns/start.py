"""Starting a turn: the user's message stored once, the lease taken, the first model call.

One turn = a user message (or a finished background operation) answered by the model, with
as many tool rounds as it needs. It runs as an ``asyncio`` task owned by the server process,
never by a socket: closing the socket that started it does not stop it; only ``cancel`` does
(or a shutdown). It holds its session's turn lease (``store.leases``) while it runs, so at
most one turn runs per session across all processes.

Double-send policy: one turn per session at a time. A ``send`` while one runs is refused
with ``turn_in_progress``; a retried ``send`` with the same client message id is
acknowledged as a duplicate and starts nothing. The user's limits (messages a minute,
running turns across sessions: ``sessions_app.limits``) are checked before anything starts.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from sessions_app import events, limits, process, store
from sessions_app.errors import Refused
from sessions_app.events import frames
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import context_window
from sessions_app.schemas import ChatMessageData
from sessions_app.tools.registry import tools_openai_schemas
from sessions_app.turns.recovery import turn_recover_stale
from sessions_app.turns.registry import Turn, turn_running
from sessions_app.turns.runner import turn_launch
from sessions_app.turns.text_stream import FirstCall, ModelCall, empty_reply

logger = logging.getLogger(__name__)


class TurnInProgress(Refused):
    def __init__(self) -> None:
        super().__init__(
            "turn_in_progress", "A reply is still being written in this session; wait or cancel it."
        )


class ServerDraining(Refused):
    def __init__(self) -> None:
        super().__init__(
            "server_shutting_down",
            "This server is restarting; reconnect and send again in a moment.",
            retry_after=1,
        )


@dataclass(frozen=True)
class TurnStart:
    """What ``turn_start`` did: started a turn, or recognised a retried send."""

    message: ChatMessageData
    duplicate: bool
    turn_id: uuid.UUID | None


@dataclass(frozen=True)
class _Prepared:
    """A turn's first model call, prepared from the history before the turn starts."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    user_sequence: int  # the user's message's sequence the messages were made for
    event_floor: int  # the session's stored event seq floor when the history was read


async def turn_start(
    *, session_id: uuid.UUID, owner_id: int, content: str, client_message_id: str
) -> TurnStart:
    """Store the user's message (once per client message id) and start the turn.

    Raises ``Refused`` (``TurnInProgress``, ``ServerDraining``, ``LimitExceeded``, a message
    too long) and ``SessionNotFound``; ``StoreWriteError`` when the message could not be
    saved. Then nothing started. A retried send of a stored message is acknowledged as a
    duplicate whatever the limits say.
    """
    if process.draining():
        raise ServerDraining()
    if len(content) > settings.CHAT_MESSAGE_MAX_CHARS:
        raise Refused(
            "message_too_long",
            f"The message has {len(content)} characters; the limit is "
            f"{settings.CHAT_MESSAGE_MAX_CHARS}.",
        )
    turn = Turn(session_id=session_id, owner_id=owner_id, turn_id=uuid.uuid4())
    user_message = ChatMessageData(
        role="user", content=content, client_message_id=client_message_id
    )
    try:
        await limits.check_message_rate(owner_id=owner_id)
        if turn_running(session_id):
            raise TurnInProgress()
        prepared = await _prepare(session_id, owner_id, user_message)
    except Refused:
        existing = await _existing_message(session_id, owner_id, client_message_id)
        if existing is not None:
            return TurnStart(message=existing, duplicate=True, turn_id=None)
        raise
    # The first model call goes out now, while the turn's lease and messages are written:
    # the model's own time to first token hides the database's. If the turn does not
    # start after all (a turn runs, a retried send, a limit), the call is dropped unread.
    call = ModelCall(prepared.messages, prepared.tools) if prepared is not None else None
    kept: ModelCall | None = None  # the call the turn takes over; any other is closed
    try:
        begun, recovered = await _begin_turn(turn, user_message, with_reply=prepared is not None)
        message, *followers = begun.messages
        if begun.outcome == "duplicate":
            return TurnStart(message=message, duplicate=True, turn_id=None)
        created = frames.MessageCreated(
            message=events.message_out(message), turn_id=str(turn.turn_id)
        )
        first = await events.event_publish(session_id, created)
        if first is not None and (prepared is None or prepared.event_floor == 0):
            # A session's first floor; later ones are saved as its turns end.
            process.spawn(events.event_floor_save(session_id, first), "event floor")
        if followers:
            # Only a call made from the history as stored: if it changed meanwhile (a dead
            # turn's work was finished first, or a message came from elsewhere), the turn
            # reads it again and calls then.
            current = prepared is not None and prepared.user_sequence == message.sequence
            kept = call if current and not recovered else None
            turn.first_call = FirstCall(reply=followers[0], call=kept)
        turn_launch(turn)
    finally:
        if call is not None and call is not kept:
            call.close()
    return TurnStart(message=message, duplicate=False, turn_id=turn.turn_id)


async def _begin_turn(
    turn: Turn, message: ChatMessageData, *, with_reply: bool
) -> tuple[store.TurnBegun, bool]:
    """Take the lease and store the user's message (once per client message id) with the
    turn's empty first reply after it, finishing a dead turn first if one holds the lease.

    Returns what was stored (``created``, or ``duplicate`` with the stored message) and
    whether a dead turn was finished first. Raises what ``turn_start`` raises."""
    messages = [message, empty_reply()] if with_reply else [message]
    begin = db_sync_to_async(store.turn_begin)
    recovered = False
    try:
        for _ in range(2):
            begun: store.TurnBegun = await begin(
                session_id=turn.session_id,
                owner_id=turn.owner_id,
                turn_id=turn.turn_id,
                process=process.process_id(),
                messages=messages,
            )
            if begun.outcome != "stale" or recovered:
                break
            await turn_recover_stale(turn.session_id)
            recovered = True
        if begun.outcome not in ("created", "duplicate"):
            raise TurnInProgress()
    except Refused:
        existing = await _existing_message(
            turn.session_id, turn.owner_id, message.client_message_id or ""
        )
        if existing is not None:
            return store.TurnBegun("duplicate", [existing]), recovered
        raise
    return begun, recovered


async def _prepare(
    session_id: uuid.UUID, owner_id: int, message: ChatMessageData
) -> _Prepared | None:
    """The first model call of a turn about to start, from the history as it is now plus
    ``message``: so the turn calls the model as soon as it has started, without reading
    the history again. ``None`` when the call needs more than that (a summary), or when
    the history does not fit at all (the turn reports it). Raises ``SessionNotFound``."""
    state = await db_sync_to_async(store.session_get)(session_id=session_id, owner_id=owner_id)
    sequence = state.last_sequence + 1
    view = state.model_copy(
        update={"messages": [*state.messages, message.model_copy(update={"sequence": sequence})]}
    )
    tools = tools_openai_schemas()
    messages = await context_window.session_view_unless_summarised(view, tools=tools)
    if messages is None:
        return None
    return _Prepared(
        messages=messages, tools=tools, user_sequence=sequence, event_floor=state.last_event_seq
    )


async def _existing_message(
    session_id: uuid.UUID, owner_id: int, client_message_id: str
) -> ChatMessageData | None:
    message: ChatMessageData | None = await db_sync_to_async(store.message_by_client_id)(
        session_id=session_id, owner_id=owner_id, client_message_id=client_message_id
    )
    return message
