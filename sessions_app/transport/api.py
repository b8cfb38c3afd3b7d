"""The JSON HTTP API for sessions. Thin: validate the input shape, call the store, send a shape.

Every error is ``{"error": {"code", "message", "details"?}}`` with a stable ``code``:

| status | code | when |
| --- | --- | --- |
| 400 | ``invalid_json`` / ``invalid_input`` | the body or query string does not parse or validate |
| 401 | ``not_authenticated`` | no logged-in user |
| 403 | ``csrf_failed`` | a write without the CSRF token of the session cookie |
| 404 | ``session_not_found`` | no such session, or another user's (they look alike) |
| 405 | ``method_not_allowed`` | the path exists, the method does not |
| 400 | ``message_too_long`` | a message over ``CHAT_MESSAGE_MAX_CHARS`` |
| 409 | ``turn_in_progress`` | a message was sent while a reply is being written |
| 413 | ``body_too_large`` | the body is over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` |
| 415 | ``unsupported_media_type`` | a body that is not ``application/json`` |
| 429 | ``message_rate_limited`` etc. | a limit (docs/reliability.md); ``Retry-After`` if useful |
| 503 | ``store_write_failed`` | the database refused the write; nothing was saved |
| 503 | ``server_shutting_down`` | this server process is restarting; send again |
| 400 | ``bad_request`` | Django could not read the request (a malformed multipart body ...) |
| 503 | ``store_unavailable`` | the database could not be reached (``retry_after``) |
| 500 | ``internal_error`` | a failure of the server; nothing is known to have changed |

Clients without websockets use the same events over HTTP: ``POST .../messages/`` starts a
turn, ``GET .../events/?after=<seq>`` returns the events since a cursor (or a snapshot when
the cursor is older than the log), ``POST .../cancel/`` stops the running turn.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.defaults import bad_request as django_bad_request
from django.views.defaults import server_error as django_server_error
from pydantic import BaseModel

from sessions_app import process, store, turns
from sessions_app.errors import (
    InvalidInput,
    LimitExceeded,
    Refused,
    SessionNotFound,
    StoreWriteError,
    validated,
)
from sessions_app.infra.db import db_sync_to_async
from sessions_app.schemas import (
    ApiError,
    ApiErrorBody,
    EventsQuery,
    MessageOut,
    MessageSendIn,
    SessionCreateIn,
    SessionListQuery,
    SessionMeta,
    SessionOut,
    SessionRenameIn,
    SessionState,
)
from sessions_app.transport.feed import feed_since

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]
AsyncView = Callable[..., Coroutine[Any, Any, HttpResponse]]


class ApiInputError(Exception):
    """The request cannot be served as sent; becomes a 4xx error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    *,
    retry_after: float | None = None,
) -> JsonResponse:
    error = ApiError(code=code, message=message, details=details, retry_after=retry_after)
    response = JsonResponse(
        ApiErrorBody(error=error).model_dump(mode="json", exclude_none=True), status=status
    )
    if retry_after is not None:
        response["Retry-After"] = str(math.ceil(retry_after))
    return response


def _shape(model: BaseModel, status: int = 200) -> JsonResponse:
    return JsonResponse(model.model_dump(mode="json"), status=status, safe=False)


def _validated[M: BaseModel](schema: type[M], data: dict[str, Any], what: str) -> M:
    try:
        return validated(schema, data)
    except InvalidInput as exc:
        summary, details = exc.describe(whole=f"({what})")
        raise ApiInputError(400, "invalid_input", f"Invalid {what}: {summary}", details) from None


