"""A session's messages as OpenAI chat-completion messages (all six roles)."""

from __future__ import annotations

import json
import logging
from typing import Any

from sessions_app.schemas import ChatMessageData, SessionState

logger = logging.getLogger(__name__)


def _arguments(value: Any) -> str:
    if value is None or value == "":
        return "{}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _tool_calls(message: ChatMessageData, session_id: object) -> list[dict[str, Any]]:
    calls = []
    for raw in message.tool_calls or []:
        function = raw.get("function") if isinstance(raw, dict) else None
        call_id = raw.get("id") if isinstance(raw, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not call_id or not name:
            logger.warning(
                "skipping malformed tool call in session %s message %s: %r",
                session_id,
                message.sequence,
                raw,
            )
            continue
        assert isinstance(function, dict)
        calls.append(
            {
                "id": str(call_id),
                "type": "function",
                "function": {"name": str(name), "arguments": _arguments(function.get("arguments"))},
            }
        )
    return calls


def _function_call(message: ChatMessageData, session_id: object) -> dict[str, str] | None:
    raw = message.function_call
    if raw is None:
        return None
    name = raw.get("name")
    if not name:
        logger.warning(
            "skipping malformed function call in session %s message %s: %r",
            session_id,
            message.sequence,
            raw,
        )
        return None
    return {"name": str(name), "arguments": _arguments(raw.get("arguments"))}


def message_to_openai(
    message: ChatMessageData, *, session_id: object = None
) -> dict[str, Any] | None:
    """One message in the chat-completions format, or ``None`` when it cannot be sent."""
    out: dict[str, Any] = {"role": message.role}
    if message.role in ("system", "developer", "user"):
        out["content"] = message.content or ""
        if message.name:
            out["name"] = message.name
    elif message.role == "assistant":
        out["content"] = message.content
        if message.name:
            out["name"] = message.name
        if message.refusal:
            out["refusal"] = message.refusal
        function_call = _function_call(message, session_id)
        if function_call:
            out["function_call"] = function_call
        tool_calls = _tool_calls(message, session_id)
        if tool_calls:
            out["tool_calls"] = tool_calls
        if not (message.content or message.refusal or function_call or tool_calls):
            # A reply that failed or was cancelled before its first token: nothing to send,
            # and OpenAI refuses an assistant message with neither content nor calls.
            return None
    elif message.role == "tool":
        if not message.tool_call_id:
            logger.warning(
                "skipping tool message %s of session %s: no tool_call_id",
                message.sequence,
                session_id,
            )
            return None
        out["content"] = message.content or ""
        out["tool_call_id"] = message.tool_call_id
    else:  # function (deprecated by OpenAI, still accepted)
        if not message.name:
            logger.warning(
                "skipping function message %s of session %s: no name", message.sequence, session_id
            )
            return None
        out["name"] = message.name
        out["content"] = message.content or ""
    return out


def session_to_openai_messages(session: SessionState) -> list[dict[str, Any]]:
    """The session's history as the ``messages`` argument of a chat completion."""
    converted = (message_to_openai(m, session_id=session.id) for m in session.messages)
    return [m for m in converted if m is not None]
