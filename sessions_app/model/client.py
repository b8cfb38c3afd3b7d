"""The OpenAI-compatible streaming client: the official ``openai`` SDK's ``AsyncOpenAI`` only.

Configured by ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and ``CHAT_MODEL``; without a base URL
the project's local scripted model answers. Every failure becomes ``ModelError`` with a
stable ``code`` and a message a user can read; no message ever carries the API key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai
from django.conf import settings
from django.core.signals import setting_changed
from openai import AsyncOpenAI

from chatproject.redaction import redact
from sessions_app.infra.loop_local import LoopLocal
from sessions_app.schemas import Usage, storable_text

logger = logging.getLogger(__name__)

SERVER_MESSAGE_MAX_CHARS = 300


class ModelError(Exception):
    """A model call failed. ``code`` is stable (the protocol's error codes)."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class ModelInfo:
    """What clients may know about the model: never the key or the URL's credentials."""

    name: str
    offline_demo: bool


def model_info() -> ModelInfo:
    return ModelInfo(name=settings.CHAT_MODEL, offline_demo=settings.CHAT_USING_LOCAL_MODEL)


# One client per event loop: the SDK's connection pool belongs to the loop that made it.
_clients: LoopLocal[AsyncOpenAI] = LoopLocal()


# Where this server serves its own local model, learned from the first connection it served
# (``local_model_served_at``): the embedded default needs no LOCAL_MODEL_URL, whatever port.
_served_at: str | None = None


def local_model_served_at(server: tuple[str, int | None] | None, *, mount: str) -> None:
    """Learn this server's own address from an ASGI scope's ``server`` (its listening host
    and port), so the local model mounted at ``mount`` is called there. A wildcard host
    (``0.0.0.0``, ``::``) is reached on the loopback."""
    global _served_at
    if _served_at is not None or not server or server[1] is None:
        return
    host, port = server
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    _served_at = f"http://{host}:{port}{mount}/v1"


def model_base_url() -> str:
    """The model server's URL: ``OPENAI_BASE_URL``, or ``LOCAL_MODEL_URL`` when it was
    given, or else the local model of this very server at the address it serves on."""
    configured = str(settings.CHAT_MODEL_BASE_URL)
    defaulted = settings.CHAT_USING_LOCAL_MODEL and not settings.LOCAL_MODEL_URL_GIVEN
    if defaulted and _served_at and configured == settings.LOCAL_MODEL_URL:
        return _served_at
    return configured


def _client() -> AsyncOpenAI:
    return _clients.get(
        lambda: AsyncOpenAI(
            base_url=model_base_url(),
            api_key=settings.OPENAI_API_KEY,
            timeout=float(settings.CHAT_MODEL_TIMEOUT),
            max_retries=settings.CHAT_MODEL_MAX_RETRIES,
            # The SDK's aiohttp transport (its ``aiohttp`` extra) instead of its default
            # httpx2 one: the same requests, timeouts, retries and errors, but responses
            # parsed in C; a streamed token costs the process about half the CPU
            # (docs/performance.md, "The model client's transport").
            http_client=openai.DefaultAioHttpClient(),
        )
    )


async def clients_close() -> None:
    """Close the running loop's client, for a loop about to end (the task worker runs each
    operation on a loop of its own). Left to the garbage collector, the SDK closes it from
    whatever loop runs then, whose transports it does not own: "Event loop is closed"."""
    client = _clients.pop()
    if client is not None:
        await client.close()


def _forget_clients(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(("CHAT_MODEL", "OPENAI_", "LOCAL_MODEL")):
        _clients.clear()


setting_changed.connect(_forget_clients)


# --- stream items ---------------------------------------------------------------------------


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolCallRequest:
    """One complete tool call of the model's reply. ``arguments`` is the raw JSON string."""

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class StreamEnd:
    """The stream finished: why, the tool calls it asked for, and its usage when reported."""

    finish_reason: str
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage | None = None


StreamItem = TextDelta | ToolCallRequest | StreamEnd


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _add_call_delta(calls: dict[int, _PartialCall], call_delta: Any) -> None:
    """Add one streamed piece of a tool call (its id, name, a slice of its arguments)."""
    if not isinstance(call_delta, dict):
        return
    partial = calls.setdefault(int(call_delta.get("index") or 0), _PartialCall())
    partial.id = partial.id or storable_text(str(call_delta.get("id") or ""))
    function = call_delta.get("function")
    if isinstance(function, dict):
        partial.name = partial.name or storable_text(str(function.get("name") or ""))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            partial.arguments.append(storable_text(arguments))


def _server_message(exc: openai.APIError) -> str:
    body = exc.body
    message = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
    # A server may echo what it was sent, the key included.
    message = redact(message or str(exc.message))
    if len(message) > SERVER_MESSAGE_MAX_CHARS:
        message = message[:SERVER_MESSAGE_MAX_CHARS] + "…"
    return message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    raw = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (the SDK and its transports wrap)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _timed_out(causes: list[BaseException]) -> bool:
    """Whether the chain holds a timeout (the SDK's, asyncio's, or a transport's ``...Timeout``)."""
    return any(
        isinstance(c, TimeoutError | openai.APITimeoutError) or type(c).__name__.endswith("Timeout")
        for c in causes
    )


def _refused(causes: list[BaseException]) -> OSError | None:
    """The connection error in the chain when the server could not be reached at all (a
    refused connection, an unknown host): some transports report it as a connect timeout."""
    for cause in causes:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return cause
    return None


def model_host() -> str:
    """The model server's host and port, without credentials (for messages and logs)."""
    parsed = urlsplit(model_base_url())
    host = parsed.hostname or "?"
    return f"{host}:{parsed.port}" if parsed.port else host


def model_error_from(exc: BaseException) -> ModelError:
    """The ``ModelError`` for an SDK (or transport) exception."""
    model = settings.CHAT_MODEL
    if isinstance(exc, ModelError):
        return exc
    causes = _causes(exc)
    refused = _refused(causes)
    if refused is not None and isinstance(exc, openai.APIConnectionError):
        reason = redact(refused.strerror or type(refused).__name__)
        return ModelError(
            "model_unreachable",
            f"The model server at {model_host()} could not be reached ({reason}).",
        )
    if isinstance(exc, openai.APITimeoutError) or (_timed_out(causes) and refused is None):
        return ModelError(
            "model_timeout",
            f"The model did not answer within {settings.CHAT_MODEL_TIMEOUT} seconds.",
        )
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(
            "model_unreachable", f"The model server at {model_host()} could not be reached."
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelError(
            "model_auth_failed",
            "The model server refused the API key; check OPENAI_API_KEY.",
        )
    if isinstance(exc, openai.NotFoundError):
        return ModelError(
            "model_not_found",
            f"The model server does not know the model {model!r}; check CHAT_MODEL.",
        )
    if isinstance(exc, openai.RateLimitError):
        retry_after = _retry_after(exc)
        hint = f" Try again in {retry_after:g} s." if retry_after else " Try again later."
        return ModelError(
            "model_rate_limited",
            "The model server is rate limiting requests." + hint,
            retry_after=retry_after,
        )
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return ModelError(
            "model_bad_request", f"The model server rejected the request: {_server_message(exc)}"
        )
    if isinstance(exc, openai.APIStatusError):
        return ModelError(
            "model_unavailable",
            f"The model server failed (HTTP {exc.status_code}): {_server_message(exc)}",
        )
    if isinstance(exc, openai.APIError):
        # The SDK raises the base class for an error event inside a stream.
        return ModelError(
            "model_stream_error",
            f"The model server reported an error during the reply: {_server_message(exc)}",
        )
    return ModelError(
        "model_stream_dropped", "The connection to the model broke off in the middle of a reply."
    )


async def stream_chat(
    *, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> AsyncIterator[StreamItem]:
    """Stream one model call: ``TextDelta``s, each finished ``ToolCallRequest``, then ``StreamEnd``.

    Raises ``ModelError``; whatever was yielded before it stays valid (the partial answer).
    """
    kwargs: dict[str, Any] = {
        "model": settings.CHAT_MODEL,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        kwargs["tools"] = tools
    calls: dict[int, _PartialCall] = {}
    finish_reason: str | None = None
    usage: Usage | None = None
    started = False
    try:
        # The SDK's generic POST with ``cast_to=object``: its request building, auth,
        # timeouts, retries, SSE decoding and errors, but each chunk stays the parsed JSON
        # instead of becoming pydantic objects, the largest cost of a streamed token in a
        # busy server process (docs/performance.md).
        stream = await _client().post(
            "/chat/completions",
            body=kwargs,
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        async for chunk in stream:
            started = True
            if not isinstance(chunk, dict):
                continue
            reported = chunk.get("usage")
            if isinstance(reported, dict):
                usage = Usage(
                    prompt_tokens=reported.get("prompt_tokens") or 0,
                    completion_tokens=reported.get("completion_tokens") or 0,
                )
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if isinstance(content, str) and content:
                    yield TextDelta(storable_text(content))
                for call_delta in delta.get("tool_calls") or []:
                    _add_call_delta(calls, call_delta)
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = model_error_from(exc)
        if started and error.code == "model_timeout":
            error = ModelError(
                "model_timeout",
                f"The model stopped sending in the middle of its reply for "
                f"{settings.CHAT_MODEL_TIMEOUT} seconds.",
            )
        elif started and error.code == "model_unreachable":
            # The reply had begun: the connection broke in the middle of it.
            error = ModelError(
                "model_stream_dropped",
                "The connection to the model broke off in the middle of a reply.",
            )
        logger.warning("model call failed: %s (%s)", error.code, type(exc).__name__)
        raise error from exc
    if finish_reason is None:
        raise ModelError(
            "model_stream_dropped",
            "The model's reply ended before it was finished.",
        )
    if finish_reason in ("length", "content_filter"):
        calls = {}  # cut short: a call's arguments may be cut too, so none is run
    requests = [
        ToolCallRequest(
            id=partial.id or f"call_{index}",
            name=partial.name,
            arguments="".join(partial.arguments) or "{}",
        )
        for index, partial in sorted(calls.items())
    ]
    for request in requests:
        yield request
    yield StreamEnd(finish_reason=finish_reason, tool_calls=requests, usage=usage)


async def complete_text(*, messages: list[dict[str, Any]]) -> tuple[str, Usage | None]:
    """One non-streamed completion: its text and usage. Raises ``ModelError``."""
    try:
        response = await _client().chat.completions.create(
            model=settings.CHAT_MODEL,
            messages=messages,  # type: ignore[arg-type]
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise model_error_from(exc) from exc
    usage = None
    if response.usage is not None:
        usage = Usage(
            prompt_tokens=response.usage.prompt_tokens or 0,
            completion_tokens=response.usage.completion_tokens or 0,
        )
    text = response.choices[0].message.content if response.choices else None
    return storable_text(text or ""), usage


def arguments_preview(arguments: str) -> Any:
    """The parsed arguments when they are JSON, else the raw string (for events and the UI)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
