"""Fuzzing the websocket frames (docs/reliability.md#fuzzing).

1. ``frame_parse`` alone: arbitrary text, arbitrary JSON, mutated valid frames, unicode
   edge cases, deep nesting and frames around the size limit. It must answer exactly what
   ``tests/fuzz/oracle.py`` (written from docs/protocol.md) expects: ``Refused`` with the
   right code, or a valid frame that survives a round trip. Nothing else, ever.
2. The consumer: a real socket (``WebsocketCommunicator``) gets a random sequence of bad
   frames. Each gets exactly one ``error`` frame (socket-local: no ``seq``) with the expected
   code, the socket stays open and answers a ``ping``, and nothing is stored.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sessions_app import events
from sessions_app.models import ChatMessage, ChatSession
from tests.chat_fixtures import open_socket
from tests.fuzz.oracle import PARSER_CODES, check_frame, expected_code
from tests.fuzz.strategies import (
    dumps,
    edge_text,
    examples,
    frame_texts,
    hostile_frames,
    json_values,
    mutated_objects,
    nested,
    text_mutations,
    valid_frames,
)

MAX_BYTES = 256 * 1024  # the default CHAT_WS_MAX_FRAME_BYTES
LIMITS = st.sampled_from([1024, MAX_BYTES, 10**7])


# --- 1. the parser --------------------------------------------------------------------------


@settings(max_examples=examples(200))
@given(text=st.text(st.characters(exclude_categories=()), max_size=300), max_bytes=LIMITS)
def test_arbitrary_text(text: str, max_bytes: int) -> None:
    check_frame(text, max_bytes)


def test_binary_frames_are_unsupported() -> None:
    assert check_frame(None, MAX_BYTES) is None


@settings(max_examples=examples(200))
@given(value=json_values, ascii_only=st.booleans(), max_bytes=LIMITS)
def test_arbitrary_json(value: Any, ascii_only: bool, max_bytes: int) -> None:
    check_frame(dumps(value, ascii_only), max_bytes)


@settings(max_examples=examples(200))
@given(frame=valid_frames, ascii_only=st.booleans())
def test_valid_frames_are_accepted_and_round_trip(frame: dict[str, Any], ascii_only: bool) -> None:
    parsed = check_frame(dumps(frame, ascii_only), MAX_BYTES)
    assert parsed is not None and parsed.type == frame["type"]


@settings(max_examples=examples(300))
@given(frame=mutated_objects(valid_frames), ascii_only=st.booleans(), max_bytes=LIMITS)
@example(frame={"type": "resume", "last_seq": True}, ascii_only=True, max_bytes=MAX_BYTES)
@example(frame={"type": "resume", "last_seq": "5"}, ascii_only=True, max_bytes=MAX_BYTES)
@example(frame={"type": "resume", "last_seq": 2.0}, ascii_only=True, max_bytes=MAX_BYTES)
@example(frame={"type": "ping", "id": "\ud800"}, ascii_only=True, max_bytes=MAX_BYTES)
@example(frame={"type": "ping", "\ud800": 1}, ascii_only=False, max_bytes=MAX_BYTES)
def test_mutated_frames(frame: dict[str, Any], ascii_only: bool, max_bytes: int) -> None:
    check_frame(dumps(frame, ascii_only), max_bytes)


@settings(max_examples=examples(200))
@given(text=text_mutations(frame_texts), max_bytes=LIMITS)
def test_broken_json_text(text: str, max_bytes: int) -> None:
    check_frame(text, max_bytes)


@settings(max_examples=examples(200))
@given(value=edge_text, field=st.sampled_from(["content", "client_message_id", "id", "type"]))
def test_unicode_edge_cases_in_every_string_field(value: str, field: str) -> None:
    kind = "ping" if field == "id" else "send"
    frame: dict[str, Any] = {"type": kind}
    if kind == "send":
        frame.update(content="hi", client_message_id="c-1")
    frame[field] = value
    for ascii_only in (True, False):
        check_frame(dumps(frame, ascii_only), MAX_BYTES)


@settings(max_examples=examples(50))
@given(
    depth=st.integers(1, 200_000),
    opener=st.sampled_from(["[", '{"a":']),
    inside_frame=st.booleans(),
    closed=st.booleans(),
    max_bytes=LIMITS,
)
def test_deep_nesting(
    depth: int, opener: str, inside_frame: bool, closed: bool, max_bytes: int
) -> None:
    check_frame(nested(depth, opener, inside_frame, closed), max_bytes)


@pytest.mark.parametrize("depth", [100_000, 1_000_000])
def test_deep_nesting_is_bad_json_when_it_fits(depth: int) -> None:
    assert expected_code(nested(depth, "[", False, True), 10**8) == "bad_json"
    check_frame(nested(depth, "[", False, True), 10**8)
    check_frame(nested(depth, "[", True, False), 10**8)


@settings(max_examples=examples(100))
@given(
    slack=st.integers(-8, 8),
    char=st.sampled_from(["x", "é", "€", "😀", "\ud800"]),
    kind=st.sampled_from(["send", "ping"]),
)
def test_sizes_around_the_limit(slack: int, char: str, kind: str) -> None:
    """Frames a few bytes under and over the limit, counted in UTF-8 bytes, not characters."""
    shell = dumps(
        {"type": "send", "content": "", "client_message_id": "c-1"}
        if kind == "send"
        else {"type": "ping", "id": ""},
        False,
    )
    size = len(char.encode("utf-8", "replace"))
    count = max(1, (1024 - len(shell) + slack) // size)
    frame = shell.replace('""', json.dumps(char * count, ensure_ascii=False), 1)
    check_frame(frame, 1024)


# --- 2. the consumer ------------------------------------------------------------------------

MESSAGE_MAX_CHARS = 50
REPLY_TIMEOUT = 10


def consumer_expected(item: str | bytes) -> str | None:
    """The code the consumer answers ``item`` with; None when it would be acted upon."""
    if isinstance(item, bytes):
        return "unsupported_frame"
    code = expected_code(item, MAX_BYTES)
    if code is None:
        data = json.loads(item)
        if data["type"] == "send" and len(data["content"]) > MESSAGE_MAX_CHARS:
            return "message_too_long"
    return code


too_long_sends = st.builds(
    lambda n, cid: dumps(
        {"type": "send", "content": "y" * (MESSAGE_MAX_CHARS + n), "client_message_id": cid},
        True,
    ),
    st.integers(1, 1000),
    st.from_regex(r"\A[a-z0-9]{1,12}\Z"),
)
bad_items = st.one_of(
    hostile_frames,
    too_long_sends,
    st.binary(max_size=50),
    st.builds(lambda n: "[" * n, st.sampled_from([1_000, 100_000])),
    st.builds(lambda n: dumps({"type": "ping", "id": "x" * n}, True), st.just(MAX_BYTES)),
).filter(lambda item: consumer_expected(item) is not None)


@pytest.fixture
def _consumer_settings(settings: Any) -> None:
    settings.CHAT_WS_FRAMES_PER_SECOND = 100_000  # not the rate limit under test here
    settings.CHAT_USER_MAX_SOCKETS = 100_000
    settings.CHAT_MESSAGE_MAX_CHARS = MESSAGE_MAX_CHARS
    settings.CHAT_WS_MAX_FRAME_BYTES = MAX_BYTES


async def stored() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return (
            list(ChatSession.objects.order_by("id").values()),
            list(ChatMessage.objects.order_by("id").values()),
        )

    return await database_sync_to_async(read)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("chat_runtime", "_consumer_settings")
@settings(max_examples=examples(40))
@given(items=st.lists(bad_items, min_size=1, max_size=6))
@example(items=['{"type": "resume", "last_seq": true}', b"\x00\x01", "[" * 100_000])
async def test_consumer_answers_each_bad_frame_once_and_stays_usable(
    items: list[str | bytes], owner: Any, fuzzed_session: uuid.UUID
) -> None:
    before = await stored()
    head = await events.event_head(fuzzed_session)
    socket = await open_socket(owner, fuzzed_session)
    for item in items:
        # As daphne delivers frames (send_to refuses an empty one, a valid websocket frame).
        if isinstance(item, bytes):
            message = {"type": "websocket.receive", "bytes": item, "text": None}
        else:
            message = {"type": "websocket.receive", "text": item, "bytes": None}
        await socket.communicator.send_input(message)
        reply = json.loads(await socket.communicator.receive_from(timeout=REPLY_TIMEOUT))
        assert reply["type"] == "error" and "seq" not in reply, reply
        assert reply["code"] == consumer_expected(item), (item[:200], reply)
        assert reply["code"] in PARSER_CODES | {"message_too_long"}
    # Exactly one answer each: the next frame is the pong, not a late second error.
    await socket.send({"type": "ping", "id": "after"})
    pong = json.loads(await socket.communicator.receive_from(timeout=REPLY_TIMEOUT))
    assert pong == {"type": "pong", "id": "after", "last_seq": head}
    assert await socket.communicator.receive_nothing(timeout=0.05)
    await socket.close()
    assert await stored() == before
    assert await events.event_head(fuzzed_session) == head


# Quick sanity for the strategies themselves: they do produce the kinds they promise.
def test_the_strategies_produce_each_kind_of_input() -> None:
    seen: set[str | None] = set()

    @settings(max_examples=300, derandomize=True, database=None)
    @given(text=hostile_frames)
    def collect(text: str) -> None:
        seen.add(expected_code(text, MAX_BYTES))

    collect()
    assert {None, "bad_json", "invalid_frame", "unknown_type"} <= seen
