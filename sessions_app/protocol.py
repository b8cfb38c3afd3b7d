"""The websocket protocol's client frames and socket-local server frames (docs/protocol.md).

Session events (with ``seq``) are built by ``turns`` and published by ``events``; the frames
here are the ones a single socket exchanges with the server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ClientMessageId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
