"""sessions_app.model.openai_messages: sessions as OpenAI chat-completion messages."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from sessions_app.model.openai_messages import session_to_openai_messages
from sessions_app.schemas import ChatMessageData, SessionState


def session_of(*messages: ChatMessageData) -> SessionState:
    now = datetime.now(UTC)
    numbered = [m.model_copy(update={"sequence": i}) for i, m in enumerate(messages, start=1)]
    return SessionState(
        id=uuid.uuid4(), owner_id=1, created_at=now, updated_at=now, messages=numbered
    )


def test_all_six_roles() -> None:
    session = session_of(
        ChatMessageData(role="system", content="sys"),
        ChatMessageData(role="developer", content="dev rules", name="ops"),
        ChatMessageData(role="user", content="what is 2+2?", name="ann"),
        ChatMessageData(
            role="assistant",
            content=None,
            name="helper",
            refusal="I won't do that part",
            function_call={"name": "legacy", "arguments": '{"a": 1}'},
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calc", "arguments": '{"x": "2+2"}'},
                }
            ],
        ),
        ChatMessageData(role="tool", content="4", tool_call_id="call_1"),
        ChatMessageData(role="function", name="legacy", content="done"),
        ChatMessageData(role="assistant", content="It is 4."),
    )
    assert session_to_openai_messages(session) == [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": "dev rules", "name": "ops"},
        {"role": "user", "content": "what is 2+2?", "name": "ann"},
        {
            "role": "assistant",
            "content": None,
            "name": "helper",
            "refusal": "I won't do that part",
            "function_call": {"name": "legacy", "arguments": '{"a": 1}'},
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calc", "arguments": '{"x": "2+2"}'},
                }
            ],
        },
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
        {"role": "function", "name": "legacy", "content": "done"},
        {"role": "assistant", "content": "It is 4."},
    ]


@pytest.mark.parametrize(
    "bad_call",
    [
        {"type": "function", "function": {"name": "calc", "arguments": "{}"}},  # no id
        {"id": "call_2", "function": {"arguments": "{}"}},  # no name
        {"id": "call_3", "function": {"name": ""}},  # empty name
        {"id": "call_4"},  # no function
        "not-a-dict",
        {"id": "call_5", "function": "calc"},
    ],
)
def test_malformed_tool_calls_are_skipped_with_warning(
    bad_call: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"id": "call_ok", "function": {"name": "calc", "arguments": '{"x": 1}'}}
    session = session_of(
        ChatMessageData(role="assistant", content="hm", tool_calls=[bad_call, good])
    )
    with caplog.at_level(logging.WARNING, logger="sessions_app.model.openai_messages"):
        [message] = session_to_openai_messages(session)
    assert message["tool_calls"] == [
        {"id": "call_ok", "type": "function", "function": {"name": "calc", "arguments": '{"x": 1}'}}
    ]
    assert "malformed tool call" in caplog.text


def test_only_malformed_tool_calls_leave_no_tool_calls_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = session_of(
        ChatMessageData(role="assistant", content="x", tool_calls=[{"function": {"name": "a"}}])
    )
    assert session_to_openai_messages(session) == [{"role": "assistant", "content": "x"}]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [(None, "{}"), ("", "{}"), ({"q": "café"}, '{"q": "caf\\u00e9"}'), ('{"a":1}', '{"a":1}')],
)
def test_tool_call_arguments_default_and_encoding(arguments: Any, expected: str) -> None:
    function: dict[str, Any] = {"name": "search"}
    if arguments is not None:
        function["arguments"] = arguments
    session = session_of(
        ChatMessageData(role="assistant", tool_calls=[{"id": "c", "function": function}])
    )
    [message] = session_to_openai_messages(session)
    assert message["tool_calls"][0]["function"]["arguments"] == expected


def test_function_call_without_arguments_gets_empty_object() -> None:
    session = session_of(ChatMessageData(role="assistant", function_call={"name": "legacy"}))
    [message] = session_to_openai_messages(session)
    assert message["function_call"] == {"name": "legacy", "arguments": "{}"}


def test_unsendable_messages_are_skipped_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    session = session_of(
        ChatMessageData(role="assistant", function_call={"arguments": "{}"}, content="a"),
        ChatMessageData(role="tool", content="orphan result"),
        ChatMessageData(role="function", content="no name"),
        ChatMessageData(role="user", content=None),
    )
    with caplog.at_level(logging.WARNING, logger="sessions_app.model.openai_messages"):
        converted = session_to_openai_messages(session)
    assert converted == [{"role": "assistant", "content": "a"}, {"role": "user", "content": ""}]
    assert caplog.text.count("skipping") == 3
