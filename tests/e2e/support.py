"""Helpers of the end-to-end tests: the fast-lease environment, scenarios and views."""

from __future__ import annotations

import re
import uuid
from typing import Any

from channels.db import database_sync_to_async

from sessions_app import store
from sessions_app.models import ChatMessage

FAST_LEASES = {
    "CHAT_HEARTBEAT_MS": "200",
    "CHAT_LEASE_MS": "1500",
    "CHAT_SWEEP_MS": "300",
    "LOCAL_MODEL_WORD_DELAY_MS": "5",
    "CHAT_EXTRA_TOOLS": "tests.tools_for_tests.SlowSideEffect",
}
SCRIPT = '/tool calculator {"expression": "6*7"}\n/tool timer {"seconds": 1, "label": "tea"}'
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def new_session(owner: Any) -> uuid.UUID:
    return store.session_create(owner_id=owner.pk).id


async def db_view(session_id: uuid.UUID) -> list[tuple[int, str, str | None, str]]:
    def read() -> list[tuple[int, str, str | None, str]]:
        rows = ChatMessage.objects.filter(session_id=session_id).order_by("sequence")
        return [(m.sequence, m.role, m.content, m.status) for m in rows]

    return await database_sync_to_async(read)()


def normalized(view: list[tuple[int, str, str | None, str]]) -> list[tuple[Any, ...]]:
    """Operation ids differ between runs; everything else must be equal."""
    return [
        (seq, role, UUID.sub("<id>", content or ""), status) for seq, role, content, status in view
    ]


def is_final(frame: dict[str, Any]) -> bool:
    """The end of the scenario: the follow-up turn after the operation has finished."""
    return (
        frame["type"] == "message_updated"
        and frame["message"]["status"] == "complete"
        and (frame["message"]["content"] or "").startswith("Background result")
    )
