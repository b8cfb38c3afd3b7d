"""The local scripted model (sessions_app/local_model/, docs/local-model.md).

Pure tests of the script and the request checks, then the real thing over HTTP: a
``manage.py local_model`` process (the ``local_model_url`` fixture) driven with the official
openai SDK, plus raw httpx2 where the SDK would hide the bytes. No database needed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from sessions_app.local_model.script import (
    MAX_WORDS,
    VOCABULARY,
    DropPlan,
    ErrorPlan,
    StreamErrorPlan,
    TextPlan,
    TimeoutPlan,
    ToolCallsPlan,
    count_tokens,
    main_words,
    make_words,
    plan_reply,
    split_arguments,
    split_text,
    usage_for,
)
from sessions_app.local_model.server import (
    ConfigError,
    LocalModelApp,
    LocalModelConfig,
    route_path,
)
from sessions_app.local_model.shapes import (
    MODEL_ID,
    ChatRequest,
    RequestInvalid,
    parse_chat_request,
)
from tests.processes import ManagedProcess, free_port

# --- helpers ------------------------------------------------------------------------------


def request_of(*messages: dict[str, Any], **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": MODEL_ID, "messages": list(messages), **extra})


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant_calls(*calls: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for call_id, name, args in calls
        ],
    }


def tool(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def text_of(plan: object) -> str:
    assert isinstance(plan, TextPlan), plan
    return plan.text


def client(url: str, **options: Any) -> AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return AsyncOpenAI(base_url=url, api_key=options.pop("api_key", "test-key"), **options)


async def stream_text(url: str, content: str, **options: Any) -> str:
    stream = await client(url).chat.completions.create(
        model=MODEL_ID, messages=[user(content)], stream=True, **options
    )
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    return "".join(parts)


async def complete_text(url: str, content: str) -> str:
    response = await client(url).chat.completions.create(model=MODEL_ID, messages=[user(content)])
    return response.choices[0].message.content or ""


# --- the script (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "one", "  lead and trail  ", "a\n\nb\tc  ", "# Title\n\n- *x*\n<b>y</b>\n"]
)
def test_split_text_reassembles_exactly(text: str) -> None:
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(piece.strip() for piece in pieces[1:])  # whitespace only ever trails a word


def test_split_arguments_reassembles() -> None:
    arguments = '{"expression": "2 + 2", "precise": true}'
    fragments = split_arguments(arguments)
    assert "".join(fragments) == arguments
    assert len(fragments) > 1 and all(len(f) <= 8 for f in fragments)


def test_parallel_tool_calls_with_deterministic_distinct_ids() -> None:
    request = request_of(user('/tool current_time {}\n/tool calculator {"expression": "2+2"}'))
    plan = plan_reply(request)
    assert isinstance(plan, ToolCallsPlan)
    assert [(c.name, c.arguments) for c in plan.calls] == [
        ("current_time", "{}"),
        ("calculator", '{"expression": "2+2"}'),
    ]
    ids = [c.id for c in plan.calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert plan_reply(request) == plan  # same request, same ids
    other = plan_reply(
        request_of(
            user("hello"),
            {"role": "assistant", "content": "hi"},
            user('/tool current_time {}\n/tool calculator {"expression": "2+2"}'),
        )
    )
    assert isinstance(other, ToolCallsPlan) and other.calls[0].id not in ids


def test_tool_arguments_pass_through_verbatim_and_default_to_empty_object() -> None:
    plan = plan_reply(request_of(user("/tool calculator {not json\n/tool current_time")))
    assert isinstance(plan, ToolCallsPlan)
    assert [c.arguments for c in plan.calls] == ["{not json", "{}"]


def test_tool_results_are_answered_by_name() -> None:
    plan = plan_reply(
        request_of(
            user("/tool current_time {}\n/tool calculator {}"),
            assistant_calls(("call_a", "current_time", "{}"), ("call_b", "calculator", "{}")),
            tool("call_a", "2026-01-02T03:04:05Z"),
            tool("call_b", "4"),
        )
    )
    assert text_of(plan) == "Tool results: current_time → 2026-01-02T03:04:05Z; calculator → 4."


def test_loop_keeps_calling_after_results() -> None:
    first = plan_reply(request_of(user('/loop current_time {"tz": "UTC"}')))
    assert isinstance(first, ToolCallsPlan)
    call = first.calls[0]
    later = plan_reply(
        request_of(
            user('/loop current_time {"tz": "UTC"}'),
            assistant_calls((call.id, call.name, call.arguments)),
            tool(call.id, "12:00"),
        )
    )
    assert isinstance(later, ToolCallsPlan)
    assert (later.calls[0].name, later.calls[0].arguments) == ("current_time", '{"tz": "UTC"}')
    assert later.calls[0].id != call.id


def test_echo_keeps_text_exactly() -> None:
    text = "  **bold**\n\n<i>x</i>  \n\ttabbed  "
    assert text_of(plan_reply(request_of(user("/echo " + text)))) == text
    assert text_of(plan_reply(request_of(user("/echo\nline two")))) == "line two"
    assert text_of(plan_reply(request_of(user("/echo")))) == ""


def test_words_count_prefix_and_cap() -> None:
    ten = text_of(plan_reply(request_of(user("/words 10"))))
    twenty = text_of(plan_reply(request_of(user("/words 20"))))
    assert len(ten.split()) == 10 and twenty.startswith(ten)
    assert set(twenty.split()) <= set(VOCABULARY)
    assert count_tokens(twenty) == 20
    assert len(make_words(10**9).split()) == MAX_WORDS
    assert len(text_of(plan_reply(request_of(user("/words lots")))).split()) == 50


def test_write_paragraph_mentions_main_words_deterministically() -> None:
    message = "Write a short welcome letter about Lisbon trams and pastries"
    plan = plan_reply(request_of(user(message)))
    paragraph = text_of(plan)
    assert 40 <= len(paragraph.split()) <= 80
    for word in ("short", "welcome", "letter", "Lisbon", "trams", "pastries"):
        assert word in paragraph
    assert main_words(message) == ["short", "welcome", "letter", "Lisbon", "trams", "pastries"]
    assert text_of(plan_reply(request_of(user(message)))) == paragraph
    assert 40 <= len(text_of(plan_reply(request_of(user("write")))).split()) <= 80


def test_title_from_last_user_message() -> None:
    system = {"role": "system", "content": "Give this conversation a short Title."}
    title = text_of(
        plan_reply(request_of(system, user("/echo What is the capital of France, really?")))
    )
    assert title == "What is the capital of France"
    assert text_of(plan_reply(request_of(system, user("Hello there!")))) == "Hello there"
    assert text_of(plan_reply(request_of(system, user("  ")))) == "New chat"


def test_default_reply_quotes_and_explains() -> None:
    reply = text_of(plan_reply(request_of({"role": "developer", "content": "be nice"}, user("hi"))))
    assert reply.startswith('You said: "hi". I am the offline demo model (no real LLM)')
    assert "/tool current_time {}" in reply and "/words 50" in reply


def test_content_parts_are_read_as_text() -> None:
    parts = [
        {"type": "text", "text": "/echo a"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "b"},
    ]
    assert text_of(plan_reply(request_of(user(parts)))) == "a\nb"


def test_error_commands() -> None:
    rate = plan_reply(request_of(user("/error rate_limit 0.5")))
    assert isinstance(rate, ErrorPlan)
    assert (rate.status, rate.code, rate.retry_after_seconds) == (429, "rate_limit_exceeded", 0.5)
    server = plan_reply(request_of(user("/error server")))
    assert isinstance(server, ErrorPlan) and server.status == 500
    bad = plan_reply(request_of(user("/error bad_request")))
    assert isinstance(bad, ErrorPlan) and bad.status == 400
    timeout = plan_reply(request_of(user("/error timeout")))
    assert isinstance(timeout, TimeoutPlan) and timeout.seconds == 300
    drop = plan_reply(request_of(user("/error drop 3")))
    assert isinstance(drop, DropPlan) and len(drop.text.split()) == 3
    broken = plan_reply(request_of(user("/error stream 2")))
    assert isinstance(broken, StreamErrorPlan) and len(broken.text.split()) == 2
    assert "Kinds:" in text_of(plan_reply(request_of(user("/error nonsense"))))


def test_token_estimate() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("") == 0
    usage = usage_for(request_of(user("/words 7")), plan_reply(request_of(user("/words 7"))))
    assert usage.prompt_tokens == 3 + count_tokens("/words 7")
    assert usage.completion_tokens == 7
    assert usage.total_tokens == usage.prompt_tokens + 7


# --- request checks (pure) ----------------------------------------------------------------


def _invalid(body: object) -> RequestInvalid:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestInvalid) as caught:
        parse_chat_request(raw)
    return caught.value


def test_request_checks_match_openai() -> None:
    assert "could not parse the JSON body" in _invalid(b"{nope").message
    missing = _invalid({"model": MODEL_ID})
    assert (missing.param, missing.code) == ("messages", "missing_required_parameter")
    role = _invalid({"model": MODEL_ID, "messages": [{"role": "robot", "content": "x"}]})
    assert (role.param, role.code) == ("messages.[0].role", "invalid_value")
    empty = _invalid({"model": MODEL_ID, "messages": []})
    assert empty.code == "empty_array"
    content = _invalid({"model": MODEL_ID, "messages": [{"role": "user", "content": 5}]})
    assert content.param == "messages.[0].content"
    null = _invalid({"model": MODEL_ID, "messages": [{"role": "user", "content": None}]})
    assert null.param == "messages.[0].content"
    orphan = _invalid({"model": MODEL_ID, "messages": [user("x"), tool("call_1", "r")]})
    assert "must be a response to a preceeding message" in orphan.message
    unanswered = _invalid(
        {"model": MODEL_ID, "messages": [user("x"), assistant_calls(("c1", "t", "{}")), user("y")]}
    )
    assert "c1" in unanswered.message and unanswered.param == "messages.[1].role"
    wrong_id = _invalid(
        {
            "model": MODEL_ID,
            "messages": [user("x"), assistant_calls(("c1", "t", "{}")), tool("c2", "r")],
        }
    )
    assert wrong_id.param == "messages.[2].tool_call_id"
    delay = _invalid(
        {"model": MODEL_ID, "messages": [user("x")], "local_model": {"word_delay_ms": -1}}
    )
    assert delay.param == "local_model.word_delay_ms"


def test_all_roles_and_unknown_fields_are_accepted() -> None:
    request = parse_chat_request(
        json.dumps(
            {
                "model": MODEL_ID,
                "temperature": 0.2,
                "tools": [{"type": "function", "function": {"name": "t", "parameters": {}}}],
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "developer", "content": [{"type": "text", "text": "d"}]},
                    user("u"),
                    {
                        "role": "assistant",
                        "content": None,
                        "function_call": {"name": "f", "arguments": "{}"},
                    },
                    {"role": "function", "name": "f", "content": "42"},
                ],
            }
        ).encode()
    )
    assert text_of(plan_reply(request)) == "Tool results: f → 42."


def test_route_path_under_mounts() -> None:
    assert route_path({"path": "/v1/models"}) == "/v1/models"
    assert (
        route_path({"path": "/local-model/v1/models", "root_path": "/local-model"}) == "/v1/models"
    )
    assert route_path({"path": "/x", "path_remaining": "v1/models/"}) == "/v1/models"


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LocalModelConfig.from_env({}) == LocalModelConfig(word_delay_ms=30, api_key=None)
    env = {"LOCAL_MODEL_WORD_DELAY_MS": "7", "LOCAL_MODEL_API_KEY": "k"}
    assert LocalModelConfig.from_env(env) == LocalModelConfig(word_delay_ms=7, api_key="k")
    assert LocalModelConfig.from_env(env, word_delay_ms=1, api_key="").api_key is None
    with pytest.raises(ConfigError, match="LOCAL_MODEL_WORD_DELAY_MS"):
        LocalModelConfig.from_env({"LOCAL_MODEL_WORD_DELAY_MS": "fast"})


# --- the ASGI app in process --------------------------------------------------------------


async def test_app_stops_streaming_when_the_client_disconnects() -> None:
    """A 20000-word stream at 30 ms a word ends within moments of ``http.disconnect``."""
    body = json.dumps({"model": MODEL_ID, "stream": True, "messages": [user("/words 20000")]})
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "http.request", "body": body.encode(), "more_body": False})
    sent: list[dict[str, Any]] = []
    streaming = asyncio.Event()

    async def send(message: Any) -> None:
        sent.append(message)
        if len(sent) >= 4:
            streaming.set()

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    app = LocalModelApp(LocalModelConfig(word_delay_ms=30))
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(app(scope, inbox.get, send))
    await asyncio.wait_for(streaming.wait(), timeout=5)
    await inbox.put({"type": "http.disconnect"})
    await asyncio.wait_for(task, timeout=1)
    # Nothing more after the disconnect: the app has returned, and no task it started is left
    # to send (a send can only come from a running task).
    assert asyncio.all_tasks() - before == set()
    assert len(sent) < 20
    assert not any(message.get("more_body") is False for message in sent)


async def test_app_drop_without_daphne_fails_the_response() -> None:
    """Elsewhere than daphne, /error drop fails after the start: the ASGI way to abort."""
    transport = httpx2.ASGITransport(app=LocalModelApp(LocalModelConfig(word_delay_ms=0)))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:
        with pytest.raises(ConnectionAbortedError):
            await http.post(
                "/v1/chat/completions",
                json={"model": MODEL_ID, "stream": True, "messages": [user("/error drop")]},
            )


async def test_main_asgi_application_mounts_the_local_model() -> None:
    from chatproject.asgi import application

    transport = httpx2.ASGITransport(app=application)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        models = await http.get("/local-model/v1/models")
        assert models.status_code == 200
        assert models.json()["data"][0]["id"] == MODEL_ID
        reply = await http.post(
            "/local-model/v1/chat/completions",
            json={"model": MODEL_ID, "messages": [user("/echo mounted")]},
        )
        assert reply.json()["choices"][0]["message"]["content"] == "mounted"
        django = await http.get("/local-model-elsewhere/")
        assert django.status_code == 404
        assert django.headers["content-type"].startswith("text/html")  # Django's, not the model's


# --- over HTTP: a real manage.py local_model ----------------------------------------------


async def test_models_endpoint(local_model_url: str) -> None:
    models = await client(local_model_url).models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert (await client(local_model_url).models.retrieve(MODEL_ID)).id == MODEL_ID


@pytest.mark.parametrize(
    "content",
    ["hello there", "Write a note about Paris museums", "/words 120", "/echo  a\n\n*b*  "],
)
async def test_stream_reassembles_to_the_complete_reply(local_model_url: str, content: str) -> None:
    complete = await complete_text(local_model_url, content)
    assert complete
    assert await stream_text(local_model_url, content) == complete


async def test_echo_is_exact_over_http(local_model_url: str) -> None:
    text = "# Heading\n\n```python\nprint('<b>&amp;</b>')\n```\n  trailing  "
    assert await stream_text(local_model_url, "/echo " + text) == text
    assert await complete_text(local_model_url, "/echo " + text) == text


PARALLEL_TOOLS = (
    '/tool current_time {"timezone": "Europe/Paris"}\n/tool calculator {"expression": "6*7"}'
)


async def test_parallel_tool_call_deltas(local_model_url: str) -> None:
    stream = await client(local_model_url).chat.completions.create(
        model=MODEL_ID,
        messages=[user(PARALLEL_TOOLS)],
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    openings = []
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.id is not None:
                openings.append(delta)
                assert delta.type == "function" and delta.function is not None
                assert delta.function.arguments == ""
                calls[delta.index] = {"id": delta.id, "name": delta.function.name or "", "args": ""}
            else:
                assert delta.function is not None and delta.function.name is None
                calls[delta.index]["args"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert [o.index for o in openings] == [0, 1]
    assert calls[0]["name"] == "current_time"
    assert json.loads(calls[0]["args"]) == {"timezone": "Europe/Paris"}
    assert calls[1]["name"] == "calculator"
    assert json.loads(calls[1]["args"]) == {"expression": "6*7"}

    response = await client(local_model_url).chat.completions.create(
        model=MODEL_ID,
        messages=[user(PARALLEL_TOOLS)],
    )
    message = response.choices[0].message
    assert response.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        (calls[i]["id"], calls[i]["name"], calls[i]["args"]) for i in (0, 1)
    ]


async def test_usage_chunk_and_non_streaming_usage(local_model_url: str) -> None:
    stream = await client(local_model_url).chat.completions.create(
        model=MODEL_ID,
        messages=[user("/words 9")],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 9
    assert last.usage.total_tokens == last.usage.prompt_tokens + 9
    assert all(chunk.usage is None for chunk in chunks[:-1])
    response = await client(local_model_url).chat.completions.create(
        model=MODEL_ID, messages=[user("/words 9")]
    )
    assert response.usage is not None
    assert response.usage.model_dump() == last.usage.model_dump()


async def test_tool_results_answer_over_http(local_model_url: str) -> None:
    first = await client(local_model_url).chat.completions.create(
        model=MODEL_ID, messages=[user("/tool current_time {}\n/tool calculator {}")]
    )
    calls = first.choices[0].message.tool_calls or []
    messages = [
        user("/tool current_time {}\n/tool calculator {}"),
        first.choices[0].message.model_dump(exclude_none=True),
        tool(calls[0].id, "2026-05-01T10:00:00Z"),
        tool(calls[1].id, "4"),
    ]
    text = await client(local_model_url).chat.completions.create(model=MODEL_ID, messages=messages)
    assert text.choices[0].message.content == (
        "Tool results: current_time → 2026-05-01T10:00:00Z; calculator → 4."
    )


async def test_same_request_same_bytes_but_created(local_model_url: str) -> None:
    body = {"model": MODEL_ID, "stream": True, "messages": [user("/tool t {}\nWrite it")]}

    async def fetch() -> bytes:
        async with httpx2.AsyncClient() as http:
            response = await http.post(f"{local_model_url}/chat/completions", json=body)
            assert response.headers["content-type"].startswith("text/event-stream")
            return response.content

    first, second = await fetch(), await fetch()
    assert first.endswith(b"data: [DONE]\n\n")

    def without_created(raw: bytes) -> list[object]:
        events = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line]
        parsed = [json.loads(e) for e in events[:-1]]
        for event in parsed:
            event.pop("created")
        return parsed

    assert without_created(first) == without_created(second)


async def test_word_delay_override_per_request(local_model_url: str) -> None:
    started = time.monotonic()
    text = await stream_text(
        local_model_url, "/words 4", extra_body={"local_model": {"word_delay_ms": 150}}
    )
    assert len(text.split()) == 4
    assert time.monotonic() - started >= 0.55  # four pieces, 150 ms before each


async def test_rate_limit_error(local_model_url: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await complete_text(local_model_url, "/error rate_limit")
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "1"


async def test_server_error(local_model_url: str) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await stream_text(local_model_url, "/error server")
    assert caught.value.status_code == 500


async def test_bad_request_error(local_model_url: str) -> None:
    with pytest.raises(openai.BadRequestError):
        await complete_text(local_model_url, "/error bad_request")


async def test_timeout_error(local_model_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client(local_model_url, timeout=0.5).chat.completions.create(
            model=MODEL_ID, messages=[user("/error timeout")], stream=True
        )
    assert time.monotonic() - started < 5
    assert await complete_text(local_model_url, "/echo still here") == "still here"


async def streamed_until_raised(
    url: str, command: str, error: type[openai.APIError]
) -> tuple[str, openai.APIError]:
    """The text a streamed reply to ``command`` delivered before the SDK raised ``error``."""
    stream = await client(url).chat.completions.create(
        model=MODEL_ID, messages=[user(command)], stream=True
    )
    received: list[str] = []
    with pytest.raises(error) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    return "".join(received), caught.value


async def test_drop_breaks_the_stream(local_model_url: str) -> None:
    text, raised = await streamed_until_raised(
        local_model_url, "/error drop 4", openai.APIConnectionError
    )
    assert text == make_words(4)
    assert isinstance(raised.__cause__, httpx2.RemoteProtocolError)
    with pytest.raises(openai.APIConnectionError):
        await complete_text(local_model_url, "/error drop")


async def test_an_error_event_ends_the_stream_as_openais_do(local_model_url: str) -> None:
    text, raised = await streamed_until_raised(local_model_url, "/error stream 3", openai.APIError)
    assert text == make_words(3)
    assert type(raised) is openai.APIError  # not a connection or an HTTP status error
    assert "scripted by /error stream" in raised.message
    with pytest.raises(openai.InternalServerError):  # no stream to break into: a 500
        await complete_text(local_model_url, "/error stream")
    assert await complete_text(local_model_url, "/echo still here") == "still here"


async def test_client_disconnect_mid_stream_leaves_server_healthy(local_model_url: str) -> None:
    async with (
        httpx2.AsyncClient() as http,
        http.stream(
            "POST",
            f"{local_model_url}/chat/completions",
            json={"model": MODEL_ID, "stream": True, "messages": [user("/words 20000")]},
        ) as response,
    ):
        lines = 0
        async for line in response.aiter_lines():
            lines += bool(line)
            if lines >= 5:
                break
    assert await complete_text(local_model_url, "/echo next") == "next"


async def test_unknown_model_is_404(local_model_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client(local_model_url).chat.completions.create(model="gpt-4o", messages=[user("hi")])
    assert caught.value.code == "model_not_found"


async def test_malformed_bodies_are_400(local_model_url: str) -> None:
    async with httpx2.AsyncClient() as http:
        url = f"{local_model_url}/chat/completions"
        bad_json = await http.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        )
        missing = await http.post(url, json={"model": MODEL_ID})
        role = await http.post(
            url, json={"model": MODEL_ID, "messages": [{"role": "x", "content": "y"}]}
        )
        nowhere = await http.get(f"{local_model_url}/nowhere")
    for response in (bad_json, missing, role):
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    assert missing.json()["error"]["param"] == "messages"
    assert role.json()["error"]["param"] == "messages.[0].role"
    assert nowhere.status_code == 404
    with pytest.raises(openai.BadRequestError):
        await client(local_model_url).chat.completions.create(
            model=MODEL_ID, messages=[{"role": "tool", "tool_call_id": "c", "content": "r"}]
        )


# --- a server started with an API key, without Django -------------------------------------


@pytest.fixture(scope="module")
def keyed_model_url() -> Iterator[str]:
    """``python -m sessions_app.local_model --port 0 --api-key …``: the URL from its line."""
    command = [
        sys.executable,
        "-m",
        "sessions_app.local_model",
        "--port",
        "0",
        "--api-key",
        "sk-right-key",
        "--word-delay-ms",
        "0",
    ]
    env = {"DJANGO_SETTINGS_MODULE": "", "LOCAL_MODEL_API_KEY": ""}
    with ManagedProcess(
        command, name="local-model-keyed", env=env, ready_line="local model listening on"
    ) as process:
        assert process.ready_match is not None
        yield process.ready_match.split(" on ", 1)[1].strip()


async def test_api_key_is_checked(keyed_model_url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await client(keyed_model_url, api_key="sk-wrong-key").models.list()
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key" not in str(caught.value)
    async with httpx2.AsyncClient() as http:
        missing = await http.get(f"{keyed_model_url}/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    good = client(keyed_model_url, api_key="sk-right-key")
    response = await good.chat.completions.create(model=MODEL_ID, messages=[user("/echo ok")])
    assert response.choices[0].message.content == "ok"


def test_busy_port_fails_clearly() -> None:
    import socket
    import subprocess

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "sessions_app.local_model", "--port", str(port)],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert "could not listen" in result.stderr


# --- the main server: daphne on chatproject.asgi ------------------------------------------


@pytest.fixture(scope="module")
def main_server_url() -> Iterator[str]:
    port = free_port()
    daphne = Path(sys.executable).parent / "daphne"
    command = [str(daphne), "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"]
    with ManagedProcess(
        command,
        name="daphne-main",
        ready_port=port,
        env={"LOCAL_MODEL_WORD_DELAY_MS": "1", "LOCAL_MODEL_API_KEY": ""},
    ):
        yield f"http://127.0.0.1:{port}"


async def test_embedded_mount_streams_and_drops(main_server_url: str) -> None:
    url = f"{main_server_url}/local-model/v1"
    assert [m.id for m in (await client(url).models.list()).data] == [MODEL_ID]
    assert await stream_text(url, "/echo from the main server") == "from the main server"
    with pytest.raises(openai.APIConnectionError):
        await stream_text(url, "/error drop")
    async with httpx2.AsyncClient() as http:
        login = await http.get(f"{main_server_url}/accounts/login/")
    assert login.status_code == 200 and "text/html" in login.headers["content-type"]
