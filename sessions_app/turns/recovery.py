"""Turns whose process died: found by their stale lease, their text kept and marked
``interrupted``, their unanswered tool calls answered with an error, and ``turn_finished``
published for them."""

from __future__ import annotations

import logging
import uuid

from sessions_app import events, store
from sessions_app.events import frames
from sessions_app.infra.db import db_sync_to_async
from sessions_app.schemas import Usage
from sessions_app.store import leases
from sessions_app.turns.registry import turn_running

logger = logging.getLogger(__name__)

INTERRUPTED_TOOL_RESULT = "Error: the server running this turn stopped before the tool finished."


async def turn_recover(session_id: uuid.UUID, turn_id: uuid.UUID) -> bool:
    """Finish what a dead turn left: take its lease away first (so a turn that renewed it
    meanwhile is left alone), then keep its text, marked interrupted."""
    if not await db_sync_to_async(leases.turn_lease_break)(session_id=session_id, turn_id=turn_id):
        return False
    changed = await db_sync_to_async(store.messages_interrupt_unfinished)(
        session_id=session_id, tool_content=INTERRUPTED_TOOL_RESULT
    )
    logger.warning("turn %s of session %s was stale: interrupted", turn_id, session_id)
    for message in changed:
        shown = events.message_out(message)
        event = (
            frames.ToolResult(message=shown)
            if message.role == "tool"
            else frames.MessageUpdated(message=shown)
        )
        event.turn_id = str(turn_id)
        await events.event_publish(session_id, event)
    finished = frames.TurnFinished(status="interrupted", turn_usage=Usage(), turn_id=str(turn_id))
    await events.event_publish(session_id, finished)
    return True


async def turns_sweep() -> None:
    """Recover turns whose process died: their streaming text is kept, marked interrupted."""
    stale = await db_sync_to_async(leases.turn_leases_stale)()
    for session_id, turn_id in stale:
        if turn_running(session_id):
            continue  # ours and alive (this process was only slow to renew)
        await turn_recover(session_id, turn_id)


async def turn_recover_stale(session_id: uuid.UUID) -> None:
    """Before a new turn takes a stale lease, finish the dead turn that held it."""
    stale = await db_sync_to_async(leases.turn_leases_stale)(session_id=session_id)
    for sid, turn_id in stale:
        if not turn_running(sid):
            await turn_recover(sid, turn_id)
