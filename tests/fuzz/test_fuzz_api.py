"""Fuzzing the JSON API (docs/reliability.md#fuzzing).

Random and mutated bodies, content types, query strings and session ids go to every API
endpoint that takes input. Whatever is sent: never a 5xx, always JSON; a refused request is
a 4xx with an error ``code`` from the documented set and changes nothing stored; an accepted
one changes only what it is meant to.

The bugs these properties found (and that were fixed) have a plain regression test each at
the end of the file.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from channels.db import database_sync_to_async
from django.http import HttpResponse
from django.test import AsyncClient
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from sessions_app.models import ChatMessage, ChatSession, Operation
from sessions_app.schemas import MessageSendIn
from tests.fuzz.strategies import (
    client_message_ids,
    dumps,
    edge_text,
    examples,
    json_values,
    mutated_objects,
    text_mutations,
    texts,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("chat_runtime", "_api_settings"),
]

MESSAGE_MAX_CHARS = 50
UPLOAD_MAX = 4096
# Every code a refused request may carry (sessions_app/transport/api.py).
INPUT_CODES = frozenset(
    {
        "invalid_json",
        "invalid_input",
        "unsupported_media_type",
        "body_too_large",
        "message_too_long",
        "session_not_found",
        "not_found",
    }
)


@pytest.fixture
def _api_settings(settings: Any) -> None:
    settings.CHAT_MESSAGE_MAX_CHARS = MESSAGE_MAX_CHARS
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = UPLOAD_MAX
    settings.CHAT_USER_MESSAGES_PER_MINUTE = 100_000
    settings.CHAT_USER_MAX_SESSIONS = 100_000


@pytest.fixture
async def api(owner: Any) -> AsyncClient:
    client = AsyncClient(raise_request_exception=False)  # a crash is a 500 to assert on
    await client.aforce_login(owner)
    return client


async def stored() -> tuple[list[Any], ...]:
    def read() -> tuple[list[Any], ...]:
        return (
            list(ChatSession.objects.order_by("id").values()),
            list(ChatMessage.objects.order_by("id").values()),
            list(Operation.objects.order_by("id").values()),
        )

    return await database_sync_to_async(read)()


async def check(
    client: AsyncClient,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    content_type: str = "application/json",
    may_change: bool = False,
) -> HttpResponse:
    """Send one request and check the API's promises; the response."""
    before = await stored()
    response: HttpResponse = await client.generic(method, url, data=body, content_type=content_type)
    assert response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json"
    if response.status_code >= 400:
        error = json.loads(response.content)["error"]
        assert error["code"] in INPUT_CODES, error
        assert isinstance(error["message"], str) and error["message"]
        assert set(error) <= {"code", "message", "details", "retry_after"}
    if response.status_code >= 400 or not may_change:
        assert await stored() == before, f"{method} {url} changed stored data"
    return response


# --- what to send -----------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/JSON",
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/json-patch+json",
        "*/*",
    ]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)

create_bodies = st.fixed_dictionaries({}, optional={"title": st.text(max_size=200)})
rename_bodies = st.fixed_dictionaries({"title": st.text(max_size=200)})
send_bodies = st.fixed_dictionaries(
    {"content": st.text(min_size=1, max_size=80), "client_message_id": client_message_ids}
)


def encode(obj: Any, ascii_only: bool) -> bytes:
    # Lone surrogates become invalid UTF-8 (as a broken client would send them).
    return dumps(obj, ascii_only).encode("utf-8", "surrogatepass")


