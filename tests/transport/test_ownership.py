"""Ownership audit (issue 6, part 4; docs/reliability.md#ownership-audit).

Every HTTP endpoint, found by walking the URL resolver (so a new one cannot be forgotten:
``test_matrix_lists_every_endpoint`` fails until it has an entry in ``MATRIX``), is called
with every method it answers, as anonymous, as the owner and as a stranger, on the owner's
session and on a session that does not exist:

- anonymous: a 401 JSON error from the API, a redirect to the login page from a page;
- the owner: success;
- the stranger: exactly the answer a missing session gets (status, content type, redirect
  and body, with the session id swapped), and the owner's stored data is unchanged.

The same for every client frame type on the websocket (through the real ASGI application,
cookie and ``Origin`` included): 4401 for anonymous, 4404 for a stranger exactly as for a
missing session (and a frame racing the close is ignored), the frame works for the owner.

The admin is not in the matrix: it is staff-only as a whole (Django's ``admin_view``), not
per owner. ``test_admin_urls_of_the_owners_objects_send_non_staff_to_login`` checks that a
logged-in non-staff user (the stranger, and the owner too) only ever gets the admin login
redirect for every admin URL of the owner's objects.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.http import HttpResponse
from django.test import AsyncClient, Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from chatproject.asgi import application
from sessions_app import events, store, turns
from sessions_app.models import ChatMessage, ChatSession, Operation, UsageRecord
from sessions_app.schemas import ChatMessageData, Usage
from sessions_app.transport.client_frames import CLIENT_FRAME_TYPES
from tests.chat_fixtures import FRAME_TIMEOUT, Socket

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("chat_runtime", "_generous_limits"),
]

ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
OWNER_TITLE = "Owner-secret-title-7c1"
OWNER_TEXT = "owner-secret-message-2f9"
MALFORMED_ID = "not-a-session"
ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture
def _generous_limits(settings: Any) -> None:
    """The audit sends more than a user would; the rate limits are tested elsewhere."""
    settings.CHAT_USER_MESSAGES_PER_MINUTE = 100_000
    settings.CHAT_WS_FRAMES_PER_SECOND = 100_000
    settings.CHAT_USER_MAX_SOCKETS = 100_000


# --- the matrix ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """How to call one method of an endpoint, and what the owner gets."""

    owner_status: int
    body: Any = None  # JSON for the API, a form (dict) for pages; None: no body
    queries: tuple[str, ...] = ("",)
    # For endpoints without a session in the path: what anonymous and a stranger get.
    anonymous_status: int | None = None
    stranger_status: int | None = None
    wait_for_turn: bool = False


@dataclass(frozen=True)
class Endpoint:
    """``kind``: ``api`` (JSON, login required), ``page`` (HTML, login required),
    ``public`` (answers anyone; must not show the owner's data to others), ``api-fallback``
    (the JSON 404 for unknown API paths)."""

    kind: str
    calls: Mapping[str, Call]
    # A concrete path with ``{sid}``; by default the route with ``<…:session_id>`` replaced.
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


MATRIX: dict[str, Endpoint] = {
    "accounts/login/": Endpoint(
        "public",
        {
            "GET": Call(200),
            "HEAD": Call(200),
            "POST": Call(200, body={"username": "owner", "password": "wrong"}),
            # ProcessFormView.put is post: Django's own class-based form view answers PUT.
            "PUT": Call(200, body={"username": "owner", "password": "wrong"}),
            "OPTIONS": Call(200),
        },
    ),
    "accounts/logout/": Endpoint("public", {"POST": Call(302), "OPTIONS": Call(200)}),
    "api/sessions/": Endpoint(
        "api",
        {
            "GET": Call(200, queries=("", "page=1&page_size=5")),
            "POST": Call(201, body={"title": "made by the audit"}),
        },
    ),
    "api/sessions/<str:session_id>/": Endpoint(
        "api",
        {
            "GET": Call(200),
            "PATCH": Call(200, body={"title": "renamed by the audit"}),
            "DELETE": Call(204),
        },
    ),
    "api/sessions/<str:session_id>/events/": Endpoint(
        "api", {"GET": Call(200, queries=("", "after=0"))}
    ),
    "api/sessions/<str:session_id>/messages/": Endpoint(
        "api",
        {
            "POST": Call(
                202, body={"content": "hello", "client_message_id": "audit-1"}, wait_for_turn=True
            )
        },
    ),
    "api/sessions/<str:session_id>/cancel/": Endpoint("api", {"POST": Call(202)}),
    "api/^(?P<path>.*)$": Endpoint(
        "api-fallback",
        {m: Call(404, body={"x": 1} if m in WRITE_METHODS else None) for m in ALL_METHODS},
        path="/api/sessions/{sid}/no-such-thing/",
    ),
    "": Endpoint("page", {"GET": Call(200, queries=("", "page=2"))}),
    "sessions/new/": Endpoint("page", {"POST": Call(302)}),
    "sessions/<uuid:session_id>/": Endpoint("page", {"GET": Call(200)}),
    "sessions/<uuid:session_id>/rename/": Endpoint(
        "page", {"GET": Call(200), "POST": Call(302, body={"title": "renamed"})}
    ),
    "sessions/<uuid:session_id>/delete/": Endpoint(
        "page", {"GET": Call(200), "POST": Call(302)}
    ),
}  # fmt: skip

SESSION_PARAM = re.compile(r"<(?:\w+:)?session_id>")


def routes() -> Iterator[tuple[str, URLPattern]]:
    """Every URL pattern outside the admin, as its full route string."""

    def walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, URLPattern]]:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                if pattern.namespace == "admin":
                    continue  # staff-only; see the module docstring and the admin test
                yield from walk(pattern.url_patterns, route)
            else:
                yield route, pattern

    yield from walk(get_resolver().url_patterns, "")


def path_of(route: str, sid: Any) -> str:
    endpoint = MATRIX[route]
    if endpoint.path is not None:
        return endpoint.path.format(sid=sid)
    assert "<" not in SESSION_PARAM.sub("", route), f"give {route!r} an explicit path"
    return "/" + SESSION_PARAM.sub(str(sid), route)


def scoped(route: str) -> bool:
    """Does the endpoint name a session (so a stranger must see a missing one)?"""
    return "{sid}" in (MATRIX[route].path or "") or bool(SESSION_PARAM.search(route))


CASES = [(route, method) for route, endpoint in MATRIX.items() for method in endpoint.calls]


# --- data and requests ----------------------------------------------------------------------


@pytest.fixture
async def owned(owner: Any) -> uuid.UUID:
    """The owner's session: a title, three messages, a finished operation, usage."""

    def make() -> uuid.UUID:
        state = store.session_create(
            owner_id=owner.pk,
            title=OWNER_TITLE,
            credentials={"github": "owner-credential"},
            messages=[
                ChatMessageData(role="user", content=OWNER_TEXT, client_message_id="c-1"),
                ChatMessageData(
                    role="assistant",
                    content=None,
                    tool_calls=[
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "timer", "arguments": '{"seconds": 1}'},
                        }
                    ],
                ),
                ChatMessageData(
                    role="tool", name="timer", tool_call_id="call_1", content="done: 1 s"
                ),
            ],
        )
        Operation.objects.create(
            session_id=state.id,
            message=ChatMessage.objects.get(session_id=state.id, sequence=3),
            tool_call_id="call_1",
            tool_name="timer",
            arguments={"seconds": 1},
            status=Operation.Status.SUCCEEDED,
            result="done: 1 s",
            attempts=1,
        )
        store.usage_record(session_id=state.id, usage=Usage(prompt_tokens=7, completion_tokens=3))
        return state.id

    return await database_sync_to_async(make)()


