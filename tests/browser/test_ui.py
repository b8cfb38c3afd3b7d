"""The chat UI in a real browser (Debian's Chromium through Playwright) against a real daphne.

The server is ``tests.servers.daphne()``: the whole app on pytest-django's test database,
with the local scripted model mounted in it (docs/local-model.md), so replies stream for
real. Two tests replace the websocket with a scripted fake (``page.route_web_socket``) to
drive protocol corners a real server rarely shows: gaps, snapshots, close codes, and the
operation events of long-running tools.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from sessions_app import store
from tests.browser.conftest import CHROMIUM
from tests.conftest import OWNER_PASSWORD, STRANGER_PASSWORD
from tests.servers import daphne

if shutil.which(CHROMIUM) is None:
    pytest.skip(
        f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)",
        allow_module_level=True,
    )
pytest.importorskip(
    "playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')"
)

from playwright.sync_api import BrowserContext, Page, WebSocketRoute, expect

if TYPE_CHECKING:
    from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = (
    "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"
    "[x](javascript:window.__pwned=3)"
)


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    with daphne("daphne-ui") as address:
        yield address


def chat_path(session_id: Any) -> str:
    return f"/sessions/{session_id}/"


def log_in(page: Page, username: str, password: str, path: str = "/") -> None:
    """Open ``path``, get sent to the login form, fill it in, and land on ``path``."""
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next="))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def open_chat(page: Page, user: User, password: str, session_id: Any) -> None:
    log_in(page, user.get_username(), password, chat_path(session_id))
    expect(page.locator("#conn")).to_have_text("Live")


def send(page: Page, text: str) -> None:
    prompt = page.get_by_label("Message")
    prompt.fill(text)
    prompt.press("Enter")
    expect(page.locator("article.msg-user").last).to_contain_text(text.splitlines()[0])


def last_assistant(page: Page) -> Any:
    return page.locator("article.msg-assistant").last


def wait_idle(page: Page) -> None:
    """The turn is over: Stop is gone and Send is back."""
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()


# --- real server ---------------------------------------------------------------------------


def test_log_in_and_get_a_streamed_reply(page: Page, owner: User) -> None:
    log_in(page, owner.get_username(), OWNER_PASSWORD)
    expect(page.get_by_role("heading", name="Your chats")).to_be_visible()
    page.get_by_role("button", name="New chat").click()
    expect(page).to_have_url(re.compile(r"/sessions/[0-9a-f-]{36}/$"))
    expect(page.locator("#conn")).to_have_text("Live")
    expect(page.locator("#demo-banner")).to_contain_text("Offline demo model")
    # Count the distinct lengths the answer is shown at: streaming means many.
    page.evaluate(
        """() => {
            window.__lengths = new Set();
            new MutationObserver(() => {
                const body = document.querySelector("article.msg-assistant .msg-body");
                if (body) window.__lengths.add(body.textContent.length);
            }).observe(document.getElementById("messages"), {childList: true, subtree: true});
        }"""
    )
    send(page, "/words 300")
    answer = last_assistant(page)
    expect(answer).to_have_attribute("data-status", "complete")
    wait_idle(page)
    assert len(answer.locator(".msg-body").inner_text().split()) == 300
    assert page.evaluate("window.__lengths.size") > 5
    expect(page.locator(".turn-foot").last).to_contain_text("Turn usage:")
    expect(page.locator("#chat-title")).not_to_have_text("Untitled chat")
    title = page.locator("#chat-title").inner_text()
    expect(page.locator(".side-link[aria-current=page] .side-title")).to_have_text(title)
    # A reload shows the same history, rendered by the server and then live again.
    page.reload()
    expect(page.locator("#conn")).to_have_text("Live")
    assert len(last_assistant(page).locator(".msg-body").inner_text().split()) == 300


def test_two_pages_on_one_session_stay_in_sync(context: BrowserContext, owner: User) -> None:
    session_id = store.session_create(owner_id=owner.pk).id
    first = context.new_page()
    open_chat(first, owner, OWNER_PASSWORD, session_id)
    second = context.new_page()
    second.goto(chat_path(session_id))
    expect(second.locator("#conn")).to_have_text("Live")

    send(first, "/words 400")
    # The other page follows the running turn, and may not start a second one meanwhile.
    expect(second.locator("#stop")).to_be_visible()
    expect(second.locator("#send")).to_be_hidden()
    for page in (first, second):
        expect(last_assistant(page)).to_have_attribute("data-status", "complete")
        wait_idle(page)

    send(second, '/tool calculator {"expression": "6*7"}')
    for page in (first, second):
        expect(page.locator("article.msg-tool")).to_contain_text("6*7 = 42")
        expect(last_assistant(page)).to_contain_text("calculator → 6*7 = 42")
        wait_idle(page)
    texts = [p.locator("article.msg").all_inner_texts() for p in (first, second)]
    assert texts[0] == texts[1] and len(texts[0]) == 6


def test_stop_a_turn(page: Page, owner: User) -> None:
    session_id = store.session_create(owner_id=owner.pk).id
    open_chat(page, owner, OWNER_PASSWORD, session_id)
    send(page, "/words 3000")
    answer = last_assistant(page)
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".msg-body.md")).to_contain_text("kilo")
    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-status", "interrupted")
    expect(answer.locator(".badge")).to_have_text("Stopped")
    expect(page.locator(".turn-foot").last).to_contain_text("Stopped.")
    wait_idle(page)
    words = len(answer.locator(".msg-body").inner_text().split())
    assert 0 < words < 3000


def test_a_hostile_reply_stays_inert(page: Page, owner: User) -> None:
    session_id = store.session_create(owner_id=owner.pk).id
    open_chat(page, owner, OWNER_PASSWORD, session_id)
    send(page, f"/echo {HOSTILE}")
    answer = last_assistant(page)
    expect(answer).to_have_attribute("data-status", "complete")
    wait_idle(page)

    def assert_inert() -> None:
        # The markup is shown as text, and nothing of it became an element.
        expect(answer.locator(".msg-body")).to_contain_text("<img src=x onerror=")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        messages = page.locator("#messages")
        assert messages.locator("img, script, iframe, [onerror]").count() == 0
        assert page.locator('a[href^="javascript:" i]').count() == 0

    assert_inert()
    links = answer.locator("a")
    if links.count():
        links.first.click()
    assert_inert()
    page.reload()
    expect(page.locator("#conn")).to_have_text("Live")
    answer = last_assistant(page)
    assert_inert()


def test_another_users_session_is_not_found(page: Page, owner: User, stranger: User) -> None:
    session_id = store.session_create(owner_id=owner.pk, title="Owner's secrets").id
    log_in(page, stranger.get_username(), STRANGER_PASSWORD)
    for path in (chat_path(session_id), chat_path(uuid.uuid4())):
        response = page.goto(path)
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Chat not found")).to_be_visible()
        expect(page.get_by_text("Owner's secrets")).to_have_count(0)


def test_long_running_tool_result_after_reopening(context: BrowserContext, owner: User) -> None:
    session_id = store.session_create(owner_id=owner.pk).id
    page = context.new_page()
    open_chat(page, owner, OWNER_PASSWORD, session_id)
    send(page, '/tool draft_document {"topic": "x", "sections": 3}')
    page.close()  # while the operation is pending, or just after

    page = context.new_page()
    page.goto(chat_path(session_id))
    expect(page.locator("#conn")).to_have_text("Live")
    result = page.locator("article.msg-tool .tool-result")
    expect(result).to_be_visible()
    expect(result.get_by_role("heading", name="Introduction")).to_be_visible()
    expect(result.get_by_role("heading", name="Conclusion")).to_be_visible()
    expect(page.locator(".op-widget")).to_have_count(0)
    # The operation ran through the operation events, and the turn reported on it.
    expect(last_assistant(page)).to_contain_text("draft_document")


def test_operation_widget_across_closing_the_tab(context: BrowserContext, owner: User) -> None:
    session_id = store.session_create(owner_id=owner.pk).id
    page = context.new_page()
    open_chat(page, owner, OWNER_PASSWORD, session_id)
    send(page, '/tool timer {"seconds": 4, "label": "tea"}')
    widget = page.locator(".op-widget")
    expect(widget).to_contain_text("you can close this tab and come back")
    expect(widget.locator(".op-text")).to_contain_text("tea:")
    expect(widget.locator(".elapsed")).to_have_text(re.compile(r"^for \d+ s$"))
    expect(page.locator("#send")).to_be_enabled()  # the operation does not hold the input
    page.close()

    page = context.new_page()
    page.goto(chat_path(session_id))
    # Rendered by the server while the operation still runs, then finished live.
    expect(page.locator(".op-widget")).to_contain_text("you can close this tab and come back")
    result = page.locator("article.msg-tool .tool-result")
    expect(result).to_contain_text("The timer 'tea' finished after 4 s.")
    expect(page.locator(".op-widget")).to_have_count(0)


def test_narrow_layout_folds_the_sidebar(context: BrowserContext, owner: User) -> None:
    session_id = store.session_create(owner_id=owner.pk, title="Narrow").id
    page = context.new_page()
    open_chat(page, owner, OWNER_PASSWORD, session_id)
    sidebar = page.get_by_role("navigation", name="Your chats")
    toggle = page.get_by_role("button", name="Chats")
    expect(sidebar).to_be_visible()
    expect(toggle).to_be_hidden()

    page.set_viewport_size({"width": 400, "height": 800})
    expect(sidebar).to_be_hidden()
    expect(page.get_by_label("Message")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    toggle.click()
    expect(sidebar).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()


# --- a scripted websocket ------------------------------------------------------------------


class FakeSocketServer:
    """Stands in for the websocket endpoint: says hello, records frames, answers resumes."""

    def __init__(self, session_id: Any) -> None:
        self.session_id = str(session_id)
        self.sockets: list[WebSocketRoute] = []
        self.received: list[dict[str, Any]] = []
        # last_seq of a resume -> the frames to answer it with
        self.answers: dict[int | None, list[dict[str, Any]]] = {}

    def __call__(self, ws: WebSocketRoute) -> None:
        self.sockets.append(ws)
        ws.on_message(lambda raw: self.on_message(ws, raw))
        ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "session_id": self.session_id,
                    "model": "scripted",
                    "offline_demo": False,
                    "max_frame_bytes": 262144,
                    "max_message_chars": 32000,
                }
            )
        )

    def on_message(self, ws: WebSocketRoute, raw: str | bytes) -> None:
        frame = json.loads(raw)
        self.received.append(frame)
        if frame["type"] == "resume":
            for answer in self.answers.pop(frame["last_seq"], []):
                ws.send(json.dumps(answer))
        elif frame["type"] == "send":
            ack = {"type": "ack", "of": "send", "client_message_id": frame["client_message_id"]}
            ws.send(json.dumps({**ack, "message_sequence": 99, "duplicate": False}))

    def push(self, *frames: dict[str, Any]) -> None:
        for frame in frames:
            self.sockets[-1].send(json.dumps(frame))

    def resumes(self) -> list[int | None]:
        return [f["last_seq"] for f in self.received if f["type"] == "resume"]


def message(sequence: int, role: str, **fields: Any) -> dict[str, Any]:
    base = {
        "sequence": sequence,
        "role": role,
        "content": None,
        "name": None,
        "tool_call_id": None,
        "refusal": None,
        "tool_calls": None,
        "function_call": None,
        "status": "complete",
        "created_at": "2026-01-01T10:00:00Z",
    }
    return {**base, **fields}


def event(kind: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "seq": seq, **fields}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def operation(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "5d7e2c1a-0000-4000-8000-000000000001",
        "tool_name": "draft_document",
        "tool_call_id": "call_draft",
        "status": "pending",
        "progress": None,
        "progress_text": None,
        "error": None,
        "created_at": "2026-01-01T10:00:01Z",
        "started_at": None,
        "finished_at": None,
        "message_sequence": 3,
    }
    return {**base, **fields}


@pytest.fixture
def fake_socket(context: BrowserContext, owner: User) -> Callable[[], tuple[Page, Any]]:
    def open_page() -> tuple[Page, Any]:
        session_id = store.session_create(owner_id=owner.pk).id
        fake = FakeSocketServer(session_id)
        page = context.new_page()
        page.route_web_socket(re.compile(r"/ws/sessions/"), fake)
        return page, (fake, session_id)

    return open_page


def test_operation_widget_follows_operation_events(
    fake_socket: Callable[[], tuple[Page, Any]], owner: User
) -> None:
    page, (fake, session_id) = fake_socket()
    call = {
        "id": "call_draft",
        "type": "function",
        "function": {"name": "draft_document", "arguments": '{"topic": "tea"}'},
    }
    pending = message(3, "tool", name="draft_document", tool_call_id="call_draft", status="pending")
    fake.answers[0] = [
        event("turn_started", 1),
        event("message_created", 2, message=message(1, "user", content="draft")),
        event("message_created", 3, message=message(2, "assistant", tool_calls=[call])),
        event("message_created", 4, message=pending),
        event("operation_started", 5, operation=operation(), message=pending),
        event("turn_finished", 6, status="completed", turn_usage=usage(5, 7)),
    ]
    open_chat(page, owner, OWNER_PASSWORD, session_id)
    widget = page.locator(".op-widget")
    expect(widget).to_contain_text("you can close this tab and come back")
    expect(widget.locator(".spinner")).to_have_count(1)
    expect(widget.locator(".elapsed")).to_have_text(re.compile(r"^for \d"))
    expect(widget.locator(".op-text")).to_have_text("Queued…")
    # The operation does not hold the turn: the next message may be sent meanwhile.
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator(".turn-foot")).to_contain_text("12 tokens")

    running = operation(
        status="running",
        progress=0.5,
        progress_text="Writing section 2 of 3",
        started_at="2026-01-01T10:00:02Z",
    )
    fake.push(event("operation_in_progress", 7, operation=running))
    expect(widget.locator(".op-text")).to_have_text("Writing section 2 of 3")
    expect(widget.locator("progress")).to_have_js_property("value", 0.5)

    done = {**pending, "status": "complete", "content": "# Tea\n\n## Introduction\n\nHot water."}
    succeeded = operation(status="succeeded", progress=1.0)
    fake.push(event("operation_completed", 8, operation=succeeded, message=done))
    expect(widget).to_have_count(0)
    result = page.locator("article.msg-tool .tool-result")
    expect(result.get_by_role("heading", name="Introduction")).to_be_visible()

    # A failed operation shows its error in place of the result.
    second = {"id": "op-2", "tool_call_id": "call_2", "message_sequence": 4}
    failed = message(4, "tool", name="draft_document", tool_call_id="call_2", status="failed")
    failed["content"] = "Error: the writer gave up."
    fake.push(
        event("message_created", 9, message={**failed, "status": "pending", "content": None}),
        event("operation_started", 10, operation=operation(**second)),
        event(
            "operation_failed",
            11,
            operation=operation(**second, status="failed", error="the writer gave up"),
            message=failed,
        ),
    )
    failed_result = page.locator("#msg-4 .tool-result.is-failed")
    expect(failed_result).to_contain_text("Error: the writer gave up.")
    expect(page.locator(".op-widget")).to_have_count(0)


def test_protocol_gaps_snapshots_reconnects_and_close_codes(
    fake_socket: Callable[[], tuple[Page, Any]], owner: User
) -> None:
    page, (fake, session_id) = fake_socket()
    streaming = message(2, "assistant", content="", status="streaming")

    def delta(seq: int, offset: int, text: str) -> dict[str, Any]:
        return event("text_delta", seq, message_sequence=2, offset=offset, text=text)

    fake.answers[0] = [
        event("turn_started", 1),
        event("message_created", 2, message=message(1, "user", content="hi")),
        event("message_created", 3, message=streaming),
        # Offsets count code points, as Python's len() does: the emoji is one.
        delta(4, 0, "héllo 😀 "),
        delta(5, 8, "world"),
        # Overlapping text (already shown) is skipped, the rest appended.
        delta(6, 6, "😀 world!"),
        # A seq already applied is ignored.
        delta(6, 14, "??"),
    ]
    open_chat(page, owner, OWNER_PASSWORD, session_id)
    answer = last_assistant(page)
    expect(answer.locator(".msg-body")).to_have_text("héllo 😀 world!")
    expect(page.locator("#stop")).to_be_visible()

    # A gap: seq 8 before 7. The page ignores 8, asks for what follows 6, applies both.
    fake.answers[6] = [
        event("title_updated", 7, title="First"),
        event("title_updated", 8, title="After the gap"),
    ]
    fake.push(event("title_updated", 8, title="Too early"))
    expect(page.locator("#chat-title")).to_have_text("After the gap")
    assert fake.resumes() == [0, 6]

    # A text delta that leaves a hole cannot be applied: the page asks for a snapshot.
    session = {"id": str(session_id), "title": "From the snapshot", "usage": usage(1, 2)}
    fake.answers[None] = [
        event(
            "snapshot",
            20,
            session={**session, "message_count": 1},
            messages=[message(1, "user", content="only this one")],
            running=False,
            operations=[],
            model={"name": "scripted", "offline_demo": True},
        )
    ]
    fake.push(delta(9, 99, "x"))
    expect(page.locator("article.msg")).to_have_count(1)
    expect(page.locator("#chat-title")).to_have_text("From the snapshot")
    expect(page.locator("#session-usage")).to_have_text("3 tokens")
    expect(page.locator("#stop")).to_be_hidden()
    assert fake.resumes()[-1] is None

    # A dropped connection: reconnect with backoff, resume from the last seq seen.
    fake.answers[20] = [event("title_updated", 21, title="Back")]
    fake.sockets[-1].close(code=1011, reason="server restart")
    expect(page.locator("#conn")).to_have_text(re.compile("Reconnecting"))
    expect(page.locator("#chat-title")).to_have_text("Back")
    expect(page.locator("#conn")).to_have_text("Live")
    assert len(fake.sockets) == 2

    # A message typed while the socket is down is sent once it is back.
    fake.sockets[-1].close(code=1012)
    expect(page.locator("#conn")).not_to_have_text("Live")
    page.get_by_label("Message").fill("queued while offline")
    page.get_by_label("Message").press("Enter")
    expect(page.locator("#notice")).to_contain_text("Not connected")
    expect(page.get_by_label("Message")).to_have_value("")  # acknowledged after reconnecting
    sends = [f for f in fake.received if f["type"] == "send"]
    assert [s["content"] for s in sends] == ["queued while offline"]
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", sends[0]["client_message_id"])

    # Not logged in any more: off to the login page.
    fake.sockets[-1].close(code=4401)
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=%2Fsessions%2F"))
