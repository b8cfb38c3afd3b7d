"""sessions_app.transport.consumers with WebsocketCommunicator, against the local model."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from sessions_app import events, process, store, turns
from tests.chat_fixtures import FRAME_TIMEOUT, ROUTER, Socket, db_messages, open_socket
from tests.wsclient import send_frame

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("chat_runtime"),
]


async def finish_turn(socket: Socket) -> list[dict[str, Any]]:
    return await socket.until_type("turn_finished")


# --- replies ----------------------------------------------------------------------------------


async def test_streamed_reply_is_stored_and_seq_has_no_gaps(
    owner: Any, session_id: uuid.UUID
) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("hello there", "c-1"))
    frames = await finish_turn(socket)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "ack" and frames[0]["client_message_id"] == "c-1"
    assert kinds.count("text_delta") > 3
    assert {"message_created", "turn_started", "message_updated", "usage"} <= set(kinds)
    assert frames[-1]["status"] == "completed"
    assert socket.view.gaps == []
    stored = await db_messages(session_id)
    assert socket.view.contents() == stored
    assert [(role, status) for _, role, _, status in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert "hello there" in (stored[1][2] or "")
    usage = next(f for f in frames if f["type"] == "usage")
    assert usage["session_usage"]["total_tokens"] > 0
    title = await socket.until_type("title_updated")
    assert title[-1]["title"] == "hello there"
    await socket.close()


async def test_tool_round_trip(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame('/tool calculator {"expression": "6*7"}'))
    frames = await finish_turn(socket)
    calls = [f for f in frames if f["type"] == "tool_call"]
    assert [c["tool_call"]["function"]["name"] for c in calls] == ["calculator"]
    results = [f for f in frames if f["type"] == "tool_result"]
    assert [r["message"]["content"] for r in results] == ["6*7 = 42"]
    stored = await db_messages(session_id)
    assert [(role, status) for _, role, _, status in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("tool", "complete"),
        ("assistant", "complete"),
    ]
    assert "42" in (stored[3][2] or "")
    assert socket.view.contents() == stored
    await socket.close()


async def test_a_tool_result_holding_nul_is_stored_on_every_database(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    # PostgreSQL text cannot hold U+0000: stored as U+FFFD, the turn completes.
    settings.CHAT_TOOLS = [*settings.CHAT_TOOLS, "tests.tools_for_tests.NulText"]
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/tool nul_text {}"))
    frames = await finish_turn(socket)
    assert frames[-1]["status"] == "completed"
    stored = await db_messages(session_id)
    assert stored[2][1:] == ("tool", "before\ufffdafter", "complete")
    assert "before\ufffdafter" in (stored[3][2] or "")  # the model quotes it back
    assert socket.view.contents() == stored


async def test_parallel_tool_calls_run_together(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id)
    content = '/tool calculator {"expression": "1+1"}\n/tool current_time {"timezone": "UTC"}'
    await socket.send(send_frame(content))
    frames = await finish_turn(socket)
    results = {f["message"]["name"]: f["message"] for f in frames if f["type"] == "tool_result"}
    assert set(results) == {"calculator", "current_time"}
    assert results["calculator"]["content"] == "1+1 = 2"
    final = (await db_messages(session_id))[-1]
    assert final[1] == "assistant" and "calculator" in (final[2] or "")
    assert "current_time" in (final[2] or "")


async def test_bad_tool_arguments_reach_the_model_as_an_error(
    owner: Any, session_id: uuid.UUID
) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/tool calculator {not json"))
    frames = await finish_turn(socket)
    [result] = [f for f in frames if f["type"] == "tool_result"]
    assert result["message"]["status"] == "failed"
    assert result["message"]["content"].startswith("Error")
    assert frames[-1]["status"] == "completed"


async def test_step_limit_stops_a_tool_loop(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    settings.CHAT_TURN_MAX_STEPS = 3
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame('/loop calculator {"expression": "1"}'))
    frames = await finish_turn(socket)
    assert [f["code"] for f in frames if f["type"] == "error"] == ["step_limit"]
    assert frames[-1]["status"] == "step_limit"
    assert len([f for f in frames if f["type"] == "tool_result"]) == 3


# --- cancel and closing the socket ----------------------------------------------------------


async def test_cancel_mid_stream_keeps_the_partial_answer(
    owner: Any, session_id: uuid.UUID
) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 5000"))
    deltas = 0
    while deltas < 5:
        deltas += (await socket.next())["type"] == "text_delta"
    await socket.send({"type": "cancel"})
    frames = await finish_turn(socket)
    assert frames[-1]["status"] == "cancelled"
    assert any(f["type"] == "ack" and f["of"] == "cancel" for f in frames)
    stored = await db_messages(session_id)
    assistant = stored[1]
    assert assistant[1:] == ("assistant", assistant[2], "interrupted")
    assert assistant[2] and len(assistant[2].split()) < 5000
    assert socket.view.contents() == stored


async def test_closing_the_socket_does_not_stop_the_turn(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 60"))
    await socket.until_type("text_delta")
    await socket.close()
    await turns.turn_wait(session_id)
    stored = await db_messages(session_id)
    assert stored[1][1:] == ("assistant", stored[1][2], "complete")
    assert len((stored[1][2] or "").split()) == 60
    # A new socket with the old cursor gets exactly the rest.
    again = await open_socket(owner, session_id, resume=False)
    again.view = socket.view
    await again.send({"type": "resume", "last_seq": socket.view.last_seq})
    await again.until_type("turn_finished")
    assert again.view.gaps == []
    assert again.view.contents() == stored


# --- model errors -----------------------------------------------------------------------------


async def test_a_cancel_landing_while_a_delta_is_published_keeps_that_delta(
    owner: Any, session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 5th text_delta is in the log when the cancel lands: it is in the stored answer."""
    from sessions_app.turns import runner as turn_runner

    real_publish = turn_runner.events.event_publish
    deltas = {"n": 0}

    async def cancel_in_flight(sid: uuid.UUID, event: Any) -> Any:
        seq = await real_publish(sid, event)
        if event.type == "text_delta":
            deltas["n"] += 1
            if deltas["n"] == 5:
                turns.turn_cancel(sid)
                await asyncio.sleep(0)  # the cancel arrives here, inside the publish
        return seq

    monkeypatch.setattr(turn_runner.events, "event_publish", cancel_in_flight)
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 40"))
    frames = await finish_turn(socket)
    assert frames[-1]["status"] == "cancelled"
    sent = "".join(f["text"] for f in frames if f["type"] == "text_delta")
    stored = await db_messages(session_id)
    # Pieces read from the model after the 5th delta left are kept too (never sent as
    # deltas: the final message_updated carries them).
    assert stored[1][3] == "interrupted" and stored[1][2].startswith(sent)
    assert len(sent.split()) >= 5
    assert socket.view.contents() == stored


