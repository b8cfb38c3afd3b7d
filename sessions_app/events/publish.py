"""Publishing session events: number, log, send live; and reading them back.

Every output of a turn or an operation is an event ``{"type": ..., "seq": N, ...}``, published
after the database change it describes has committed. Events describe state, not
increments, so applying one twice is harmless: a text delta names its message and its
character ``offset``; everything else carries the whole object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid

from channels.layers import get_channel_layer

from sessions_app import process, store
from sessions_app.events.channels_redis_live import group_name
from sessions_app.events.frames import SessionEvent
from sessions_app.events.log import Event, event_log, frame_text
from sessions_app.infra.db import db_sync_to_async

logger = logging.getLogger(__name__)


async def event_publish(session_id: uuid.UUID, event: SessionEvent) -> int | None:
    """Number an event, log it, and send it to every socket of the session; its ``seq``.

    Call after the database change it describes has committed. Never raises for a log or
    layer failure: the database holds the truth, and clients repair what they missed with
    ``resume``. Returns ``None`` when the event could not be logged (then it was not sent).
    """
    payload = event.encode()  # the frame's text is made once, for the log and every socket
    log = event_log()
    try:
        seq = await log.append(session_id, payload)
    except Exception:
        logger.warning(
            "could not log %s event of session %s", event.type, session_id, exc_info=True
        )
        return None
    layer = get_channel_layer()
    if layer is not None and not log.publishes_live:
        try:
            message = {"type": "session.event", "seq": seq, "frame": frame_text(payload, seq)}
            await layer.group_send(group_name(session_id), message)
        except Exception:
            logger.warning(
                "could not send event %s of session %s live", seq, session_id, exc_info=True
            )
    return seq


def event_publish_sync(session_id: uuid.UUID, event: SessionEvent) -> int | None:
    """``event_publish`` for synchronous code (the admin, management commands).

    The event goes out from the process's home loop when it has one, so the in-memory layer
    of the embedded default (bound to that loop) delivers it; otherwise from a loop of its
    own in a helper thread, so no database connection of the caller's thread is touched.
    """
    coro = event_publish(session_id, event)
    home = process.home_loop()
    if home is not None and home.is_running():
        return asyncio.run_coroutine_threadsafe(coro, home).result(timeout=30)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


async def events_since(session_id: uuid.UUID, after: int) -> list[Event] | None:
    """The events after ``after`` in order, or ``None`` when only a snapshot can help."""
    try:
        return await event_log().since(session_id, after)
    except Exception:
        logger.warning("could not read the event log of %s", session_id, exc_info=True)
        return None


async def events_recent(session_id: uuid.UUID) -> list[Event]:
    """Whatever the log still holds of a session, oldest first (empty when unreadable)."""
    try:
        return await event_log().recent(session_id)
    except Exception:
        logger.warning("could not read the event log of %s", session_id, exc_info=True)
        return []


async def event_head(session_id: uuid.UUID) -> int:
    """The newest seq of a session (0 when it never had an event in this log's life)."""
    try:
        head = await event_log().head(session_id)
    except Exception:
        logger.warning("could not read the event head of %s", session_id, exc_info=True)
        return 0
    return head or 0


async def event_floor_save(session_id: uuid.UUID, seq: int | None) -> None:
    """Raise the session's event floor to ``seq``: where a lost counter restarts from."""
    if seq is None:
        return
    try:
        await db_sync_to_async(store.event_floor_raise)(session_id=session_id, seq=seq)
    except Exception:
        logger.warning("could not save event seq of %s", session_id, exc_info=True)
