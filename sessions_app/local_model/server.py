"""The local model's HTTP API as a plain ASGI 3 application: no Django at request time.

``LocalModelApp`` serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (streaming and
not) the way OpenAI does, replying as ``script.plan_reply`` decides. It runs standalone under
daphne (``serve.py``) or mounted under a prefix of the main server (``chatproject/asgi.py``).

Checks (API key, method, body, model) come first and answer with OpenAI's error JSON; then
``reply.Reply`` sends the planned reply, watched for ``http.disconnect`` so that a client going
away stops it at once and cancel tests and ``/error timeout`` leave nothing running behind.
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sessions_app.local_model.reply import (
    Receive,
    Reply,
    Send,
    run_until_disconnect,
    send_json,
)
from sessions_app.local_model.script import ErrorPlan, StreamErrorPlan, plan_reply
from sessions_app.local_model.shapes import (
    MAX_WORD_DELAY_MS,
    MODEL_ID,
    ErrorBody,
    ErrorDetail,
    ModelCard,
    ModelList,
    RequestInvalid,
    parse_chat_request,
)

Scope = MutableMapping[str, Any]

DEFAULT_WORD_DELAY_MS = 30
MAX_BODY_BYTES = 8 * 1024 * 1024
ENV_WORD_DELAY = "LOCAL_MODEL_WORD_DELAY_MS"
ENV_API_KEY = "LOCAL_MODEL_API_KEY"


class ConfigError(ValueError):
    """A bad ``LOCAL_MODEL_*`` value; the message names the variable."""


class LocalModelConfig(BaseModel):
    """Server-wide settings: the default pace and the API key (None: accept any key)."""

    model_config = ConfigDict(frozen=True)

    word_delay_ms: int = Field(default=DEFAULT_WORD_DELAY_MS, ge=0, le=MAX_WORD_DELAY_MS)
    api_key: str | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        word_delay_ms: int | None = None,
        api_key: str | None = None,
    ) -> LocalModelConfig:
        """Explicit arguments win over ``LOCAL_MODEL_WORD_DELAY_MS`` / ``LOCAL_MODEL_API_KEY``.

        Without Django this cannot use ``chatproject.settings.env``, but it fails the same way:
        at start-up, naming the variable.
        """
        if word_delay_ms is None:
            raw = environ.get(ENV_WORD_DELAY, "").strip()
            try:
                word_delay_ms = int(raw) if raw else DEFAULT_WORD_DELAY_MS
            except ValueError:
                raise ConfigError(f"{ENV_WORD_DELAY} must be an integer; got {raw!r}") from None
        if not 0 <= word_delay_ms <= MAX_WORD_DELAY_MS:
            raise ConfigError(
                f"{ENV_WORD_DELAY} (--word-delay-ms) must be 0..{MAX_WORD_DELAY_MS}; "
                f"got {word_delay_ms}"
            )
        if api_key is None:
            api_key = environ.get(ENV_API_KEY, "").strip()
        return cls(word_delay_ms=word_delay_ms, api_key=api_key or None)


class HttpError(Exception):
    """An OpenAI-style error response, raised before any byte of the response is sent."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(
            error=ErrorDetail(message=message, type=error_type, param=param, code=code)
        )
        self.headers = headers or []


class LocalModelApp:
    """The ASGI 3 application. One instance serves any number of concurrent requests."""

    def __init__(self, config: LocalModelConfig | None = None):
        self.config = config or LocalModelConfig()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HttpError as error:
            await send_json(send, error.status, error.body, error.headers)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = str(scope["method"]).upper()
        path = route_path(scope)
        self._check_api_key(scope)
        if path == "/v1/chat/completions":
            _require_method(method, "POST", path)
            body = await _read_body(receive)
            if body is not None:
                await self._chat_completion(body, receive, send)
        elif path == "/v1/models":
            _require_method(method, "GET", path)
            await send_json(send, 200, ModelList(data=[ModelCard()]))
        elif path.startswith("/v1/models/"):
            _require_method(method, "GET", path)
            _check_model(path.removeprefix("/v1/models/"))
            await send_json(send, 200, ModelCard())
        else:
            raise HttpError(404, f"Invalid URL ({method} {path})")

    def _check_api_key(self, scope: Scope) -> None:
        expected = self.config.api_key
        if expected is None:
            return
        given = _bearer_token(scope)
        if given is None:
            raise HttpError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(
                401, f"Incorrect API key provided: {_mask(given)}.", code="invalid_api_key"
            )

    async def _chat_completion(self, body: bytes, receive: Receive, send: Send) -> None:
        try:
            request = parse_chat_request(body)
        except RequestInvalid as error:
            raise HttpError(400, error.message, param=error.param, code=error.code) from None
        _check_model(request.model)
        plan = plan_reply(request)
        if isinstance(plan, ErrorPlan):
            raise _plan_error(plan)
        if isinstance(plan, StreamErrorPlan) and not request.stream:
            # Without a stream to break into, the error is the whole answer.
            raise HttpError(500, plan.message, error_type=plan.error_type)
        delay_ms = self.config.word_delay_ms
        if request.local_model is not None and request.local_model.word_delay_ms is not None:
            delay_ms = request.local_model.word_delay_ms
        reply = Reply(request=request, plan=plan, send=send, delay=delay_ms / 1000)
        await run_until_disconnect(receive, reply.send_all())


def route_path(scope: Scope) -> str:
    """The path inside the app, whether mounted by channels' URLRouter or by ``root_path``."""
    if "path_remaining" in scope:
        path = "/" + str(scope["path_remaining"]).lstrip("/")
    else:
        path = str(scope["path"])
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
    if len(path) > 1:
        path = path.rstrip("/")
    return path or "/"


def _require_method(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise HttpError(
            405,
            f"Not allowed to {method} on {path}. (HINT: Perhaps you meant to use a different "
            "HTTP method?)",
            headers=[(b"allow", allowed.encode())],
        )


def _check_model(model: str) -> None:
    if model != MODEL_ID:
        raise HttpError(
            404,
            f"The model `{model}` does not exist or you do not have access to it. The local "
            f"model serves only `{MODEL_ID}`.",
            code="model_not_found",
        )


def _plan_error(plan: ErrorPlan) -> HttpError:
    headers: list[tuple[bytes, bytes]] = []
    if plan.retry_after_seconds is not None:
        seconds = plan.retry_after_seconds
        headers = [
            (b"retry-after", str(math.ceil(seconds)).encode()),
            (b"retry-after-ms", str(round(seconds * 1000)).encode()),
        ]
    return HttpError(
        plan.status, plan.message, error_type=plan.error_type, code=plan.code, headers=headers
    )


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _mask(key: str) -> str:
    return key[:3] + "*" * 6 + key[-4:] if len(key) > 8 else "*" * len(key)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HttpError(413, f"Request body too large: more than {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