def bodies(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """The endpoint's valid bodies, mutated ones, random JSON, broken JSON, random bytes,
    and bodies around the upload limit."""
    objects = valid | mutated_objects(valid)
    return st.one_of(
        st.builds(encode, objects, st.booleans()),
        st.builds(encode, json_values, st.booleans()),
        text_mutations(st.builds(dumps, objects, st.booleans())).map(
            lambda text: text.encode("utf-8", "surrogatepass")
        ),
        st.binary(max_size=200),
        st.builds(
            lambda n: b'{"title": "' + b"x" * n + b'"}',
            st.integers(UPLOAD_MAX - 40, UPLOAD_MAX + 40),
        ),
        st.just(b""),
        # Bugs these properties found (the regression tests at the end).
        st.builds(lambda n: b"[" * n, st.sampled_from([10, 900, 3_000])),
        st.builds(lambda n: b'{"title": ' + b"9" * n + b"}", st.sampled_from([20, 4_300, 4_301])),
        st.sampled_from([b'{"title": "a\\u0000b"}', b'{"content": "\\u0000"}']),
    )


def starts_a_turn(body: bytes) -> bool:
    """Would this body start a real turn (a valid message within the limit)?"""
    try:
        sent = MessageSendIn.model_validate(json.loads(body))  # as the API reads it (BOM too)
    except (ValueError, RecursionError):
        return False
    return len(sent.content) <= MESSAGE_MAX_CHARS


query_values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    texts,
    edge_text,
    st.sampled_from(
        ["", "1.0", "1e3", " 1 ", "0x1", "1_0", "\u0663", "\uff11", "-0", "+5", "None", "null"]
    ),
    st.sampled_from(["1000000", "1000001", "9223372036854775808", "99999999999999999999"]),
)
query_dicts = st.dictionaries(
    st.sampled_from(["page", "page_size", "after"]) | texts, query_values, max_size=3
)
queries = st.one_of(
    query_dicts.map(lambda q: urlencode(q, errors="surrogatepass")),
    st.text(st.sampled_from("pageszfter_=&%+-0123456789ABCDEFxz;#ÿ"), max_size=40),
)
# --- bodies -----------------------------------------------------------------------------------


@settings(max_examples=examples(60))
@given(body=bodies(create_bodies), content_type=CONTENT_TYPES)
@example(body=b'{"title": "\\ud800"}', content_type="application/json")
@example(body=b"\xef\xbb\xbf{}", content_type="application/json")
async def test_create(api: AsyncClient, body: bytes, content_type: str) -> None:
    await check(
        api, "POST", "/api/sessions/", body=body, content_type=content_type, may_change=True
    )


@settings(max_examples=examples(60))
@given(body=bodies(rename_bodies), content_type=CONTENT_TYPES)
async def test_rename(
    api: AsyncClient, fuzzed_session: uuid.UUID, body: bytes, content_type: str
) -> None:
    await check(
        api,
        "PATCH",
        f"/api/sessions/{fuzzed_session}/",
        body=body,
        content_type=content_type,
        may_change=True,
    )


@settings(max_examples=examples(60))
@given(body=bodies(send_bodies), content_type=CONTENT_TYPES)
@example(
    body=b'{"content": "' + b"y" * (MESSAGE_MAX_CHARS + 1) + b'", "client_message_id": "a"}',
    content_type="application/json",
)
async def test_send(
    api: AsyncClient, fuzzed_session: uuid.UUID, body: bytes, content_type: str
) -> None:
    # A valid message starts a real turn: not what this test is about (tests/transport/test_api.py).
    assume(not starts_a_turn(body))
    response = await check(
        api,
        "POST",
        f"/api/sessions/{fuzzed_session}/messages/",
        body=body,
        content_type=content_type,
    )
    assert response.status_code >= 400


@settings(max_examples=examples(30))
@given(body=bodies(st.just({})), content_type=CONTENT_TYPES)
async def test_cancel_ignores_any_body(
    api: AsyncClient, fuzzed_session: uuid.UUID, body: bytes, content_type: str
) -> None:
    response = await check(
        api, "POST", f"/api/sessions/{fuzzed_session}/cancel/", body=body, content_type=content_type
    )
    assert response.status_code in (202, 413)


# --- query strings and ids --------------------------------------------------------------------


@settings(max_examples=examples(60))
@given(query=queries)
@example(query="page=0")
@example(query="page_size=101")
@example(query="page=1&page=x")
async def test_list_query(api: AsyncClient, query: str) -> None:
    await check(api, "GET", f"/api/sessions/?{query}")


@settings(max_examples=examples(60))
@given(query=queries)
@example(query="after=99999999999999999999999999")
@example(query="after=-1")
async def test_events_query(api: AsyncClient, fuzzed_session: uuid.UUID, query: str) -> None:
    response = await check(api, "GET", f"/api/sessions/{fuzzed_session}/events/?{query}")
    if response.status_code == 200:
        assert set(json.loads(response.content)) in ({"events"}, {"snapshot"})


SCOPED = [
    ("GET", "{}/"),
    ("PATCH", "{}/"),
    ("DELETE", "{}/"),
    ("GET", "{}/events/"),
    ("POST", "{}/messages/"),
    ("POST", "{}/cancel/"),
]