async def owner_data(owner: Any) -> dict[str, Any]:
    """Everything stored about the owner's sessions, and each session's event head."""

    def read() -> dict[str, Any]:
        mine = {"session__owner_id": owner.pk}
        return {
            "sessions": list(ChatSession.objects.filter(owner_id=owner.pk).order_by("id").values()),
            "messages": list(
                ChatMessage.objects.filter(**mine).order_by("session_id", "sequence").values()
            ),
            "operations": list(Operation.objects.filter(**mine).order_by("id").values()),
            "usage": list(UsageRecord.objects.filter(**mine).order_by("id").values()),
        }

    data = await database_sync_to_async(read)()
    data["heads"] = {row["id"]: await events.event_head(row["id"]) for row in data["sessions"]}
    return data


async def client_as(user: AbstractBaseUser | None) -> AsyncClient:
    client = AsyncClient()
    if user is not None:
        await client.aforce_login(user)
    return client


async def call(
    user: AbstractBaseUser | None, kind: str, method: str, path: str, query: str, body: Any
) -> HttpResponse:
    client = await client_as(user)
    if body is None:
        data, content_type = b"", "application/octet-stream"
    elif isinstance(body, bytes):
        data, content_type = body, "application/json"
    elif kind == "page" or (kind == "public" and isinstance(body, dict)):
        data, content_type = urlencode(body).encode(), "application/x-www-form-urlencoded"
    else:
        data, content_type = json.dumps(body).encode(), "application/json"
    url = f"{path}?{query}" if query else path
    response: HttpResponse = await client.generic(method, url, data=data, content_type=content_type)
    return response


