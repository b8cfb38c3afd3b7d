"""sessions_app.model.client.stream_chat against a model server that streams odd but valid chunks.

The SDK's HTTP layer is given a mock transport (httpx2, the SDK's own HTTP library), so the
request, the SSE decoding and the chunk handling are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI

from sessions_app.model import client as llm


def sse(*chunks: Any) -> bytes:
    lines = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def choice(delta: dict[str, Any], index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


def chunk(*choices: Any, usage: Any = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "choices": list(choices), "usage": usage}


def use_server(monkeypatch: pytest.MonkeyPatch, body: bytes) -> list[dict[str, Any]]:
    """Answer every request with ``body`` as an event stream; returns the requests' JSON."""
    seen: list[dict[str, Any]] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = AsyncOpenAI(
        base_url="http://model.test/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)),
    )
    monkeypatch.setattr(llm, "_client", lambda: client)
    return seen


async def collect(**kwargs: Any) -> list[Any]:
    return [item async for item in llm.stream_chat(**kwargs)]


async def test_text_tool_calls_in_pieces_and_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    body = sse(
        chunk(choice({"role": "assistant", "content": ""})),
        chunk(choice({"content": "Hel"})),
        chunk(choice({"content": "lo\x00"}), choice({"content": "other choice"}, index=1)),
        "not an object",
        chunk("not a choice", choice({"content": 7})),
        chunk(
            choice(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "b",
                            "function": {"name": "calculator", "arguments": ""},
                        },
                        {"index": 0, "id": "a", "function": {"name": "current_time"}},
                    ]
                }
            )
        ),
        chunk(choice({"tool_calls": [{"index": 1, "function": {"arguments": '{"expression": '}}]})),
        chunk(choice({"tool_calls": [{"index": 1, "function": {"arguments": '"6*7"}'}}]})),
        chunk(choice({}, finish="tool_calls")),
        chunk(usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}),
    )
    seen = use_server(monkeypatch, body)
    items = await collect(messages=[{"role": "user", "content": "hi"}])
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    texts = [i.text for i in items if isinstance(i, llm.TextDelta)]
    assert texts == ["Hel", "lo\ufffd"]  # choice 1, non-text content and junk are left out
    calls = [(c.id, c.name, c.arguments) for c in items if isinstance(c, llm.ToolCallRequest)]
    assert calls == [("a", "current_time", "{}"), ("b", "calculator", '{"expression": "6*7"}')]
    end = items[-1]
    assert isinstance(end, llm.StreamEnd) and end.finish_reason == "tool_calls"
    assert end.usage == llm.Usage(prompt_tokens=11, completion_tokens=5)


async def test_a_stream_without_a_finish_reason_is_a_dropped_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_server(monkeypatch, sse(chunk(choice({"content": "half an ans"}))))
    items: list[Any] = []
    with pytest.raises(llm.ModelError) as caught:
        async for item in llm.stream_chat(messages=[{"role": "user", "content": "hi"}]):
            items.append(item)
    assert caught.value.code == "model_stream_dropped"
    assert [i.text for i in items] == ["half an ans"]  # what came before stays valid


async def test_an_error_event_in_the_stream_is_a_model_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = sse(chunk(choice({"content": "a"})), {"error": {"message": "overloaded"}})
    use_server(monkeypatch, body)
    with pytest.raises(llm.ModelError) as caught:
        await collect(messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_stream_error"
    assert caught.value.message.endswith("during the reply: overloaded")


# --- failures of the connection ---------------------------------------------------------------


def real_client(monkeypatch: pytest.MonkeyPatch, settings: Any, base_url: str) -> None:
    """The project's own client (the aiohttp transport), pointed at ``base_url``."""
    settings.CHAT_MODEL_BASE_URL = base_url
    settings.CHAT_MODEL_MAX_RETRIES = 0
    settings.CHAT_MODEL_TIMEOUT = 0.5


async def test_nothing_listening_is_unreachable_naming_the_host(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, and closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    real_client(monkeypatch, settings, f"http://127.0.0.1:{port}/v1")
    with pytest.raises(llm.ModelError) as caught:
        await collect(messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_unreachable"
    assert f"127.0.0.1:{port}" in caught.value.message
    await llm.clients_close()


async def test_a_stall_in_the_middle_of_a_reply_is_a_timeout(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """The server sends its headers and one chunk, then nothing: ``model_timeout`` (not "the
    connection broke off"), and the text before it stays valid."""
    release = asyncio.Event()

    async def stalling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        first = sse(chunk(choice({"content": "Hel"}))).split(b"data: [DONE]")[0]
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + f"{len(first):x}\r\n".encode() + first + b"\r\n"
        )
        await writer.drain()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(stalling, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    real_client(monkeypatch, settings, f"http://127.0.0.1:{port}/v1")
    seen: list[Any] = []
    with pytest.raises(llm.ModelError) as caught:
        async for item in llm.stream_chat(messages=[{"role": "user", "content": "hi"}]):
            seen.append(item)
    release.set()
    server.close()
    await server.wait_closed()
    await llm.clients_close()
    assert caught.value.code == "model_timeout", caught.value.message
    assert "stopped sending" in caught.value.message
    assert seen == [llm.TextDelta("Hel")]
