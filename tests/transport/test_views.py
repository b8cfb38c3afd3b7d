"""sessions_app.transport.views: the chat UI's pages, their ownership rules and CSRF."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from sessions_app import events, store
from sessions_app.errors import SessionNotFound
from sessions_app.schemas import ChatMessageData
from tests.conftest import OWNER_PASSWORD, client_for

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = '<img src=x onerror=alert(1)><script>alert("x")</script>'


@pytest.fixture
def session_id(owner: Any) -> uuid.UUID:
    state = store.session_create(
        owner_id=owner.pk,
        title="Trip planning",
        messages=[
            ChatMessageData(role="user", content="Plan a trip", client_message_id="c-1"),
            ChatMessageData(role="assistant", content="Sure: **day one** is Lisbon."),
        ],
    )
    return state.id


def chat_url(session_id: Any) -> str:
    return reverse("chat", kwargs={"session_id": session_id})


def without_tokens(html: str) -> str:
    """The page without its per-response CSRF tokens, to compare two renders."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", html)


def embedded_snapshot(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="chat-snapshot" type="application/json">(.*?)</script>', html)
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


# --- login -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        reverse("home"),
        f"/sessions/{uuid.uuid4()}/",
        f"/sessions/{uuid.uuid4()}/rename/",
        f"/sessions/{uuid.uuid4()}/delete/",
    ],
)
def test_pages_need_login(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_new_chat_needs_login(client: Client) -> None:
    response = client.post(reverse("session-new"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_and_form(client: Client, owner: Any) -> None:
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'<label for="id_username">Username</label>' in page.content
    response = client.post(
        reverse("login"), {"username": "owner", "password": OWNER_PASSWORD, "next": "/"}
    )
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200


def test_logout_is_a_post(owner_client: Client) -> None:
    response = owner_client.post(reverse("logout"))
    assert response.status_code == 302
    assert owner_client.get(reverse("home")).status_code == 302


# --- the list ----------------------------------------------------------------------------


def test_home_lists_own_sessions_newest_first(
    owner_client: Client, owner: Any, stranger: Any
) -> None:
    older = store.session_create(owner_id=owner.pk, title="Older")
    newer = store.session_create(owner_id=owner.pk)
    store.session_create(owner_id=stranger.pk, title="Not yours")
    html = owner_client.get(reverse("home")).content.decode()
    assert "Not yours" not in html
    assert html.index(chat_url(newer.id)) < html.index(chat_url(older.id))
    assert "Untitled chat" in html and "Older" in html
    assert "2 chats" in html


def test_home_pages(owner_client: Client, owner: Any, settings: Any) -> None:
    settings.CHAT_SESSIONS_PAGE_SIZE = 2
    for n in range(3):
        store.session_create(owner_id=owner.pk, title=f"chat {n}")
    first = owner_client.get(reverse("home")).content.decode()
    assert "chat 2" in first and "chat 0" not in first and "?page=2" in first
    second = owner_client.get(reverse("home") + "?page=2").content.decode()
    assert "chat 0" in second and "chat 2" not in second
    assert owner_client.get(reverse("home") + "?page=oops").status_code == 200


# --- the chat page -----------------------------------------------------------------------


def test_chat_page_renders_history_and_snapshot(
    owner_client: Client, session_id: uuid.UUID
) -> None:
    response = owner_client.get(chat_url(session_id))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Plan a trip" in html and "**day one** is Lisbon." in html
    # Messages but no event yet: the counter starts past any seq that may have gone out
    # unsaved (events.log, "Counter loss").
    head = events.SEQ_RESTART_GAP + 1
    assert f'data-seq="{head}"' in html
    snapshot = embedded_snapshot(html)
    assert snapshot["type"] == "snapshot" and snapshot["seq"] == head
    assert [m["content"] for m in snapshot["messages"]] == [
        "Plan a trip",
        "Sure: **day one** is Lisbon.",
    ]
    assert "client_message_id" not in html
    # The sidebar marks this chat; the page has its script and labelled controls.
    assert 'aria-current="page"' in html
    assert '<label for="prompt"' in html and 'aria-live="polite"' in html
    assert "js/chat.js" in html and "vendor/dompurify/purify.min.js" in html
    assert "script-src 'self'" in response["Content-Security-Policy"]


def test_chat_page_shows_the_offline_demo_banner(
    owner_client: Client, session_id: uuid.UUID, settings: Any
) -> None:
    banner = "Offline demo model: replies follow a fixed script."
    settings.CHAT_USING_LOCAL_MODEL = True
    html = owner_client.get(chat_url(session_id)).content.decode()
    assert banner in html and '<p id="demo-banner" class="banner">' in html
    settings.CHAT_USING_LOCAL_MODEL = False
    html = owner_client.get(chat_url(session_id)).content.decode()
    assert '<p id="demo-banner" class="banner" hidden>' in html


def test_stranger_and_missing_session_look_alike(
    stranger_client: Client, session_id: uuid.UUID
) -> None:
    theirs = stranger_client.get(chat_url(session_id))
    missing = stranger_client.get(chat_url(uuid.uuid4()))
    assert theirs.status_code == missing.status_code == 404
    assert "Chat not found" in theirs.content.decode()
    assert without_tokens(theirs.content.decode()) == without_tokens(missing.content.decode())
    assert "Trip planning" not in theirs.content.decode()


def test_history_escapes_hostile_content(owner_client: Client, owner: Any) -> None:
    state = store.session_create(
        owner_id=owner.pk,
        title=HOSTILE,
        messages=[
            ChatMessageData(role="user", content=HOSTILE),
            ChatMessageData(
                role="assistant",
                content=HOSTILE + "</script><script>alert(2)</script>",
                tool_calls=[
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "calculator", "arguments": HOSTILE},
                    }
                ],
            ),
            ChatMessageData(role="tool", name="calculator", tool_call_id="call_1", content=HOSTILE),
        ],
    )
    html = owner_client.get(chat_url(state.id)).content.decode()
    assert "<img" not in html
    assert "<script>" not in html and "alert(2)</script>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    # The embedded snapshot is JSON with <, > and & escaped, and still parses back.
    snapshot = embedded_snapshot(html)
    assert snapshot["messages"][0]["content"] == HOSTILE
    assert snapshot["session"]["title"] == HOSTILE


def test_pending_tool_message_shows_the_operation_widget(owner_client: Client, owner: Any) -> None:
    call = {
        "id": "call_d",
        "type": "function",
        "function": {"name": "draft_document", "arguments": '{"topic": "tea"}'},
    }
    state = store.session_create(
        owner_id=owner.pk,
        messages=[
            ChatMessageData(role="user", content="draft it"),
            ChatMessageData(role="assistant", content=None, tool_calls=[call]),
            ChatMessageData(
                role="tool", name="draft_document", tool_call_id="call_d", status="pending"
            ),
        ],
    )
    html = owner_client.get(chat_url(state.id)).content.decode()
    assert 'class="op-widget"' in html
    assert "you can close this tab and come back" in html
    assert '<progress class="op-progress"' in html
    assert 'class="elapsed" data-since="' in html


def test_finished_long_tool_shows_its_result(owner_client: Client, owner: Any) -> None:
    state = store.session_create(
        owner_id=owner.pk,
        messages=[
            ChatMessageData(role="user", content="draft it"),
            ChatMessageData(
                role="tool",
                name="draft_document",
                tool_call_id="call_d",
                content="# Tea\n\n## Introduction\n\nAbout tea.",
            ),
        ],
    )
    html = owner_client.get(chat_url(state.id)).content.decode()
    assert "you can close this tab and come back" not in html
    assert '<details class="tool-result" open>' in html and "## Introduction" in html


# --- new, rename, delete -------------------------------------------------------------------


def csrf_client(user: Any, password: str) -> Client:
    return client_for(user, password, enforce_csrf_checks=True)


def csrf_token(client: Client, url: str) -> str:
    html = client.get(url).content.decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_new_chat_creates_and_redirects(owner: Any) -> None:
    client = csrf_client(owner, OWNER_PASSWORD)
    assert client.post(reverse("session-new")).status_code == 403
    assert store.session_list(owner_id=owner.pk).total == 0
    token = csrf_token(client, reverse("home"))
    response = client.post(reverse("session-new"), {"csrfmiddlewaretoken": token})
    [created] = store.session_list(owner_id=owner.pk).items
    assert response.status_code == 302 and response["Location"] == chat_url(created.id)
    assert created.title == ""
    assert client.get(reverse("session-new")).status_code == 405


def test_rename(owner: Any, session_id: uuid.UUID) -> None:
    client = csrf_client(owner, OWNER_PASSWORD)
    url = reverse("session-rename", kwargs={"session_id": session_id})
    assert client.post(url, {"title": "Nope"}).status_code == 403
    token = csrf_token(client, chat_url(session_id))
    response = client.post(url, {"title": "  Lisbon in May  ", "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == chat_url(session_id)
    assert store.session_get(session_id=session_id).title == "Lisbon in May"
    too_long = client.post(url, {"title": "x" * 201, "csrfmiddlewaretoken": token})
    assert too_long.status_code == 400 and b'role="alert"' in too_long.content
    assert store.session_get(session_id=session_id).title == "Lisbon in May"
    page = client.get(url)
    assert page.status_code == 200 and b'value="Lisbon in May"' in page.content


def test_delete_asks_then_deletes(owner: Any, session_id: uuid.UUID) -> None:
    client = csrf_client(owner, OWNER_PASSWORD)
    url = reverse("session-delete", kwargs={"session_id": session_id})
    page = client.get(url)
    assert page.status_code == 200
    assert b"Delete this chat?" in page.content and b"cannot be undone" in page.content
    assert client.post(url).status_code == 403
    token = csrf_token(client, url)
    response = client.post(url, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == reverse("home")
    with pytest.raises(SessionNotFound):
        store.session_get(session_id=session_id)
    assert client.get(chat_url(session_id)).status_code == 404


@pytest.mark.parametrize("action", ["session-rename", "session-delete"])
def test_stranger_cannot_rename_or_delete(
    stranger_client: Client, session_id: uuid.UUID, action: str
) -> None:
    url = reverse(action, kwargs={"session_id": session_id})
    missing = reverse(action, kwargs={"session_id": uuid.uuid4()})
    assert stranger_client.get(url).status_code == 404
    response = stranger_client.post(url, {"title": "Hijacked"})
    assert response.status_code == 404
    other = stranger_client.post(missing, {"title": "Hijacked"})
    assert without_tokens(response.content.decode()) == without_tokens(other.content.decode())
    assert store.session_get(session_id=session_id).title == "Trip planning"


# --- static files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/static/css/app.css",
        "/static/js/chat.js",
        "/static/vendor/marked/marked.umd.js",
        "/static/vendor/dompurify/purify.min.js",
    ],
)
def test_static_files_are_served(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert len(body) > 1000