CSRF_VALUE = re.compile(r'(name="csrfmiddlewaretoken" value=|"csrf_token": )"[^"]*"')


def normalized(response: HttpResponse, sid: Any) -> tuple[int, str, str, str]:
    """What a client can read from a response, with ``sid`` (and CSRF tokens) blanked."""
    body = CSRF_VALUE.sub("", response.content.decode("utf-8", "replace"))
    return (
        response.status_code,
        response.get("Content-Type", ""),
        response.get("Location", "").replace(str(sid), "<sid>"),
        body.replace(str(sid), "<sid>"),
    )


def reveals_owner(response: HttpResponse, owned: uuid.UUID) -> bool:
    text = response.content.decode("utf-8", "replace") + response.get("Location", "")
    return any(secret in text for secret in (str(owned), OWNER_TITLE, OWNER_TEXT))


def bodies_for(route: str, method: str) -> list[Any]:
    """The endpoint's own body and, for writes, a malformed one: the stranger must not tell
    validation from ownership either."""
    endpoint, good = MATRIX[route], MATRIX[route].calls[method].body
    if method not in WRITE_METHODS:
        return [good]
    bad = {"title": "x" * 5000} if endpoint.kind == "page" else b"{not json"
    return [good, bad]


def error_code(response: HttpResponse) -> str:
    """The JSON error's code; ``"(head)"`` for a HEAD answer, which has no body."""
    assert response["Content-Type"] == "application/json", response.content[:200]
    if response.asgi_request.method == "HEAD":
        assert response.content == b""
        return "(head)"
    code: str = json.loads(response.content)["error"]["code"]
    return code


# --- the matrix is complete -----------------------------------------------------------------


async def test_matrix_lists_every_endpoint() -> None:
    found = {route for route, _ in routes()}
    assert found - MATRIX.keys() == set(), "add these endpoints to MATRIX in this file"
    assert MATRIX.keys() - found == set(), "these MATRIX entries match no URL any more"


@pytest.mark.parametrize("route", sorted(MATRIX))
async def test_matrix_lists_every_method_an_endpoint_answers(
    route: str, owner: Any, owned: uuid.UUID
) -> None:
    """Any method left out of the matrix must be refused with 405, even for the owner."""
    endpoint = MATRIX[route]
    before = await owner_data(owner)
    for method in ALL_METHODS:
        if method in endpoint.calls:
            continue
        body = {"title": "x"} if method in WRITE_METHODS else None
        response = await call(owner, endpoint.kind, method, path_of(route, owned), "", body)
        assert response.status_code == 405, f"{method} {route}: add it to MATRIX"
        if endpoint.kind == "api":
            assert error_code(response) in ("method_not_allowed", "(head)")
    assert await owner_data(owner) == before


# --- HTTP: anonymous, stranger, owner -------------------------------------------------------


@pytest.mark.parametrize(("route", "method"), CASES, ids=[f"{m} /{r}" for r, m in CASES])
async def test_http_endpoint_as_anonymous_stranger_and_owner(
    route: str, method: str, owner: Any, stranger: Any, owned: uuid.UUID
) -> None:
    endpoint, spec = MATRIX[route], MATRIX[route].calls[method]
    kind, missing = endpoint.kind, uuid.uuid4()
    before = await owner_data(owner)
    for query in spec.queries:
        for body in bodies_for(route, method):
            await _anonymous(route, method, query, body, owned, missing)
            await _stranger(route, method, query, body, owned, missing, stranger)
            assert await owner_data(owner) == before, f"{method} {route} changed the owner's data"

    # The owner: success on the own session, the missing-session answer on another id.
    for query in spec.queries:
        response = await call(owner, kind, method, path_of(route, owned), query, spec.body)
        assert response.status_code == spec.owner_status, response.content[:300]
        if kind in ("api", "api-fallback") and response.status_code != 204:
            assert response["Content-Type"] == "application/json"
        if spec.wait_for_turn:
            await turns.turn_wait(owned)
    if scoped(route) and kind != "api-fallback":
        gone = await call(owner, kind, method, path_of(route, missing), "", spec.body)
        assert gone.status_code == 404
        if kind == "api":
            as_stranger = await call(stranger, kind, method, path_of(route, missing), "", spec.body)
            assert normalized(gone, missing) == normalized(as_stranger, missing)


