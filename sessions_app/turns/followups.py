"""Follow-up turns: the model continues a session without a user message, when a
background operation it started has finished (an ``operations`` on-finished hook)."""

from __future__ import annotations

import asyncio
import logging
import uuid

from django.conf import settings

from sessions_app import process, store
from sessions_app.errors import LimitExceeded
from sessions_app.infra.db import db_sync_to_async
from sessions_app.models import Operation
from sessions_app.turns.registry import Turn, lease_take, turn_running
from sessions_app.turns.runner import turn_launch

logger = logging.getLogger(__name__)

# How long a finished operation waits for a running turn before its follow-up turn.
CONTINUE_WAIT_SECONDS = 600.0
FINISHED_NOTICE = (
    "Background operation finished: tool call {call_id} ({tool}). Its result is now in the "
    "tool message of that call; tell the user about it."
)


async def operation_follow_up_turn(op: Operation) -> None:
    """Give the model an operation's outcome: a follow-up turn, unless one runs (it will
    see it)."""
    notice = FINISHED_NOTICE.format(call_id=op.tool_call_id, tool=op.tool_name)
    owner_id = await db_sync_to_async(store.session_owner)(session_id=op.session_id)
    await turn_continue(session_id=op.session_id, owner_id=owner_id, notice=notice)


async def turn_continue(*, session_id: uuid.UUID, owner_id: int, notice: str) -> bool:
    """Let the model continue a session without a user message (a background result came).

    Waits (up to ``CONTINUE_WAIT_SECONDS``) while another turn runs; returns whether the
    follow-up turn ran.
    """
    turn = Turn(session_id=session_id, owner_id=owner_id, turn_id=uuid.uuid4(), notice=notice)
    # A turn running now may have made its last model call already: wait for it to end,
    # then tell the model (a redundant notice costs a short reply; a lost one, the result).
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CONTINUE_WAIT_SECONDS
    while turn_running(session_id) or not await _acquire_unless_limited(turn):
        if process.draining() or loop.time() > give_up:
            logger.warning("no follow-up turn for session %s: it stayed busy", session_id)
            return False
        await asyncio.sleep(settings.CHAT_HEARTBEAT_SECONDS)
    turn_launch(turn)
    task = turn.task
    assert task is not None
    await asyncio.wait([task])
    return True


async def _acquire_unless_limited(turn: Turn) -> bool:
    """Take the lease, with the user's running-turn limit read as "busy": a follow-up waits."""
    try:
        return bool(await db_sync_to_async(lease_take)(turn))
    except LimitExceeded:
        return False
