"""The websocket protocol's client frames (docs/protocol.md): their shapes and their parsing.

What the server sends is in ``events.frames``.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sessions_app.errors import InvalidInput, Refused, validated
from sessions_app.schemas import MessageSendIn


class _Frame(BaseModel):
    # strict: JSON types as documented; a cursor of true, 2.0 or "5" is refused, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class SendFrame(MessageSendIn):
    """``send``: the fields of the JSON API's message send, strictly typed."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["send"]


class CancelFrame(_Frame):
    type: Literal["cancel"]


class ResumeFrame(_Frame):
    type: Literal["resume"]
    # The last seq the client applied; null asks for a snapshot.
    last_seq: Annotated[int, Field(ge=0)] | None


class PingFrame(_Frame):
    type: Literal["ping"]
    id: Annotated[str, StringConstraints(max_length=64)] | None = None


ClientFrameModel = SendFrame | CancelFrame | ResumeFrame | PingFrame
FRAME_MODELS: dict[str, type[ClientFrameModel]] = {
    "send": SendFrame,
    "cancel": CancelFrame,
    "resume": ResumeFrame,
    "ping": PingFrame,
}
CLIENT_FRAME_TYPES = tuple(FRAME_MODELS)


def frame_parse(text: str | None, *, max_bytes: int) -> ClientFrameModel:
    """Parse one websocket frame from a client (``None``: it was binary).

    Raises ``Refused`` with ``unsupported_frame``, ``frame_too_large``, ``bad_json``,
    ``invalid_frame`` or ``unknown_type``; never anything else, whatever the input.
    """
    if text is None:
        raise Refused("unsupported_frame", "Send JSON text frames, not binary ones.")
    # UTF-8 takes at most 4 bytes a character: only a long frame needs encoding to measure.
    size = len(text) if len(text) * 4 <= max_bytes else len(text.encode("utf-8", "replace"))
    if size > max_bytes:
        raise Refused("frame_too_large", f"The frame has {size} bytes; the limit is {max_bytes}.")
    try:
        data = json.loads(text)
    except RecursionError:
        raise Refused("bad_json", "The frame nests JSON too deeply.") from None
    except ValueError as exc:
        raise Refused("bad_json", f"The frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused("invalid_frame", "A frame must be a JSON object with a type.")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_FRAME_TYPES:
        raise Refused(
            "unknown_type",
            f"Unknown frame type {str(kind)[:40]!r}; use one of {', '.join(CLIENT_FRAME_TYPES)}.",
        )
    try:
        return validated(FRAME_MODELS[kind], data)
    except InvalidInput as exc:
        summary, details = exc.describe(whole="(frame)")
        raise Refused(
            "invalid_frame", f"Invalid {kind} frame: {summary}", details=details
        ) from None
