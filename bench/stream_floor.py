"""The floor for bench/stream_bench.py: a raw ASGI websocket app, no Django, no channels.

    STREAM_FLOOR_MODEL_URL=http://127.0.0.1:8001/v1 PYTHONPATH=bench \\
        .venv/bin/python -m daphne -p 8002 stream_floor:application

It speaks just enough of docs/protocol.md for the bench's client: ``resume`` gets a
``snapshot`` (with only its ``seq``), ``send`` gets an ``ack`` and then a turn relayed from
the model with the same ``openai`` SDK call the server makes (``AsyncOpenAI.post`` streaming
``/chat/completions`` with ``include_usage``, chunks kept as parsed JSON):
``message_created``, one ``text_delta`` per content chunk, then ``message_updated`` with the
whole text and ``turn_finished``. Every event carries a per-socket ``seq``. No
authentication, database, cache, event log or channel layer: what is left is daphne, the
websocket, the model client and JSON, i.e. what any server relaying the
model's tokens over a websocket has to pay.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from typing import Any

import openai
from openai import AsyncOpenAI

Scope = dict[str, Any]
_client: AsyncOpenAI | None = None


def client() -> AsyncOpenAI:
    global _client
    if _client is None:  # one per process (daphne runs one event loop)
        _client = AsyncOpenAI(
            base_url=os.environ["STREAM_FLOOR_MODEL_URL"],
            api_key="stream-floor",
            timeout=120.0,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),  # the server's transport
        )
    return _client


class Socket:
    def __init__(self, send: Any) -> None:
        self.send = send
        self.seq = 0
        self.messages = 0
        self.turn: asyncio.Task[None] | None = None

    async def frame(self, frame: dict[str, Any], *, event: bool = True) -> None:
        if event:
            self.seq += 1
            frame["seq"] = self.seq
        await self.send({"type": "websocket.send", "text": json.dumps(frame)})

    async def run_turn(self, content: str) -> None:
        try:
            await self.relay(content)
        except Exception as exc:  # in the log the bench checks, and to the client
            traceback.print_exc(file=sys.stderr)
            await self.frame({"type": "error", "code": "model_failed", "message": repr(exc)})
            await self.frame({"type": "turn_finished", "status": "failed"})

    async def relay(self, content: str) -> None:
        self.messages += 2  # the user's message and the answer, as the server numbers them
        sequence = self.messages
        message = {"sequence": sequence, "role": "assistant", "content": "", "status": "streaming"}
        await self.frame({"type": "message_created", "message": dict(message)})
        body = {
            "model": "chatproject-local",
            "messages": [{"role": "user", "content": content}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stream = await client().post(
            "/chat/completions",
            body=body,
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        text: list[str] = []
        length = 0
        async for chunk in stream:
            for choice in chunk.get("choices") or []:  # type: ignore[attr-defined]
                piece = choice["delta"].get("content")
                if choice["index"] == 0 and piece:
                    await self.frame(
                        {
                            "type": "text_delta",
                            "message_sequence": sequence,
                            "offset": length,
                            "text": piece,
                        }
                    )
                    text.append(piece)
                    length += len(piece)
        message |= {"content": "".join(text), "status": "complete"}
        await self.frame({"type": "message_updated", "message": message})
        await self.frame({"type": "turn_finished", "status": "completed"})


async def application(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"websocket only\n"})
        return
    if scope["type"] != "websocket":
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    socket = Socket(send)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = json.loads(message.get("text") or "{}")
            if frame.get("type") == "resume":
                await socket.frame({"type": "snapshot", "seq": socket.seq}, event=False)
            elif frame.get("type") == "send":
                if socket.turn is not None and not socket.turn.done():
                    error = {"type": "error", "code": "turn_in_progress", "message": "busy"}
                    await socket.frame(error, event=False)
                    continue
                ack = {"type": "ack", "of": "send", "duplicate": False}
                ack["client_message_id"] = frame["client_message_id"]
                await socket.frame(ack, event=False)
                socket.turn = asyncio.ensure_future(socket.run_turn(frame["content"]))
    finally:
        if socket.turn is not None:
            socket.turn.cancel()
