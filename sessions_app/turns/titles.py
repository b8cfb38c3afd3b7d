"""A session's title, made by the model from the user's first message."""

from __future__ import annotations

import logging
import uuid

from django.conf import settings

from sessions_app import events, store
from sessions_app.errors import SessionNotFound
from sessions_app.events import frames
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import client as llm

logger = logging.getLogger(__name__)

TITLE_PROMPT = (
    "Write a short title (at most six words) for a conversation that starts with the "
    "user's message below. Reply with the title only, without quotes."
)


async def title_make(session_id: uuid.UUID) -> None:
    """Give a session whose first exchange just finished a title (unless it has one)."""
    try:
        state = await db_sync_to_async(store.session_get)(session_id=session_id)
        users = [m for m in state.messages if m.role == "user"]
        if state.title or len(users) != 1:
            return
        text, _usage = await llm.complete_text(
            messages=[
                {"role": "system", "content": TITLE_PROMPT},
                {"role": "user", "content": users[0].content or ""},
            ]
        )
        title = " ".join(text.strip().strip("\"'").split())[: settings.CHAT_TITLE_MAX_LENGTH]
        if not title:
            return
        if await db_sync_to_async(store.session_title_set_if_empty)(
            session_id=session_id, title=title
        ):
            await events.event_publish(session_id, frames.TitleUpdated(title=title))
    except SessionNotFound:
        return
    except Exception:
        logger.warning("could not make a title for session %s", session_id, exc_info=True)