def _body[M: BaseModel](request: HttpRequest, schema: type[M]) -> M:
    content_type = request.content_type or ""
    if content_type and content_type != "application/json":
        raise ApiInputError(
            415, "unsupported_media_type", f"Send JSON (application/json), not {content_type}."
        )
    raw = request.body
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ApiInputError(400, "invalid_json", "The body nests JSON too deeply.") from None
        except ValueError as exc:  # bad UTF-8 or JSON, an integer over 4,300 digits
            raise ApiInputError(400, "invalid_json", f"The body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiInputError(400, "invalid_input", "The body must be a JSON object.")
    return _validated(schema, data, "body")


def _method_not_allowed(request: HttpRequest, methods: tuple[str, ...]) -> HttpResponse | None:
    if request.method in methods:
        return None
    allowed = ", ".join(methods)
    response = error_response(
        405, "method_not_allowed", f"{request.method} is not allowed here; use {allowed}."
    )
    response["Allow"] = allowed
    return response


def _not_authenticated() -> HttpResponse:
    return error_response(401, "not_authenticated", "Log in to use the API.")


def _error_for(exc: Exception) -> HttpResponse:
    """The response for an error a view let through; re-raises anything unexpected."""
    if isinstance(exc, ApiInputError):
        return error_response(exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(413, "body_too_large", f"The body is larger than {limit} bytes.")
    if isinstance(exc, SessionNotFound):
        return error_response(404, exc.code, str(exc))
    if isinstance(exc, StoreWriteError):
        return error_response(503, exc.code, str(exc))
    if isinstance(exc, Refused):
        status = next((s for kind, s in REFUSED_STATUS if isinstance(exc, kind)), 400)
        return error_response(
            status, exc.code, exc.message, exc.details, retry_after=exc.retry_after
        )
    raise exc


REFUSED_STATUS: tuple[tuple[type[Refused], int], ...] = (
    (LimitExceeded, 429),
    (turns.TurnInProgress, 409),
    (turns.ServerDraining, 503),
)
HANDLED = (ApiInputError, RequestDataTooBig, SessionNotFound, StoreWriteError, Refused)


def api_view(*methods: str) -> Callable[[View], View]:
    """Login, method and error handling shared by every API endpoint."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refused = _method_not_allowed(request, methods)
            if refused is not None:
                return refused
            if not request.user.is_authenticated:
                return _not_authenticated()
            try:
                return view(request, *args, **kwargs)
            except HANDLED as exc:
                return _error_for(exc)

        return wrapper

    return decorate


def _owner_id(request: HttpRequest) -> int:
    owner_id = request.user.pk
    assert isinstance(owner_id, int), "api_view lets only logged-in users through"
    return owner_id


def _session_out(meta: SessionMeta, *, with_messages: bool) -> SessionOut:
    messages = None
    if with_messages and isinstance(meta, SessionState):
        messages = [MessageOut.of(m) for m in meta.messages]
    return SessionOut(
        id=meta.id,
        title=meta.title,
        created_at=meta.created_at,
        updated_at=meta.updated_at,
        usage=meta.usage,
        message_count=meta.last_sequence,
        last_event_seq=meta.last_event_seq,
        messages=messages,
    )


@api_view("GET", "POST")
def sessions_collection(request: HttpRequest) -> HttpResponse:
    """GET: one page of the user's sessions, newest first. POST: a new session."""
    owner_id = _owner_id(request)
    if request.method == "POST":
        created_in = _body(request, SessionCreateIn)
        state = store.session_create(owner_id=owner_id, title=created_in.title, limited=True)
        return _shape(_session_out(state, with_messages=True), status=201)
    query = _validated(SessionListQuery, request.GET.dict(), "query")
    page = store.session_list(owner_id=owner_id, page=query.page, page_size=query.page_size)
    return _shape(page)


@api_view("GET", "PATCH", "DELETE")
def session_detail(request: HttpRequest, session_id: str) -> HttpResponse:
    """GET: the session with its messages. PATCH: rename. DELETE: delete."""
    owner_id = _owner_id(request)
    if request.method == "PATCH":
        rename_in = _body(request, SessionRenameIn)
        meta = store.session_rename(session_id=session_id, owner_id=owner_id, title=rename_in.title)
        return _shape(_session_out(meta, with_messages=False))
    if request.method == "DELETE":
        store.session_delete(session_id=session_id, owner_id=owner_id)
        return HttpResponse(status=204)
    state = store.session_get(session_id=session_id, owner_id=owner_id)
    return _shape(_session_out(state, with_messages=True))


# --- events over HTTP (async: turns run on the server's event loop) ---------------------------


def async_api_view(*methods: str) -> Callable[[AsyncView], AsyncView]:
    """``api_view`` for async views; the view gets the user's id after the request."""

    def decorate(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refused = _method_not_allowed(request, methods)
            if refused is not None:
                return refused
            user = await request.auser()
            if not user.is_authenticated:
                return _not_authenticated()
            process.ensure_started()
            try:
                return await view(request, user.pk, *args, **kwargs)
            except HANDLED as exc:
                return _error_for(exc)

        return wrapper

    return decorate


async def _owned_session(session_id: str, owner_id: int) -> uuid.UUID:
    return await db_sync_to_async(store.session_check_owner)(
        session_id=session_id, owner_id=owner_id
    )


@async_api_view("GET")
async def session_events(request: HttpRequest, owner_id: int, session_id: str) -> HttpResponse:
    """The events after ``?after=<seq>``, or a snapshot (no cursor, or one the log lost)."""
    sid = await _owned_session(session_id, owner_id)
    query = _validated(EventsQuery, request.GET.dict(), "query")
    feed = await feed_since(sid, owner_id, query.after)
    if feed.events is None:
        assert feed.snapshot is not None
        return JsonResponse({"snapshot": feed.snapshot.as_json()})
    return JsonResponse({"events": feed.events})


@async_api_view("POST")
async def session_send(request: HttpRequest, owner_id: int, session_id: str) -> HttpResponse:
    """Send a message: the reply's events are read from ``events/``."""
    sid = await _owned_session(session_id, owner_id)
    sent = _body(request, MessageSendIn)
    started = await turns.turn_start(
        session_id=sid,
        owner_id=owner_id,
        content=sent.content,
        client_message_id=sent.client_message_id,
    )
    body = {
        "message_sequence": started.message.sequence,
        "duplicate": started.duplicate,
        "turn_id": str(started.turn_id) if started.turn_id else None,
    }
    return JsonResponse(body, status=200 if started.duplicate else 202)


@async_api_view("POST")
async def session_cancel(request: HttpRequest, owner_id: int, session_id: str) -> HttpResponse:
    """Stop the session's running turn, in whichever server process runs it."""
    sid = await _owned_session(session_id, owner_id)
    await turns.turn_cancel_anywhere(sid)
    return JsonResponse({"cancel": "requested"}, status=202)


def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    return error_response(404, "not_found", f"No API endpoint at /{request.path.lstrip('/')}.")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``handler400``: a JSON 400 for the API (a body Django's own parsers refused before any
    view ran, such as multipart without a boundary); Django's page for everything else."""
    if request.path.startswith("/api/"):
        detail = f": {exception}" if str(exception) else ""
        return error_response(400, "bad_request", f"The request could not be read{detail}.")
    return django_bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: the API answers JSON, also for a failure outside its views (the login
    lookup, a middleware); a database that cannot be reached is a 503 with ``retry_after``."""
    if not request.path.startswith("/api/"):
        return django_server_error(request)
    failure = sys.exc_info()[1]
    if isinstance(failure, DatabaseError):
        return error_response(
            503,
            "store_unavailable",
            "The database could not be reached; nothing was changed. Try again shortly.",
            retry_after=2,
        )
    return error_response(500, "internal_error", "The server failed to answer the request.")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A JSON 403 for API clients; Django's page for everything else."""
    if request.path.startswith("/api/"):
        return error_response(
            403,
            "csrf_failed",
            "CSRF check failed: send the csrftoken cookie's value in an X-CSRFToken header. "
            f"({reason})",
        )
    return django_csrf_failure(request, reason=reason)
