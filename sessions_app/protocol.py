"""The websocket protocol's client frames and socket-local server frames (docs/protocol.md).

Session events (with ``seq``) are built by ``turns`` and published by ``events``; the frames
here are the ones a single socket exchanges with the server.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from sessions_app.errors import Refused

ClientMessageId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
]


class _Frame(BaseModel):
    # strict: JSON types as documented; a cursor of true, 2.0 or "5" is refused, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class SendFrame(_Frame):
    type: Literal["send"]
    content: Annotated[str, StringConstraints(min_length=1)]
    client_message_id: ClientMessageId


class CancelFrame(_Frame):
    type: Literal["cancel"]


class ResumeFrame(_Frame):
    type: Literal["resume"]
    # The last seq the client applied; null asks for a snapshot.
    last_seq: Annotated[int, Field(ge=0)] | None


class PingFrame(_Frame):
    type: Literal["ping"]
    id: Annotated[str, StringConstraints(max_length=64)] | None = None


ClientFrame = Annotated[
    SendFrame | CancelFrame | ResumeFrame | PingFrame, Field(discriminator="type")
]
CLIENT_FRAME_TYPES = ("send", "cancel", "resume", "ping")


class ClientFrameEnvelope(BaseModel):
    frame: ClientFrame


ClientFrameModel = SendFrame | CancelFrame | ResumeFrame | PingFrame
FRAME_MODELS: dict[str, type[_Frame]] = {
    "send": SendFrame,
    "cancel": CancelFrame,
    "resume": ResumeFrame,
    "ping": PingFrame,
}
FRAME_FIELDS = {kind: frozenset(model.model_fields) for kind, model in FRAME_MODELS.items()}

# An invalid_frame error lists at most this many problems, each field name clipped: a big
# bad frame (thousands of unknown fields) must not buy an answer many times its size.
MAX_DETAILS = 10
FIELD_NAME_CHARS = 64


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ".".join(str(part) for part in loc) or "(frame)"
    if len(name) > FIELD_NAME_CHARS:
        name = name[: FIELD_NAME_CHARS - 1] + "…"
    # A key may hold a lone surrogate ("\ud800" escapes): it must still encode as UTF-8.
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _invalid(kind: str, problems: list[tuple[tuple[int | str, ...], str]]) -> Refused:
    details = [
        {"field": _field_name(loc), "problem": problem} for loc, problem in problems[:MAX_DETAILS]
    ]
    summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
    if len(problems) > MAX_DETAILS:
        summary += f"; and {len(problems) - MAX_DETAILS} more"
    return Refused("invalid_frame", f"Invalid {kind} frame: {summary}", details=details)


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
    # Unknown fields first, without pydantic: it would build one error per field.
    unknown = [key for key in data if key not in FRAME_FIELDS[kind]]
    if unknown:
        raise _invalid(kind, [((key,), "Extra inputs are not permitted") for key in unknown])
    try:
        return ClientFrameEnvelope.model_validate({"frame": data}).frame
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise _invalid(kind, [(err["loc"][2:], err["msg"]) for err in errors]) from None


class ErrorFrame(BaseModel):
    """A socket-local error: this frame was refused; the socket stays open."""

    type: Literal["error"] = "error"
    code: str
    message: str
    retry_after: float | None = None
    details: list[dict[str, Any]] | None = None


class AckFrame(BaseModel):
    type: Literal["ack"] = "ack"
    of: Literal["send", "cancel"]
    client_message_id: str | None = None
    message_sequence: int | None = None
    duplicate: bool = False


class PongFrame(BaseModel):
    type: Literal["pong"] = "pong"
    id: str | None = None
    last_seq: int


class HelloFrame(BaseModel):
    """The first frame on every socket: who the model is and the limits that apply."""

    type: Literal["hello"] = "hello"
    session_id: str
    model: str
    offline_demo: bool
    max_frame_bytes: int
    max_message_chars: int
