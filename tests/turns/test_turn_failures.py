"""sessions_app.turns.runner when the model's output or the server fails mid-turn: the turn
ends once, its reply keeps the text streamed so far, and nothing is left ``streaming``."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from sessions_app import events, store, turns
from sessions_app.turns import recovery
from tests.chat_fixtures import db_messages, open_socket
from tests.model.test_client import use_server
from tests.wsclient import send_frame

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("chat_runtime"),
]


def model_streaming(monkeypatch: pytest.MonkeyPatch, *pieces: str, finish: str = "stop") -> None:
    """The model answers every call with ``pieces`` as its streamed text (JSON escapes
    kept: ``"\\ud800"`` arrives as a lone surrogate, as a real server can send it)."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body, ensure_ascii=True)}\n\n"

    chunks = [chunk({"content": p}) for p in pieces]
    body = "".join([chunk({"role": "assistant"}), *chunks, chunk({}, finish), "data: [DONE]\n\n"])

    use_server(monkeypatch, body.encode())


async def test_a_lone_surrogate_from_the_model_is_stored_replaced(
    owner: Any, session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_streaming(monkeypatch, "Hello ", "\ud800", " world")
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("hi"))
    frames = await socket.until_type("turn_finished")
    assert frames[-1]["status"] == "completed"
    assert "error" not in [f["type"] for f in frames]
    stored = await db_messages(session_id)
    assert stored[1][1:] == ("assistant", "Hello \ufffd world", "complete")
    assert socket.view.contents() == stored


async def test_an_unexpected_failure_leaves_the_reply_failed_with_its_text(
    owner: Any, session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception inside a turn: an ``internal_error`` event, ``turn_finished`` ``failed``,
    and the reply stored ``failed`` with the text streamed before it."""
    model_streaming(monkeypatch, "partial ", "answer")

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "message_complete", broken)
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("hi"))
    frames = await socket.until_type("turn_finished")
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["internal_error"]
    assert frames[-1]["status"] == "failed"
    stored = await db_messages(session_id)
    assert stored[1][1:] == ("assistant", "partial answer", "failed")
    assert socket.view.contents() == stored


@pytest.mark.parametrize(
    ("finish", "status", "code"),
    [
        ("length", "interrupted", "model_reply_cut_off"),
        ("content_filter", "failed", "model_reply_filtered"),
    ],
)
async def test_a_reply_the_model_cut_short_says_so(
    owner: Any,
    session_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
    finish: str,
    status: str,
    code: str,
) -> None:
    """``finish_reason`` ``length`` or ``content_filter``: the text is kept, the message is
    not ``complete``, and the user is told why (an ``error`` event, the turn ``failed``)."""
    model_streaming(monkeypatch, "The answer is", finish=finish)
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("hi"))
    frames = await socket.until_type("turn_finished")
    assert [f["code"] for f in frames if f["type"] == "error"] == [code]
    assert frames[-1]["status"] == "failed"
    stored = await db_messages(session_id)
    assert stored[1][1:] == ("assistant", "The answer is", status)
    assert socket.view.contents() == stored


async def test_a_turn_whose_lease_was_taken_over_ends_once(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    """Another process presumed this one dead (its heartbeats did not arrive in time) and
    recovered the turn: this process, when it finds its lease gone, writes and publishes
    nothing more for that turn. One ``turn_finished``, and the stored reply is the one the
    events last described."""
    settings.CHAT_HEARTBEAT_SECONDS = 0.05
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 2000"))
    started = await socket.until_type("turn_started")
    turn_id = uuid.UUID(started[-1]["turn_id"])
    await socket.until_type("text_delta")
    settings.CHAT_LEASE_SECONDS = 0  # every heartbeat is stale now: what the sweep sees
    assert await recovery.turn_recover(session_id, turn_id)  # the other process's sweep
    await turns.turn_wait(session_id)  # this process notices at its next renewal
    logged = await events.events_since(session_id, 0)
    assert logged is not None
    finished = [e for e in logged if e["type"] == "turn_finished"]
    assert [e["status"] for e in finished] == ["interrupted"]
    # After the recovery's end, at most the deltas this process sent before its next
    # renewal told it: clients ignore them, the message being final.
    after = logged[logged.index(finished[0]) + 1 :]
    assert {e["type"] for e in after} <= {"text_delta"}
    last_update = [e for e in logged if e["type"] == "message_updated"][-1]["message"]
    stored = await db_messages(session_id)
    assert stored[1][1:] == ("assistant", last_update["content"], "interrupted")
    await socket.until_type("turn_finished")
    assert socket.view.contents() == stored
