"""Wire shapes of the local model: the request it accepts and the JSON it answers with.

The request is checked as strictly as OpenAI checks it (roles, tool message order, tool call
ids), so code that works against the local model also works against the real API; anything
OpenAI accepts and the script does not use (``temperature``, ``tools`` ...) is accepted and
ignored. Response shapes copy OpenAI's field for field, so the official SDK parses them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

MODEL_ID = "chatproject-local"
# A fixed creation date (2026-01-01 UTC) keeps GET /v1/models byte-for-byte stable.
MODEL_CREATED = 1767225600
MAX_WORD_DELAY_MS = 60_000

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool", "function")
# Roles whose message is meaningless without content; assistant content may be null.
CONTENT_REQUIRED = frozenset({"system", "developer", "user", "tool", "function"})


def _omit_none(value: object) -> bool:
    return value is None


# --- request ------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a list-valued content; only ``text`` parts are read by the script."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: str = "function"
    function: FunctionCall


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, value: Any) -> Any:
        # Checked by hand so the error names the field, not pydantic's union branches.
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) for part in value):
            return value
        raise PydanticCustomError("invalid_type", "expected a string or an array of content parts")

    @property
    def text(self) -> str:
        """The readable text: the string, or the ``text`` parts joined by newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(
            part.text for part in self.content if part.type == "text" and part.text is not None
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class LocalModelOptions(BaseModel):
    """The extra body field ``local_model``: per-request knobs only this server knows."""

    model_config = ConfigDict(extra="forbid")

    word_delay_ms: int | None = Field(default=None, ge=0, le=MAX_WORD_DELAY_MS)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[RequestMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    local_model: LocalModelOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class RequestInvalid(Exception):
    """A request OpenAI would refuse with 400; carries the fields of its error body."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a chat-completions body, raising ``RequestInvalid`` like OpenAI would."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestInvalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        ) from None
    if not isinstance(data, dict):
        raise RequestInvalid("Invalid request body: expected a JSON object.", code="invalid_type")
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as error:
        raise _from_validation_error(error) from None
    check_conversation(request.messages)
    return request


def check_conversation(messages: list[RequestMessage]) -> None:
    """The ordering rules OpenAI enforces on tool calls and their results.

    Every ``tool`` message must answer a call of the assistant message right before its run of
    tool messages, and every call of an assistant message must be answered before anything else
    follows. The app's history conversion has to get this right for real models too.
    """
    open_calls: set[str] = set()
    opened_at: int | None = None
    for index, message in enumerate(messages):
        if message.role in CONTENT_REQUIRED and message.content is None:
            raise RequestInvalid(
                f"Invalid value for 'content': expected a string, got null. (role "
                f"'{message.role}')",
                param=f"messages.[{index}].content",
                code="invalid_type",
            )
        if message.role == "tool":
            _check_tool_message(messages, index, message, open_calls)
            continue
        if open_calls and opened_at is not None:
            raise _unanswered(opened_at, open_calls)
        open_calls = set()
        opened_at = None
        if message.role == "assistant" and message.tool_calls:
            open_calls = {call.id for call in message.tool_calls}
            opened_at = index
    if open_calls and opened_at is not None:
        raise _unanswered(opened_at, open_calls)


def _check_tool_message(
    messages: list[RequestMessage], index: int, message: RequestMessage, open_calls: set[str]
) -> None:
    previous = index - 1
    while previous >= 0 and messages[previous].role == "tool":
        previous -= 1
    caller = messages[previous] if previous >= 0 else None
    if caller is None or caller.role != "assistant" or not caller.tool_calls:
        raise RequestInvalid(
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
            "message with 'tool_calls'.",
            param=f"messages.[{index}].role",
        )
    if message.tool_call_id is None:
        raise RequestInvalid(
            "Missing required parameter: 'tool_call_id'.",
            param=f"messages.[{index}].tool_call_id",
            code="missing_required_parameter",
        )
    if message.tool_call_id not in {call.id for call in caller.tool_calls}:
        raise RequestInvalid(
            f"Invalid parameter: 'tool_call_id' of '{message.tool_call_id}' not found in "
            "'tool_calls' of previous message.",
            param=f"messages.[{index}].tool_call_id",
        )
    open_calls.discard(message.tool_call_id)


def _unanswered(index: int, open_calls: set[str]) -> RequestInvalid:
    missing = ", ".join(sorted(open_calls))
    return RequestInvalid(
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        f"{missing}",
        param=f"messages.[{index}].role",
    )


def _param(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in location:
        parts.append(f"[{item}]" if isinstance(item, int) else item)
    return ".".join(parts)


def _from_validation_error(error: ValidationError) -> RequestInvalid:
    """OpenAI reports one problem at a time; report the first one in its words."""
    first = error.errors(include_url=False)[0]
    param = _param(tuple(first["loc"]))
    kind = first["type"]
    if kind == "missing":
        return RequestInvalid(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind == "literal_error" and param.endswith(".role"):
        supported = ", ".join(f"'{role}'" for role in ROLES)
        return RequestInvalid(
            f"Invalid value: '{first['input']}'. Supported values are: {supported}.",
            param=param,
            code="invalid_value",
        )
    if kind == "too_short" and param == "messages":
        return RequestInvalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            param=param,
            code="empty_array",
        )
    if kind == "extra_forbidden":
        return RequestInvalid(
            f"Unrecognized request argument supplied: {param}", param=param, code="invalid_value"
        )
    return RequestInvalid(
        f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_type"
    )


# --- responses ----------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionDelta(BaseModel):
    name: str | None = Field(default=None, exclude_if=_omit_none)
    arguments: str | None = Field(default=None, exclude_if=_omit_none)


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = Field(default=None, exclude_if=_omit_none)
    type: Literal["function"] | None = Field(default=None, exclude_if=_omit_none)
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_omit_none)
    content: str | None = Field(default=None, exclude_if=_omit_none)
    tool_calls: list[ToolCallDelta] | None = Field(default=None, exclude_if=_omit_none)


FinishReason = Literal["stop", "tool_calls", "length"]


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str = MODEL_ID
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = Field(default=None, exclude_if=_omit_none)


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=_omit_none)


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = MODEL_ID
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str = MODEL_ID
    object: Literal["model"] = "model"
    created: int = MODEL_CREATED
    owned_by: str = "chatproject"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
