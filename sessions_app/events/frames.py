"""Every frame the server sends, as a typed shape (docs/protocol.md documents each one).

Two kinds:

- **Session events** (``SessionEvent`` and its subclasses): the outputs of turns and
  operations, numbered with a per-session ``seq`` by the event log and sent to every socket
  of the session (``events.publish``). ``SESSION_EVENTS`` maps each ``type`` to its model.
- **Socket-local frames** (``hello``, ``snapshot``, ``ack``, ``pong``, ``error``): the answers
  one socket gets, never logged.

A frame is encoded once, with ``encode()``; its optional top-level fields (``OMITTED_WHEN_NONE``)
are left out when unset, every other field is always present (``null`` when empty).
``tests/events/test_frames.py`` checks docs/protocol.md's field tables against these models.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from sessions_app.models import Operation
from sessions_app.schemas import ChatMessageData, MessageOut, Usage


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Top-level fields left out of the frame when they are None.
    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    type: str

    def encode(self) -> str:
        """The frame's JSON text."""
        return self.model_dump_json(exclude=self._omitted())

    def as_json(self) -> dict[str, Any]:
        """The frame as JSON-compatible data (for a page or an HTTP body)."""
        return self.model_dump(mode="json", exclude=self._omitted())

    def _omitted(self) -> set[str]:
        return {name for name in self.OMITTED_WHEN_NONE if getattr(self, name) is None}


# --- objects inside frames ------------------------------------------------------------------


class OperationOut(BaseModel):
    """An operation as clients see it (events, snapshots)."""

    id: str
    tool_name: str
    tool_call_id: str
    status: str
    arguments: Any
    progress: float | None
    progress_text: str | None
    error: str | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    message_sequence: int | None

    @classmethod
    def of(cls, op: Operation) -> OperationOut:
        return cls(
            id=str(op.id),
            tool_name=op.tool_name,
            tool_call_id=op.tool_call_id,
            status=op.status,
            arguments=op.arguments,
            progress=op.progress,
            progress_text=op.progress_text or None,
            error=op.error,
            attempts=op.attempts,
            created_at=op.created_at.isoformat(),
            started_at=op.started_at.isoformat() if op.started_at else None,
            finished_at=op.finished_at.isoformat() if op.finished_at else None,
            message_sequence=op.message.sequence if op.message_id and op.message else None,
        )


def message_out(message: ChatMessageData) -> MessageOut:
    """A stored message as frames carry it."""
    return MessageOut.of(message)


def operation_out(op: Operation) -> OperationOut:
    """An operation as frames carry it."""
    return OperationOut.of(op)


# --- session events ---------------------------------------------------------------------------


class SessionEvent(Frame):
    """An event of a session. ``seq`` is given by the event log when it is published."""

    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"seq", "turn_id"})

    seq: int | None = None
    # The turn the event belongs to, on the events a turn publishes.
    turn_id: str | None = None


class MessageCreated(SessionEvent):
    type: Literal["message_created"] = "message_created"
    message: MessageOut


class TurnStarted(SessionEvent):
    type: Literal["turn_started"] = "turn_started"


class TextDelta(SessionEvent):
    type: Literal["text_delta"] = "text_delta"
    message_sequence: int | None
    offset: int
    text: str


class ToolCall(SessionEvent):
    type: Literal["tool_call"] = "tool_call"
    message_sequence: int | None
    tool_call: dict[str, Any]


class ToolProgress(SessionEvent):
    type: Literal["tool_progress"] = "tool_progress"
    message_sequence: int | None
    tool_call_id: str
    fraction: float | None
    text: str


class MessageUpdated(SessionEvent):
    type: Literal["message_updated"] = "message_updated"
    message: MessageOut


class ToolResult(SessionEvent):
    type: Literal["tool_result"] = "tool_result"
    message: MessageOut


class UsageReported(SessionEvent):
    type: Literal["usage"] = "usage"
    usage: Usage
    turn_usage: Usage
    session_usage: Usage


class ErrorEvent(SessionEvent):
    """A turn's or an operation's error, told to every socket of the session."""

    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"seq", "turn_id", "retry_after"})

    type: Literal["error"] = "error"
    code: str
    message: str
    retry_after: float | None = None


class TurnFinished(SessionEvent):
    type: Literal["turn_finished"] = "turn_finished"
    status: str
    turn_usage: Usage


class TitleUpdated(SessionEvent):
    type: Literal["title_updated"] = "title_updated"
    title: str


class OperationStarted(SessionEvent):
    type: Literal["operation_started"] = "operation_started"
    operation: OperationOut
    message: MessageOut
    notice: str


class OperationInProgress(SessionEvent):
    type: Literal["operation_in_progress"] = "operation_in_progress"
    operation: OperationOut


class OperationEnded(SessionEvent):
    """How an operation ended, with its tool message as now stored (if it still has one)."""

    operation: OperationOut
    message: MessageOut | None


class OperationCompleted(OperationEnded):
    type: Literal["operation_completed"] = "operation_completed"


class OperationFailed(OperationEnded):
    type: Literal["operation_failed"] = "operation_failed"


SESSION_EVENTS: dict[str, type[SessionEvent]] = {
    model.model_fields["type"].default: model
    for model in (
        MessageCreated,
        TurnStarted,
        TextDelta,
        ToolCall,
        ToolProgress,
        MessageUpdated,
        ToolResult,
        UsageReported,
        ErrorEvent,
        TurnFinished,
        TitleUpdated,
        OperationStarted,
        OperationInProgress,
        OperationCompleted,
        OperationFailed,
    )
}


# --- socket-local frames -------------------------------------------------------------------------


class SocketFrame(Frame):
    """A frame for one socket only; its fields are left out when None."""

    def encode(self) -> str:
        return self.model_dump_json(exclude_none=True)


class HelloFrame(SocketFrame):
    """The first frame on every socket: who the model is and the limits that apply."""

    type: Literal["hello"] = "hello"
    session_id: str
    model: str
    offline_demo: bool
    max_frame_bytes: int
    max_message_chars: int


class AckFrame(SocketFrame):
    type: Literal["ack"] = "ack"
    of: Literal["send", "cancel"]
    client_message_id: str | None = None
    message_sequence: int | None = None
    duplicate: bool = False


class PongFrame(SocketFrame):
    type: Literal["pong"] = "pong"
    id: str | None = None
    last_seq: int


class ErrorFrame(SocketFrame):
    """A socket-local error: this frame was refused; the socket stays open."""

    type: Literal["error"] = "error"
    code: str
    message: str
    retry_after: float | None = None
    details: list[dict[str, Any]] | None = None


class SnapshotSession(BaseModel):
    id: str
    title: str
    usage: Usage
    message_count: int


class ModelOut(BaseModel):
    name: str
    offline_demo: bool


class Snapshot(Frame):
    """A session's whole state at ``seq``: for a client the log cannot catch up."""

    type: Literal["snapshot"] = "snapshot"
    seq: int
    session: SnapshotSession
    messages: list[MessageOut]
    running: bool
    turn_id: str | None
    operations: list[OperationOut]
    model: ModelOut


SOCKET_FRAMES: dict[str, type[Frame]] = {
    model.model_fields["type"].default: model
    for model in (HelloFrame, Snapshot, AckFrame, PongFrame, ErrorFrame)
}
