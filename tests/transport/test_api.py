"""sessions_app.transport.api: the JSON session API, its ownership rules and its errors."""

from __future__ import annotations

import json
import uuid
from typing import Any
from unittest import mock

import pytest
from django.db import DatabaseError
from django.test import Client

from sessions_app import store
from sessions_app.models import ChatMessage, ChatSession
from sessions_app.schemas import ChatMessageData
from tests.conftest import OWNER_PASSWORD, client_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session_id(owner: Any) -> uuid.UUID:
    state = store.session_create(
        owner_id=owner.pk,
        title="Mine",
        credentials={"github": "secret-token"},
        messages=[
            ChatMessageData(role="user", content="hello", client_message_id="c-1"),
            ChatMessageData(role="assistant", content="hi there"),
        ],
    )
    return state.id


def post_json(client: Client, url: str, body: Any, method: str = "post") -> Any:
    send = getattr(client, method)
    if method in ("get", "delete"):
        return send(url)
    return send(url, data=json.dumps(body), content_type="application/json")


def error_of(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()["error"]
    return body


# --- the happy paths ----------------------------------------------------------------------


def test_create_read_rename_list_delete(owner_client: Client, owner: Any) -> None:
    created = post_json(owner_client, "/api/sessions/", {"title": "  Plans  "})
    assert created.status_code == 201
    body = created.json()
    assert body["title"] == "Plans"
    assert body["messages"] == [] and body["message_count"] == 0
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    sid = body["id"]
    assert ChatSession.objects.get(pk=sid).owner_id == owner.pk

    renamed = post_json(owner_client, f"/api/sessions/{sid}/", {"title": "Trips"}, "patch")
    assert renamed.status_code == 200 and renamed.json()["title"] == "Trips"
    assert owner_client.get(f"/api/sessions/{sid}/").json()["title"] == "Trips"

    listed = owner_client.get("/api/sessions/").json()
    assert listed["total"] == 1 and [i["id"] for i in listed["items"]] == [sid]

    deleted = owner_client.delete(f"/api/sessions/{sid}/")
    assert deleted.status_code == 204
    assert not ChatSession.objects.filter(pk=sid).exists()
    assert owner_client.get(f"/api/sessions/{sid}/").status_code == 404


def test_read_returns_messages_in_order_without_secrets(
    owner_client: Client, session_id: uuid.UUID
) -> None:
    response = owner_client.get(f"/api/sessions/{session_id}/")
    assert response.status_code == 200
    body = response.json()
    assert [(m["sequence"], m["role"], m["content"]) for m in body["messages"]] == [
        (1, "user", "hello"),
        (2, "assistant", "hi there"),
    ]
    assert body["message_count"] == 2
    text = response.content.decode()
    assert "secret-token" not in text and "credentials" not in text
    assert "client_message_id" not in text


def test_list_is_paginated_newest_first_with_total(owner_client: Client, owner: Any) -> None:
    ids = [store.session_create(owner_id=owner.pk, title=f"s{i}").id for i in range(5)]
    store.messages_append(session_id=ids[1], messages=[ChatMessageData(role="user", content="x")])
    first = owner_client.get("/api/sessions/?page=1&page_size=2").json()
    second = owner_client.get("/api/sessions/?page=2&page_size=2").json()
    third = owner_client.get("/api/sessions/?page=3&page_size=2").json()
    assert first["total"] == second["total"] == third["total"] == 5
    titles = [i["title"] for page in (first, second, third) for i in page["items"]]
    assert titles == ["s1", "s4", "s3", "s2", "s0"]
    assert first["items"][0]["message_count"] == 1
    assert (first["page"], first["page_size"]) == (1, 2)
    beyond = owner_client.get("/api/sessions/?page=9&page_size=2").json()
    assert beyond["items"] == [] and beyond["total"] == 5


# --- login and ownership ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/sessions/"), ("post", "/api/sessions/"), ("get", "/api/sessions/{sid}/"),
     ("patch", "/api/sessions/{sid}/"), ("delete", "/api/sessions/{sid}/"),
     ("get", "/api/sessions/{sid}/events/"), ("post", "/api/sessions/{sid}/messages/"),
     ("post", "/api/sessions/{sid}/cancel/")],
)  # fmt: skip
def test_anonymous_gets_401_and_nothing_changes(
    client: Client, session_id: uuid.UUID, method: str, path: str
) -> None:
    response = post_json(client, path.format(sid=session_id), {"title": "x"}, method)
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert ChatSession.objects.get(pk=session_id).title == "Mine"
    assert ChatSession.objects.count() == 1


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_stranger_sees_exactly_what_a_missing_session_gets(
    stranger_client: Client, session_id: uuid.UUID, method: str
) -> None:
    theirs = post_json(stranger_client, f"/api/sessions/{session_id}/", {"title": "x"}, method)
    missing_id = uuid.uuid4()
    missing = post_json(stranger_client, f"/api/sessions/{missing_id}/", {"title": "x"}, method)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == json.loads(
        missing.content.decode().replace(str(missing_id), str(session_id))
    )
    row = ChatSession.objects.get(pk=session_id)
    assert row.title == "Mine" and row.last_sequence == 2