async def test_a_cancel_from_another_process_stops_that_sessions_turn_only(
    owner: Any, session_id: uuid.UUID
) -> None:
    """What ``turn_cancel_anywhere`` sends when another process runs the turn: it reaches
    this process's one cancel inbox, which stops the named session's turn and no other."""
    from channels.layers import get_channel_layer

    other_id = (await database_sync_to_async(store.session_create)(owner_id=owner.pk)).id
    first = await open_socket(owner, session_id)
    second = await open_socket(owner, other_id)
    await first.send(send_frame("/words 400"))
    await second.send(send_frame("/words 60"))
    await first.until_type("text_delta")
    await second.until_type("text_delta")
    message = {"type": "turn.cancel", "session_id": str(session_id)}
    await get_channel_layer().group_send(turns.control_group(session_id), message)
    assert (await finish_turn(first))[-1]["status"] == "cancelled"
    assert (await finish_turn(second))[-1]["status"] == "completed"
    assert first.view.contents() == await db_messages(session_id)
    assert second.view.contents() == await db_messages(other_id)


async def test_a_frame_for_a_socket_the_client_just_closed_is_dropped_quietly(
    owner: Any, session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """daphne refuses a frame sent after the client closed (autobahn's Disconnected): the
    consumer drops it and carries on instead of dying with an error in the log."""
    from autobahn.exception import Disconnected
    from channels.generic.websocket import AsyncWebsocketConsumer

    real_send = AsyncWebsocketConsumer.send

    async def closed_for_pongs(self: Any, text_data: str | None = None, **kwargs: Any) -> None:
        if text_data is not None and '"pong"' in text_data:
            raise Disconnected("Attempt to send on a closed protocol")
        await real_send(self, text_data=text_data, **kwargs)

    monkeypatch.setattr(AsyncWebsocketConsumer, "send", closed_for_pongs)
    socket = await open_socket(owner, session_id)
    await socket.send({"type": "ping", "id": "gone"})
    await socket.send(send_frame("/words 3"))
    frames = await finish_turn(socket)
    assert "pong" not in [f["type"] for f in frames]
    assert frames[-1]["status"] == "completed"


async def test_pieces_arriving_while_a_delta_is_on_its_way_go_out_together(
    owner: Any, session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first delta's publish is held until the model has sent 12 more pieces: they go
    out in one delta, and the text adds up exactly. (The first delta itself carries what
    came before it: the model call starts before the turn does, so that may be several.)"""
    from sessions_app.turns import runner as turn_runner

    real_publish = turn_runner.events.event_publish
    real_add = turn_runner.TextSender.add
    pieces = {"n": 0, "wanted": 0}
    twelve_more = asyncio.Event()

    def counting_add(sender: Any, piece: str) -> None:
        real_add(sender, piece)
        pieces["n"] += 1
        if pieces["wanted"] and pieces["n"] >= pieces["wanted"]:
            twelve_more.set()

    async def first_delta_held(sid: uuid.UUID, event: Any) -> Any:
        if event.type == "text_delta" and event.offset == 0:
            pieces["wanted"] = pieces["n"] + 12
            await twelve_more.wait()
        return await real_publish(sid, event)

    monkeypatch.setattr(turn_runner.TextSender, "add", counting_add)
    monkeypatch.setattr(turn_runner.events, "event_publish", first_delta_held)
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 150"))
    frames = await finish_turn(socket)
    deltas = [f["text"] for f in frames if f["type"] == "text_delta"]
    assert len(deltas[1].split()) >= 12
    assert len(deltas) < 150
    stored = await db_messages(session_id)
    assert "".join(deltas) == stored[1][2] and len(stored[1][2].split()) == 150
    assert socket.view.gaps == [] and socket.view.contents() == stored


async def test_text_deltas_keep_their_interval_and_the_last_one_does_not_wait(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    """The first delta goes out at once (with whatever came before it); with an interval
    longer than the whole answer, everything after it waits, and goes out in one delta
    the moment the model is done."""
    settings.CHAT_TEXT_DELTA_SECONDS = 3600
    socket = await open_socket(owner, session_id)
    # Long enough (1 s) that the first delta goes out before the model is done.
    await socket.send(send_frame("/words 200"))
    frames = await finish_turn(socket)
    deltas = [f["text"] for f in frames if f["type"] == "text_delta"]
    assert len(deltas) == 2
    stored = await db_messages(session_id)
    assert "".join(deltas) == stored[1][2] and len(stored[1][2].split()) == 200
    assert socket.view.gaps == [] and socket.view.contents() == stored


async def test_a_slow_checkpoint_does_not_hold_the_stream(
    owner: Any, session_id: uuid.UUID, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint write stuck in the database: every piece still streams, then the
    answer is completed after it."""
    import threading

    from sessions_app.turns import runner as turn_runner

    settings.CHAT_CHECKPOINT_SECONDS = 0.01
    real_checkpoint = turn_runner.store.message_checkpoint
    stuck, release = threading.Event(), threading.Event()

    def slow_checkpoint(**kwargs: Any) -> Any:
        if not stuck.is_set():
            stuck.set()
            release.wait(FRAME_TIMEOUT)
        return real_checkpoint(**kwargs)

    monkeypatch.setattr(turn_runner.store, "message_checkpoint", slow_checkpoint)
    socket = await open_socket(owner, session_id)
    try:
        await socket.send(send_frame("/words 60"))
        words = 0
        while words < 60:
            frame = await socket.next()
            if frame["type"] == "text_delta":
                words += len(frame["text"].split())
        assert stuck.is_set()  # the whole answer streamed while the checkpoint was stuck
    finally:
        release.set()
    frames = await finish_turn(socket)
    assert frames[-1]["status"] == "completed"
    stored = await db_messages(session_id)
    assert stored[1][3] == "complete" and len(stored[1][2].split()) == 60
    assert socket.view.contents() == stored


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("/error rate_limit", "model_rate_limited"),
        ("/error server", "model_unavailable"),
        ("/error bad_request", "model_bad_request"),
        ("/error timeout", "model_timeout"),
        ("/error drop", "model_stream_dropped"),
        ("/error stream", "model_stream_error"),
    ],
)
async def test_model_errors_become_error_events(
    owner: Any, session_id: uuid.UUID, settings: Any, command: str, code: str
) -> None:
    settings.CHAT_MODEL_TIMEOUT = 1
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame(command))
    frames = await finish_turn(socket)
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == [code]
    assert errors[0]["message"] and "seq" in errors[0]
    assert frames[-1]["status"] == "failed"
    stored = await db_messages(session_id)
    assert stored[1][1] == "assistant" and stored[1][3] == "failed"
    if command in ("/error drop", "/error stream"):
        assert len((stored[1][2] or "").split()) == 5  # the words before the break are kept
    assert socket.view.contents() == stored


