"""The shapes of what the server sends: session events and socket-local frames."""

from __future__ import annotations

from typing import Any

from sessions_app.models import Operation
from sessions_app.schemas import ChatMessageData, MessageOut


def message_out(message: ChatMessageData) -> dict[str, Any]:
    """A stored message as events and snapshots carry it."""
    return MessageOut.of(message).model_dump(mode="json")


def operation_out(op: Operation) -> dict[str, Any]:
    """An operation as clients see it (events, snapshots)."""
    return {
        "id": str(op.id),
        "tool_name": op.tool_name,
        "tool_call_id": op.tool_call_id,
        "status": op.status,
        "arguments": op.arguments,
        "progress": op.progress,
        "progress_text": op.progress_text or None,
        "error": op.error,
        "attempts": op.attempts,
        "created_at": op.created_at.isoformat(),
        "started_at": op.started_at.isoformat() if op.started_at else None,
        "finished_at": op.finished_at.isoformat() if op.finished_at else None,
        "message_sequence": op.message.sequence if op.message_id and op.message else None,
    }