def test_stranger_list_does_not_show_others_sessions(
    stranger_client: Client, session_id: uuid.UUID
) -> None:
    assert stranger_client.get("/api/sessions/").json() == {
        "items": [],
        "total": 0,
        "page": 1,
        "page_size": 20,
    }


# --- bad input: a clear 4xx and stored data untouched --------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ("{not json", "invalid_json", "not valid JSON"),
        ("[1, 2]", "invalid_input", "JSON object"),
        ('"title"', "invalid_input", "JSON object"),
        ('{"title": 5}', "invalid_input", "title"),
        ('{"title": "' + "x" * 201 + '"}', "invalid_input", "title"),
        ('{"title": "ok", "owner": 1}', "invalid_input", "owner"),
        ("{}", "invalid_input", "title: Field required"),
        (b"\xff\xfe{", "invalid_json", "not valid JSON"),
    ],
)
def test_rename_rejects_malformed_bodies(
    owner_client: Client, session_id: uuid.UUID, body: str | bytes, code: str, needle: str
) -> None:
    response = owner_client.patch(
        f"/api/sessions/{session_id}/", data=body, content_type="application/json"
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code and needle in error["message"]
    assert ChatSession.objects.get(pk=session_id).title == "Mine"


def test_create_rejects_bad_bodies_and_creates_nothing(owner_client: Client) -> None:
    bad = post_json(owner_client, "/api/sessions/", {"title": ["a"], "extra": 1})
    assert bad.status_code == 400
    details = error_of(bad)["details"]
    assert {d["field"] for d in details} == {"title", "extra"}
    form = owner_client.post("/api/sessions/", data={"title": "x"})
    assert form.status_code == 415
    assert error_of(form)["code"] == "unsupported_media_type"
    assert ChatSession.objects.count() == 0


def test_empty_body_creates_an_untitled_session(owner_client: Client) -> None:
    response = owner_client.post("/api/sessions/", data=b"", content_type="application/json")
    assert response.status_code == 201 and response.json()["title"] == ""


@pytest.mark.parametrize(
    "query", ["page=0", "page=abc", "page_size=101", "page_size=0", "colour=blue"]
)
def test_list_rejects_bad_query(owner_client: Client, query: str) -> None:
    response = owner_client.get(f"/api/sessions/?{query}")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1234", "x" * 300])
def test_malformed_session_id_is_a_404(owner_client: Client, bad_id: str) -> None:
    response = owner_client.get(f"/api/sessions/{bad_id}/")
    assert response.status_code == 404
    assert error_of(response)["code"] == "session_not_found"


def test_wrong_method_is_405_with_allow_header(owner_client: Client, session_id: uuid.UUID) -> None:
    response = owner_client.put(f"/api/sessions/{session_id}/", data="{}")
    assert response.status_code == 405
    assert response["Allow"] == "GET, PATCH, DELETE"
    assert error_of(response)["code"] == "method_not_allowed"


def test_unknown_api_path_is_a_json_404(owner_client: Client) -> None:
    response = owner_client.get("/api/nothing/here")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_oversized_body_is_413(owner_client: Client, session_id: uuid.UUID, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post_json(
        owner_client, f"/api/sessions/{session_id}/", {"title": "x" * 2000}, "patch"
    )
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"
    assert ChatSession.objects.get(pk=session_id).title == "Mine"


def test_writes_without_csrf_token_get_a_json_403(owner: Any, session_id: uuid.UUID) -> None:
    client = client_for(owner, OWNER_PASSWORD, enforce_csrf_checks=True)
    response = post_json(client, f"/api/sessions/{session_id}/", {"title": "x"}, "patch")
    assert response.status_code == 403 and error_of(response)["code"] == "csrf_failed"
    assert ChatSession.objects.get(pk=session_id).title == "Mine"
    # With the cookie's token in the header, the same request goes through.
    token = "a" * 32
    client.cookies["csrftoken"] = token
    ok = client.patch(
        f"/api/sessions/{session_id}/",
        data=json.dumps({"title": "x"}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert ok.status_code == 200


def test_database_failure_is_503_and_nothing_is_saved(
    owner_client: Client, session_id: uuid.UUID
) -> None:
    with mock.patch.object(ChatSession, "save", side_effect=DatabaseError("disk full")):
        response = post_json(owner_client, f"/api/sessions/{session_id}/", {"title": "x"}, "patch")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "store_write_failed" and "disk full" not in error["message"]
    assert owner_client.get(f"/api/sessions/{session_id}/").json()["title"] == "Mine"
    assert ChatMessage.objects.filter(session_id=session_id).count() == 2


@pytest.mark.parametrize(
    ("method", "suffix"), [("get", "events/"), ("post", "messages/"), ("post", "cancel/")]
)
def test_stranger_cannot_use_the_event_endpoints(
    stranger_client: Client, session_id: uuid.UUID, method: str, suffix: str
) -> None:
    body = {"content": "hi", "client_message_id": "s-1"}
    theirs = post_json(stranger_client, f"/api/sessions/{session_id}/{suffix}", body, method)
    missing_id = uuid.uuid4()
    missing = post_json(stranger_client, f"/api/sessions/{missing_id}/{suffix}", body, method)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
    assert ChatMessage.objects.filter(session_id=session_id).count() == 2


def test_event_endpoints_validate_input(owner_client: Client, session_id: uuid.UUID) -> None:
    events = owner_client.get(f"/api/sessions/{session_id}/events/?after=-3")
    assert events.status_code == 400 and error_of(events)["code"] == "invalid_input"
    sent = post_json(owner_client, f"/api/sessions/{session_id}/messages/", {"content": "x"})
    assert sent.status_code == 400 and "client_message_id" in error_of(sent)["message"]
    wrong = owner_client.get(f"/api/sessions/{session_id}/messages/")
    assert wrong.status_code == 405
    snapshot = owner_client.get(f"/api/sessions/{session_id}/events/").json()["snapshot"]
    assert [m["content"] for m in snapshot["messages"]] == ["hello", "hi there"]
    assert ChatMessage.objects.filter(session_id=session_id).count() == 2


def test_a_body_django_cannot_read_gets_the_json_400(owner: Any) -> None:
    """Multipart without a boundary: Django's parser refuses it before any view runs (the
    CSRF check reads the form); the API still answers its documented JSON error."""
    client = client_for(owner, OWNER_PASSWORD, enforce_csrf_checks=True)
    token = "a" * 32
    client.cookies["csrftoken"] = token
    response = client.generic(
        "POST",
        "/api/sessions/",
        b"x",
        content_type="multipart/form-data",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert error_of(response)["code"] == "bad_request"
    assert not ChatSession.objects.filter(owner=owner).exists()


def test_an_unreachable_database_outside_a_write_is_a_json_503(owner: Any) -> None:
    """A database failure the API's own error mapping does not see (here the session list's
    read) is the documented JSON 503 with ``retry_after``, not Django's HTML 500 page."""
    client = client_for(owner, OWNER_PASSWORD, raise_request_exception=False)
    with mock.patch.object(store, "session_list", side_effect=DatabaseError("gone")):
        response = client.get("/api/sessions/")
    assert response.status_code == 503 and response["Content-Type"] == "application/json"
    error = error_of(response)
    assert error["code"] == "store_unavailable" and error["retry_after"] == 2
    assert response["Retry-After"] == "2"
    page = client.get("/no-such-page/")
    assert "application/json" not in page["Content-Type"]  # the pages keep Django's
