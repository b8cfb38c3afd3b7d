"""Typed shapes: stored messages, cached sessions, usage, and the session API's bodies."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    computed_field,
)

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
MessageStatus = Literal["complete", "streaming", "pending", "interrupted", "failed"]


# A lone surrogate (U+D800 to U+DFFF on its own): JSON's "\ud800" escape decodes to one, and
# no database (nor UTF-8) can store it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> bool:
    """Whether ``text`` can be stored: UTF-8 encodable, without U+0000."""
    if text.isascii():
        return "\x00" not in text
    return "\x00" not in text and not _LONE_SURROGATE.search(text)


def _without_nul(text: str) -> str:
    # PostgreSQL text cannot hold U+0000, and no database holds a lone surrogate: refused as
    # input on every database alike, rather than stored by one and answered by another with
    # a write failure to retry forever.
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (U+0000)")
    if not text.isascii() and _LONE_SURROGATE.search(text):
        raise ValueError("must be valid Unicode (it holds a lone surrogate, U+D800 to U+DFFF)")
    return text


def storable_text(text: str) -> str:
    """``text`` with U+0000 and lone surrogates replaced by U+FFFD, for what a model or a
    tool produced: it is stored as it came otherwise, and PostgreSQL text (and JSON) cannot
    hold U+0000, nor any database (or UTF-8) a lone surrogate."""
    if _encodable(text):
        return text
    return _LONE_SURROGATE.sub("\ufffd", text.replace("\x00", "\ufffd"))


Title = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200), AfterValidator(_without_nul)
]
# What a user writes as a message, over the API and the websocket alike.
MessageText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_without_nul)]
# Far past any real list; keeps the OFFSET of a page within a database integer.
PAGE_MAX = 1_000_000


class ChatMessageData(BaseModel):
    """One message of a session. ``sequence`` is ``None`` until the store has saved it."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | None = None
    name: str | None = Field(default=None, max_length=128)
    tool_call_id: str | None = Field(default=None, max_length=128)
    refusal: str | None = None
    # Stored as the model sent them; malformed entries are kept but never sent back.
    tool_calls: list[Any] | None = None
    function_call: dict[str, Any] | None = None
    status: MessageStatus = "complete"
    client_message_id: str | None = Field(default=None, max_length=64)
    sequence: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Usage(BaseModel):
    """Token usage of one model call, or a session's totals."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class SessionMeta(BaseModel):
    """Everything about a session but its messages; what the cache holds per session."""

    id: uuid.UUID
    owner_id: int
    title: str = ""
    created_at: datetime
    updated_at: datetime
    prompt_tokens: int = 0
    completion_tokens: int = 0
    credentials: dict[str, Any] = Field(default_factory=dict)
    successful_agent_runs: dict[str, Any] = Field(default_factory=dict)
    successful_agent_schedules: dict[str, Any] = Field(default_factory=dict)
    last_sequence: int = 0
    last_event_seq: int = 0

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)


class SessionState(SessionMeta):
    """A session with its messages in order. Messages without a sequence are unsaved."""

    messages: list[ChatMessageData] = Field(default_factory=list)


class CachedMeta(BaseModel):
    """The cache entry of a session's metadata, valid only under its generation."""

    generation: int
    meta: SessionMeta


class SessionSummary(BaseModel):
    """A row of a user's session list: no messages."""

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime
    message_count: int
    prompt_tokens: int
    completion_tokens: int


class SessionPage(BaseModel):
    items: list[SessionSummary]
    total: int
    page: int
    page_size: int


# --- Session API request bodies -------------------------------------------------------


class SessionCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title = ""


class SessionRenameIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title


class SessionListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    page: int = Field(default=1, ge=1, le=PAGE_MAX)
    page_size: int = Field(default=20, ge=1, le=100)


# --- Session API responses ------------------------------------------------------------


class ApiError(BaseModel):
    """The body of every API error: a stable ``code`` and a message for people."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None
    # Seconds after which the same request may succeed (also the Retry-After header).
    retry_after: float | None = None


class ApiErrorBody(BaseModel):
    error: ApiError


class MessageOut(BaseModel):
    """A stored message as the API shows it (the client message id stays private)."""

    sequence: int
    role: Role
    content: str | None
    name: str | None
    tool_call_id: str | None
    refusal: str | None
    tool_calls: list[Any] | None
    function_call: dict[str, Any] | None
    status: MessageStatus
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, message: ChatMessageData) -> MessageOut:
        """What clients may see of a stored message (the client message id stays private)."""
        return cls.model_validate(message.model_dump(exclude={"client_message_id"}))


class SessionOut(BaseModel):
    """A session as the API shows it: credentials are never sent to clients."""

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime
    usage: Usage
    message_count: int
    last_event_seq: int
    messages: list[MessageOut] | None = None


# --- Message search (store.messages_search, the search_history tool) ------------------


class MessageSearchHit(BaseModel):
    """One message matching a search: where it is, who said it, and a snippet around the
    match (never the whole content, which may be a 20,000-character tool result)."""

    session_id: uuid.UUID
    session_title: str
    sequence: int
    role: Role
    created_at: datetime
    snippet: str


# A client's id for a message it sends: a retried send with the same id is stored once.
ClientMessageId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
]


class MessageSendIn(BaseModel):
    """``POST /api/sessions/<id>/messages/``: the same fields as the websocket ``send``."""

    model_config = ConfigDict(extra="forbid")

    content: MessageText
    client_message_id: ClientMessageId


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int | None = Field(default=None, ge=0)
