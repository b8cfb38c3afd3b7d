"""The turns this process runs, by session: at most one per session across all processes
(the session's turn lease, ``store.leases``), and this process's handle on its own."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from sessions_app import process
from sessions_app.store import leases
from sessions_app.turns.text_stream import FirstCall


@dataclass
class Turn:
    """A turn this process runs (or is about to)."""

    session_id: uuid.UUID
    owner_id: int
    turn_id: uuid.UUID
    notice: str | None = None
    first_call: FirstCall | None = None
    task: asyncio.Task[None] | None = None
    stop_reason: str = "cancelled"
    # Set when another process took the lease (presuming this one dead): from then on the
    # turn belongs to that process's recovery, and this one writes and publishes nothing.
    lease_lost: bool = False


# The turns this process runs, by session.
_running: dict[uuid.UUID, Turn] = {}


def turn_running(session_id: uuid.UUID) -> bool:
    """Whether this process runs a turn of the session."""
    return session_id in _running


def running_add(turn: Turn) -> None:
    _running[turn.session_id] = turn


def running_remove(turn: Turn) -> None:
    if _running.get(turn.session_id) is turn:
        del _running[turn.session_id]


def lease_take(turn: Turn, *, take_stale: bool = True) -> bool:
    """Take the session's lease for ``turn`` (sync); raises ``LimitExceeded`` (too many
    turns of the user)."""
    return leases.turn_lease_acquire(
        session_id=turn.session_id,
        turn_id=turn.turn_id,
        owner=process.process_id(),
        owner_id=turn.owner_id,
        take_stale=take_stale,
    )


def turn_cancel(session_id: uuid.UUID, reason: str = "cancelled") -> bool:
    """Stop the session's turn if this process runs it. Returns whether one was stopped."""
    turn = _running.get(session_id)
    if turn is None or turn.task is None or turn.task.done():
        return False
    turn.stop_reason = reason
    turn.task.cancel()
    return True


async def turn_wait(session_id: uuid.UUID) -> None:
    """Wait until this process runs no turn of the session (tests, shutdown)."""
    turn = _running.get(session_id)
    if turn is not None and turn.task is not None:
        await asyncio.wait([turn.task])


async def turns_interrupt_all() -> None:
    """Shutdown: stop every turn of this process, keeping their text, and wait for them."""
    tasks = []
    for session_id, turn in list(_running.items()):
        if turn_cancel(session_id, reason="interrupted") and turn.task is not None:
            tasks.append(turn.task)
    if tasks:
        await asyncio.wait(tasks)