async def _anonymous(
    route: str, method: str, query: str, body: Any, owned: uuid.UUID, missing: uuid.UUID
) -> None:
    endpoint, spec = MATRIX[route], MATRIX[route].calls[method]
    response = await call(None, endpoint.kind, method, path_of(route, owned), query, body)
    if endpoint.kind == "api":
        assert response.status_code == 401
        assert error_code(response) == "not_authenticated"
    elif endpoint.kind == "page":
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login") + "?next=")
    elif endpoint.kind == "api-fallback":
        assert response.status_code == 404 and error_code(response) in ("not_found", "(head)")
    else:
        expected = spec.anonymous_status or spec.owner_status
        assert response.status_code == expected
        assert not reveals_owner(response, owned)
    if scoped(route):
        other = await call(None, endpoint.kind, method, path_of(route, missing), query, body)
        assert normalized(response, owned) == normalized(other, missing)


async def _stranger(
    route: str,
    method: str,
    query: str,
    body: Any,
    owned: uuid.UUID,
    missing: uuid.UUID,
    stranger: Any,
) -> None:
    endpoint, spec = MATRIX[route], MATRIX[route].calls[method]
    kind = endpoint.kind
    theirs = await call(stranger, kind, method, path_of(route, owned), query, body)
    assert not reveals_owner_beyond_id(theirs, owned)
    if not scoped(route):
        if body is spec.body:
            assert theirs.status_code == (spec.stranger_status or spec.owner_status)
        assert not reveals_owner(theirs, owned)
        return
    gone = await call(stranger, kind, method, path_of(route, missing), query, body)
    assert normalized(theirs, owned) == normalized(gone, missing)
    # A malformed body may be refused before the session is looked up: the same either way.
    assert gone.status_code == 404 if body is spec.body else 400 <= gone.status_code < 500
    if kind == "api":
        if body is spec.body:
            assert error_code(theirs) == "session_not_found"
        malformed = await call(stranger, kind, method, path_of(route, MALFORMED_ID), query, body)
        assert normalized(theirs, owned) == normalized(malformed, MALFORMED_ID)


def reveals_owner_beyond_id(response: HttpResponse, owned: uuid.UUID) -> bool:
    """The id is the stranger's own input (echoed like any missing id); nothing else."""
    text = response.content.decode("utf-8", "replace")
    return OWNER_TITLE in text or OWNER_TEXT in text


# --- the admin: staff only ------------------------------------------------------------------


def admin_urls(objects: dict[str, Any]) -> Iterator[str]:
    """Every admin URL of a ``sessions_app`` model, with the owner's object of that model;
    the app index; and "view on site" of the owner's session."""
    admin = next(p for p in get_resolver().url_patterns if getattr(p, "namespace", None) == "admin")

    def walk(patterns: list[Any], prefix: str) -> Iterator[str]:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, route)
            elif route.startswith("admin/sessions_app/"):
                model = route.split("/")[2]
                yield "/" + route.replace("<path:object_id>", str(objects[model]))

    yield from walk(admin.url_patterns, "admin/")
    yield reverse("admin:app_list", kwargs={"app_label": "sessions_app"})
    session_type = ContentType.objects.get_for_model(ChatSession)
    yield reverse("admin:view_on_site", args=[session_type.pk, objects["chatsession"]])


async def test_admin_urls_of_the_owners_objects_send_non_staff_to_login(
    owner: Any, stranger: Any, owned: uuid.UUID
) -> None:
    await database_sync_to_async(_admin_refuses_non_staff)(owner, stranger, owned)


def _admin_refuses_non_staff(owner: Any, stranger: Any, owned: uuid.UUID) -> None:
    operation = Operation.objects.get(session_id=owned)
    urls = list(admin_urls({"chatsession": owned, "operation": operation.pk}))
    names = {u.rstrip("/").rsplit("/", 1)[-1] for u in urls}
    assert {"change", "delete", "history", "add"} <= names, urls
    before = admin_snapshot(owner)
    login = reverse("admin:login")
    for user in (None, stranger, owner):  # nobody here is staff
        client = Client()
        if user is not None:
            client.force_login(user)
        for url in urls:
            for method in ("get", "post"):
                data = {"title": "hijacked", "post": "yes", "action": "delete_selected"}
                response = getattr(client, method)(url, data=data if method == "post" else None)
                assert response.status_code == 302, (method, url, response.status_code)
                assert response["Location"].startswith(login), (method, url)
    assert admin_snapshot(owner) == before