@settings(max_examples=examples(60))
@given(
    session=texts | st.text(st.sampled_from("0123456789abcdef-{}:URNurn"), max_size=45),
    where=st.sampled_from(SCOPED),
)
@example(session="../..", where=("DELETE", "{}/"))
@example(session="%00", where=("GET", "{}/"))
async def test_random_session_ids_are_missing_sessions(
    api: AsyncClient, fuzzed_session: uuid.UUID, session: str, where: tuple[str, str]
) -> None:
    method, suffix = where
    body = encode({"title": "x", "content": "x", "client_message_id": "x"}, True)
    if method == "PATCH":
        body = encode({"title": "x"}, True)
    elif suffix.endswith("messages/"):
        body = encode({"content": "x", "client_message_id": "x"}, True)
    url = "/api/sessions/" + suffix.format(quote(session, safe="", errors="surrogatepass"))
    response = await check(api, method, url, body=body)
    assert response.status_code == 404, response.content[:200]


async def test_every_api_endpoint_with_input_is_fuzzed() -> None:
    """The API routes of the ownership matrix are all fuzzed here (path ids included)."""
    from tests.transport.test_ownership import MATRIX

    fuzzed = {
        ("POST", "api/sessions/"),
        ("GET", "api/sessions/"),
        *((method, "api/sessions/<str:session_id>/" + suffix[3:]) for method, suffix in SCOPED),
    }
    api_calls = {
        (method, route)
        for route, endpoint in MATRIX.items()
        if endpoint.kind == "api"
        for method in endpoint.calls
    }
    assert api_calls == fuzzed


# --- found by the properties above: regression tests ------------------------------------------


async def _post(api: AsyncClient, body: bytes) -> HttpResponse:
    response: HttpResponse = await api.post(
        "/api/sessions/", data=body, content_type="application/json"
    )
    return response


def _error(response: HttpResponse) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(response.content)["error"]
    return error


async def test_deeply_nested_body_is_invalid_json(api: AsyncClient) -> None:
    # json.loads raised RecursionError, which the API let through as a 500.
    response = await _post(api, b"[" * 3000)
    assert response.status_code == 400, response.status_code
    assert _error(response)["code"] == "invalid_json"


async def test_integer_over_4300_digits_is_invalid_json(api: AsyncClient, settings: Any) -> None:
    # int-max-str-digits raised a ValueError that is no JSONDecodeError: a 500.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # Django's default
    response = await _post(api, b'{"title": ' + b"1" * 4301 + b"}")
    assert response.status_code == 400, response.status_code
    assert _error(response)["code"] == "invalid_json"


async def test_huge_page_number_is_a_400(api: AsyncClient) -> None:
    # The OFFSET overflowed a database integer: a 500 on SQLite and PostgreSQL.
    response = await api.get("/api/sessions/?page=99999999999999999999")
    assert response.status_code == 400, response.status_code
    assert _error(response)["details"][0]["field"] == "page"


async def test_huge_page_number_on_the_home_page_shows_an_empty_page(
    api: AsyncClient, fuzzed_session: uuid.UUID
) -> None:
    response = await api.get("/?page=99999999999999999999")
    assert response.status_code == 200, response.status_code
    assert b"fuzzed" not in response.content  # the owner's one session is on page 1
    assert b"fuzzed" in (await api.get("/?page=1")).content


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/sessions/", b'{"title": "a\\u0000b"}'),
        ("PATCH", "/api/sessions/{fuzzed_session}/", b'{"title": "\\u0000"}'),
        (
            "POST",
            "/api/sessions/{fuzzed_session}/messages/",
            b'{"content": "a\\u0000", "client_message_id": "n"}',
        ),
    ],
)
async def test_nul_in_text_is_refused_on_every_database(
    api: AsyncClient, fuzzed_session: uuid.UUID, method: str, path: str, body: bytes
) -> None:
    # SQLite stored it; PostgreSQL refused the row, a 503 to retry forever.
    before = await stored()
    response = await api.generic(
        method,
        path.format(fuzzed_session=fuzzed_session),
        data=body,
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    error = _error(response)
    assert error["code"] == "invalid_input"
    assert "NUL" in error["message"]
    assert await stored() == before


async def test_error_bodies_do_not_amplify_the_request(api: AsyncClient, settings: Any) -> None:
    # Every unknown field was listed: 216 kB in, 2 MB out, after ~1 s of CPU.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # Django's default
    body = json.dumps({format(i, "x"): 0 for i in range(20_000)}).encode()
    response = await _post(api, body)
    assert response.status_code == 400
    assert len(response.content) <= 4 * 1024, f"{len(body)} bytes in, {len(response.content)} out"
    error = _error(response)
    assert len(error["details"]) == 10
    assert error["message"].endswith("; and 19990 more")