async def test_unknown_model_and_bad_key(owner: Any, session_id: uuid.UUID, settings: Any) -> None:
    settings.CHAT_MODEL = "no-such-model"
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("hi"))
    frames = await finish_turn(socket)
    assert [f["code"] for f in frames if f["type"] == "error"] == ["model_not_found"]
    assert "no-such-model" in next(f for f in frames if f["type"] == "error")["message"]


# --- idempotency and double sends -------------------------------------------------------------


async def test_retried_send_is_stored_once(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 30", "same-id"))
    await socket.until(lambda f: f["type"] == "ack")
    await socket.send(send_frame("/words 30", "same-id"))
    ack = await socket.until(lambda f: f["type"] == "ack")
    assert ack[-1]["duplicate"] is True and ack[-1]["message_sequence"] == 1
    await finish_turn(socket)
    await socket.send(send_frame("/words 30", "same-id"))
    ack = await socket.until(lambda f: f["type"] == "ack")
    assert ack[-1]["duplicate"] is True
    assert [r for _, r, _, _ in await db_messages(session_id)] == ["user", "assistant"]


async def test_send_during_a_turn_is_refused(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 200"))
    await socket.until_type("text_delta")
    await socket.send(send_frame("another"))
    error = await socket.until(lambda f: f["type"] == "error" and "seq" not in f)
    assert error[-1]["code"] == "turn_in_progress"
    await finish_turn(socket)
    assert [r for _, r, _, _ in await db_messages(session_id)] == ["user", "assistant"]


async def test_a_send_refused_by_another_processs_turn_drops_its_early_model_call(
    owner: Any, session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn calls the model while its lease is being taken; when the lease is held
    elsewhere, the send is refused, the call is stopped and nothing is stored."""
    from sessions_app.store import leases
    from sessions_app.turns import runner as turn_runner

    real_stream = turn_runner.llm.stream_chat
    started, stopped = asyncio.Event(), asyncio.Event()

    async def watched_stream(**kwargs: Any) -> Any:
        started.set()
        try:
            async for item in real_stream(**kwargs):
                yield item
            await asyncio.Event().wait()  # then never ends by itself: only a stop ends it
        finally:
            stopped.set()

    monkeypatch.setattr(turn_runner.llm, "stream_chat", watched_stream)
    await database_sync_to_async(leases.turn_lease_acquire)(
        session_id=session_id, turn_id=uuid.uuid4(), owner="another-process", owner_id=owner.pk
    )
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 200"))
    error = await socket.until(lambda f: f["type"] == "error" and "seq" not in f)
    assert error[-1]["code"] == "turn_in_progress"
    assert started.is_set()
    await asyncio.wait_for(stopped.wait(), FRAME_TIMEOUT)
    assert await db_messages(session_id) == []


# --- bad frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{nope", "bad_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"content": "no type"}', "unknown_type"),
        ('{"type": "send", "content": "x"}', "invalid_frame"),
        ('{"type": "send", "content": "", "client_message_id": "a"}', "invalid_frame"),
        ('{"type": "send", "content": 5, "client_message_id": "a"}', "invalid_frame"),
        ('{"type": "send", "content": "x", "client_message_id": "a b"}', "invalid_frame"),
        ('{"type": "resume", "last_seq": -1}', "invalid_frame"),
        ('{"type": "resume"}', "invalid_frame"),
        ('{"type": "ping", "extra": 1}', "invalid_frame"),
    ],
)
async def test_bad_frames_get_error_frames_and_the_socket_carries_on(
    owner: Any, session_id: uuid.UUID, raw: str, code: str
) -> None:
    socket = await open_socket(owner, session_id)
    other = await open_socket(owner, session_id)
    await socket.send(raw)
    error = await socket.next()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    await socket.send({"type": "ping", "id": "p"})
    assert (await socket.next())["type"] == "pong"
    await other.send({"type": "ping"})
    assert (await other.next())["type"] == "pong"
    assert await db_messages(session_id) == []


async def test_oversized_and_binary_frames(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    settings.CHAT_WS_MAX_FRAME_BYTES = 2048
    settings.CHAT_MESSAGE_MAX_CHARS = 100
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("x" * 5000))
    assert (await socket.next())["code"] == "frame_too_large"
    await socket.send(send_frame("x" * 101))
    assert (await socket.next())["code"] == "message_too_long"
    await socket.communicator.send_to(bytes_data=b"\x00\x01")
    assert (await socket.next())["code"] == "unsupported_frame"
    await socket.send({"type": "ping"})
    assert (await socket.next())["type"] == "pong"
    assert await db_messages(session_id) == []


# --- who may connect --------------------------------------------------------------------------


async def close_code(user: Any, path: str) -> int:
    communicator = WebsocketCommunicator(ROUTER, path)
    communicator.scope["user"] = user
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected  # accepted, then closed with a code that says why
    output = await communicator.receive_output(timeout=FRAME_TIMEOUT)
    assert output["type"] == "websocket.close"
    return int(output["code"])


async def test_anonymous_socket_is_closed_4401(session_id: uuid.UUID) -> None:
    from django.contrib.auth.models import AnonymousUser

    assert await close_code(AnonymousUser(), f"/ws/sessions/{session_id}/") == 4401


async def test_stranger_socket_looks_like_a_missing_session(
    stranger: Any, session_id: uuid.UUID
) -> None:
    theirs = await close_code(stranger, f"/ws/sessions/{session_id}/")
    missing = await close_code(stranger, f"/ws/sessions/{uuid.uuid4()}/")
    malformed = await close_code(stranger, "/ws/sessions/not-a-uuid/")
    assert theirs == missing == malformed == 4404


# --- several sockets --------------------------------------------------------------------------


async def test_two_sockets_see_identical_event_sequences(owner: Any, session_id: uuid.UUID) -> None:
    first = await open_socket(owner, session_id)
    second = await open_socket(owner, session_id)
    await first.send(send_frame('/tool calculator {"expression": "2+3"}'))
    await finish_turn(first)
    await finish_turn(second)
    assert first.view.events == second.view.events
    assert first.view.contents() == second.view.contents() == await db_messages(session_id)


async def test_resume_with_a_cursor_gets_exactly_the_missed_events(
    owner: Any, session_id: uuid.UUID
) -> None:
    watcher = await open_socket(owner, session_id)
    await watcher.send(send_frame("/words 40"))
    await finish_turn(watcher)
    await watcher.until_type("title_updated")
    all_events = watcher.view.events
    cursor = all_events[10]["seq"]
    late = await open_socket(owner, session_id, resume=False)
    await late.send({"type": "resume", "last_seq": cursor})
    expected = [e for e in all_events if e["seq"] > cursor]
    got = [
        json.loads(await late.communicator.receive_from(timeout=FRAME_TIMEOUT)) for _ in expected
    ]
    assert got == expected
    await late.send({"type": "ping"})
    assert (await late.next())["type"] == "pong"


async def test_cursor_older_than_the_log_gets_a_snapshot_at_the_head(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    settings.CHAT_EVENT_LOG_SIZE = 8  # the log keeps the last 8 events of the session
    settings.CHAT_TEXT_DELTA_SECONDS = 0  # a delta per word: many events
    watcher = await open_socket(owner, session_id)
    await watcher.send(send_frame("/words 40"))
    await finish_turn(watcher)
    await watcher.until_type("title_updated")
    head = watcher.view.last_seq
    assert head is not None and head > 20
    late = await open_socket(owner, session_id, resume=False)
    # The oldest cursor the log can still serve: exactly the 8 events it holds.
    await late.send({"type": "resume", "last_seq": head - 8})
    got = [
        json.loads(await late.communicator.receive_from(timeout=FRAME_TIMEOUT)) for _ in range(8)
    ]
    assert got == watcher.view.events[-8:]
    # One older: the log cannot say what came after it; a snapshot valid at the head can.
    await late.send({"type": "resume", "last_seq": head - 9})
    snapshot = await late.next()
    assert snapshot["type"] == "snapshot" and snapshot["seq"] == head
    assert snapshot["running"] is False
    late.view.apply(snapshot)
    assert late.view.contents() == watcher.view.contents() == await db_messages(session_id)
    await late.send({"type": "ping"})
    assert (await late.next())["type"] == "pong"


async def test_cursor_from_another_life_gets_a_snapshot(owner: Any, session_id: uuid.UUID) -> None:
    socket = await open_socket(owner, session_id, resume=False)
    await socket.send({"type": "resume", "last_seq": 10**9})
    snapshot = await socket.next()
    assert snapshot["type"] == "snapshot" and snapshot["messages"] == []


async def test_snapshot_mid_stream_includes_unsaved_text(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    settings.CHAT_CHECKPOINT_SECONDS = 3600  # nothing checkpointed while streaming
    first = await open_socket(owner, session_id)
    await first.send(send_frame("/words 400"))
    for _ in range(20):
        await first.until_type("text_delta")
    late = await open_socket(owner, session_id)
    snapshot = late.frames[-1]
    streaming = [m for m in snapshot["messages"] if m["status"] == "streaming"]
    assert len(streaming) == 1 and streaming[0]["content"]
    assert snapshot["running"] is True
    await finish_turn(late)
    await finish_turn(first)
    assert late.view.gaps == []
    assert late.view.contents() == first.view.contents() == await db_messages(session_id)


async def test_a_lost_live_event_is_repaired_from_the_log(
    owner: Any, session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel layer drops every 7th event; sockets still see all of them in order."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    real_group_send = layer.group_send
    counter = {"n": 0}

    async def lossy(group: str, message: dict[str, Any]) -> None:
        counter["n"] += 1
        if message.get("type") == "session.event" and counter["n"] % 7 == 0:
            return
        await real_group_send(group, message)

    monkeypatch.setattr(layer, "group_send", lossy)
    # Events go through group_send (with Redis, the log's script publishes them otherwise).
    monkeypatch.setattr(events.event_log(), "publishes_live", False)
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("/words 80"))
    await finish_turn(socket)
    assert socket.view.gaps == []
    seqs = [e["seq"] for e in socket.view.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert socket.view.contents() == await db_messages(session_id)


async def test_events_keep_flowing_while_other_sessions_stream(
    owner: Any, session_id: uuid.UUID
) -> None:
    other_id = (await database_sync_to_async(store.session_create)(owner_id=owner.pk)).id
    first = await open_socket(owner, session_id)
    second = await open_socket(owner, other_id)
    await first.send(send_frame("/words 50"))
    await second.send(send_frame("/words 50"))
    await asyncio.gather(finish_turn(first), finish_turn(second))
    assert first.view.contents() == await db_messages(session_id)
    assert second.view.contents() == await db_messages(other_id)


@pytest.mark.postgres
async def test_database_calls_on_several_threads(
    owner: Any, session_id: uuid.UUID, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHAT_DATABASE_THREADS=3: turns of two sessions run their calls on the database
    threads, every connection goes back to the pool, and what is stored is right."""
    import threading

    from django.db import connections

    from sessions_app import store as store_module

    settings.CHAT_DATABASE_THREADS = 3
    threads: set[str] = set()
    real_get = store_module.session_get

    def recording_get(**kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real_get(**kwargs)

    monkeypatch.setattr(store_module, "session_get", recording_get)
    other_id = (await database_sync_to_async(store.session_create)(owner_id=owner.pk)).id
    first = await open_socket(owner, session_id)
    second = await open_socket(owner, other_id)
    for _ in range(2):
        await first.send(send_frame("/words 30"))
        await second.send(send_frame("/words 30"))
        await asyncio.gather(finish_turn(first), finish_turn(second))
    assert first.view.contents() == await db_messages(session_id)
    assert second.view.contents() == await db_messages(other_id)
    assert threads and all(name.startswith("database") for name in threads)
    await process.background_wait()  # titles

    def in_use() -> int:
        stats = connections["default"].pool.get_stats()
        return int(stats["pool_size"] - stats["pool_available"])

    # Once quiet (the sweep and the in-process worker also call in now and then), only the
    # test's own thread and channels' thread (whose clean-up channels' test communicator
    # turns off) may still hold a connection: the database threads gave theirs back.
    for _ in range(100):
        if in_use() <= 2:
            break
        await asyncio.sleep(0.05)
    assert in_use() <= 2