def admin_snapshot(owner: Any) -> tuple[list[Any], list[Any], list[Any]]:
    return (
        list(ChatSession.objects.filter(owner=owner).order_by("id").values()),
        list(ChatMessage.objects.filter(session__owner=owner).order_by("id").values()),
        list(Operation.objects.filter(session__owner=owner).order_by("id").values()),
    )


# --- the websocket: every client frame type --------------------------------------------------

FRAMES: dict[str, dict[str, Any] | str] = {
    "send": {"type": "send", "content": "hello from the audit", "client_message_id": "ws-1"},
    "cancel": {"type": "cancel"},
    "resume": {"type": "resume", "last_seq": None},
    "ping": {"type": "ping", "id": "audit"},
    "invalid": "{nope",
}


async def test_websocket_matrix_lists_every_client_frame_type() -> None:
    assert set(FRAMES) == {*CLIENT_FRAME_TYPES, "invalid"}


async def cookie_of(user: AbstractBaseUser) -> bytes:
    client = await client_as(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def communicator(cookie: bytes | None, session: Any) -> WebsocketCommunicator:
    headers = [ORIGIN] + ([(b"cookie", cookie)] if cookie else [])
    return WebsocketCommunicator(application, f"/ws/sessions/{session}/", headers=headers)


async def refused_socket(
    cookie: bytes | None, session: Any, frame: dict[str, Any] | str
) -> list[Any]:
    """Everything a socket gets when it sends ``frame`` right after connecting."""
    socket = communicator(cookie, session)
    connected, _ = await socket.connect(timeout=FRAME_TIMEOUT)
    assert connected  # accepted, then closed with a code
    await socket.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))
    outputs = [await socket.receive_output(timeout=FRAME_TIMEOUT)]
    while not await socket.receive_nothing(timeout=0.2):
        outputs.append(await socket.receive_output(timeout=FRAME_TIMEOUT))
    await socket.disconnect()
    return outputs


@pytest.mark.parametrize("kind", sorted(FRAMES))
async def test_websocket_frame_as_anonymous_stranger_and_owner(
    kind: str, owner: Any, stranger: Any, owned: uuid.UUID
) -> None:
    frame = FRAMES[kind]
    before = await owner_data(owner)

    anonymous = await refused_socket(None, owned, frame)
    assert anonymous == [{"type": "websocket.close", "code": 4401}]

    cookie = await cookie_of(stranger)
    theirs = await refused_socket(cookie, owned, frame)
    missing = await refused_socket(cookie, uuid.uuid4(), frame)
    malformed = await refused_socket(cookie, MALFORMED_ID, frame)
    assert theirs == missing == malformed == [{"type": "websocket.close", "code": 4404}]
    assert await owner_data(owner) == before, "a refused socket's frame was acted upon"

    socket = Socket(communicator(await cookie_of(owner), owned))
    connected, _ = await socket.communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected
    assert (await socket.next())["type"] == "hello"
    await socket.send(frame)
    if kind == "invalid":  # a refused first frame implies nothing
        error = await socket.next()
        assert error["type"] == "error" and error["code"] == "bad_json"
    else:
        snapshot = await socket.next()  # asked for, or implied by the first frame
        assert snapshot["type"] == "snapshot" and snapshot["session"]["title"] == OWNER_TITLE
        if kind != "resume":
            reply = await socket.next()
            assert reply["type"] == {"send": "ack", "cancel": "ack", "ping": "pong"}[kind]
    if kind == "send":
        assert socket.frames[-1]["duplicate"] is False
        finished = await socket.until_type("turn_finished")
        assert finished[-1]["status"] == "completed"
        stored = await database_sync_to_async(
            lambda: list(ChatMessage.objects.filter(session_id=owned).values_list("content"))
        )()
        assert ("hello from the audit",) in stored
    await socket.send({"type": "ping", "id": "still-there"})
    pong = (await socket.until_type("pong"))[-1]
    assert pong["id"] == "still-there"
    await socket.close()
