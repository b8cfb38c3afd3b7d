"""Sending one planned reply: an SSE stream paced piece by piece, or one JSON body.

Also the ASGI plumbing a reply needs: watching for the client's disconnect while it is sent,
and breaking the connection on purpose for ``/error drop``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from pydantic import BaseModel

from sessions_app.local_model.script import (
    DropPlan,
    Plan,
    StreamErrorPlan,
    TextPlan,
    TimeoutPlan,
    ToolCallsPlan,
    completion_id,
    split_arguments,
    split_text,
    usage_for,
)
from sessions_app.local_model.shapes import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    FunctionCall,
    FunctionDelta,
    ResponseMessage,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# After breaking a connection for /error drop, how long to wait for the server's disconnect.
DROP_WAIT_SECONDS = 10.0
SYSTEM_FINGERPRINT = "fp_chatproject_local"
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Reply:
    """Sends one planned reply, as an SSE stream or as one JSON body."""

    def __init__(self, *, request: ChatRequest, plan: Plan, send: Send, delay: float):
        self.request = request
        self.plan = plan
        self.send = send
        self.delay = delay
        self.id = completion_id(request)
        self.created = int(time.time())
        self.usage: Usage = usage_for(request, plan)

    async def send_all(self) -> None:
        plan = self.plan
        if isinstance(plan, TimeoutPlan):
            await asyncio.sleep(plan.seconds)  # cut short by the client's disconnect
            plan = TextPlan(text=plan.text)
        if isinstance(plan, DropPlan):
            await self._drop(plan)
        elif isinstance(plan, StreamErrorPlan):
            await self._stream_error(plan)
        elif isinstance(plan, TextPlan | ToolCallsPlan):
            if self.request.stream:
                await self._stream(plan)
            else:
                await send_json(send=self.send, status=200, payload=self._completion(plan))

    def _completion(self, plan: TextPlan | ToolCallsPlan) -> ChatCompletion:
        if isinstance(plan, TextPlan):
            message = ResponseMessage(content=plan.text)
            finish: FinishReason = "stop"
        else:
            calls = [
                ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                for c in plan.calls
            ]
            message = ResponseMessage(content=None, tool_calls=calls)
            finish = "tool_calls"
        return ChatCompletion(
            id=self.id,
            created=self.created,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=[Choice(message=message, finish_reason=finish)],
            usage=self.usage,
        )

    async def _stream(self, plan: TextPlan | ToolCallsPlan) -> None:
        await self._start_stream()
        if isinstance(plan, TextPlan):
            await self._text_chunks(plan.text)
            await self._chunk(Delta(), finish="stop")
        else:
            for index, call in enumerate(plan.calls):
                opening = ToolCallDelta(
                    index=index,
                    id=call.id,
                    type="function",
                    function=FunctionDelta(name=call.name, arguments=""),
                )
                await self._chunk(
                    Delta(role="assistant" if index == 0 else None, tool_calls=[opening])
                )
                for fragment in split_arguments(call.arguments):
                    await self._pause()
                    more = ToolCallDelta(index=index, function=FunctionDelta(arguments=fragment))
                    await self._chunk(Delta(tool_calls=[more]))
            await self._chunk(Delta(), finish="tool_calls")
        if self.request.include_usage:
            chunk = ChatCompletionChunk(
                id=self.id,
                created=self.created,
                system_fingerprint=SYSTEM_FINGERPRINT,
                choices=[],
                usage=self.usage,
            )
            await self._event(chunk.model_dump_json().encode())
        await self._event(b"[DONE]", more_body=False)

    async def _drop(self, plan: DropPlan) -> None:
        """Send part of a reply, then break the connection so the client sees a broken body."""
        if self.request.stream:
            await self._start_stream()
            await self._text_chunks(plan.text)
        else:
            await self.send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            partial = f'{{"id":"{self.id}","object":"chat.completion","choices":['
            await self.send(
                {"type": "http.response.body", "body": partial.encode(), "more_body": True}
            )
        if not close_connection(self.send):
            # The portable way: an ASGI server closes the connection when the application
            # fails after the response has started.
            raise ConnectionAbortedError("/error drop: abandoning the response")
        await asyncio.sleep(DROP_WAIT_SECONDS)  # cut short by the disconnect that follows

    async def _stream_error(self, plan: StreamErrorPlan) -> None:
        """Stream a few words, then an error event as OpenAI's servers send one in a
        stream (``data: {"error": {...}}``), then end the stream without a finish."""
        await self._start_stream()
        await self._text_chunks(plan.text)
        error = {"error": {"message": plan.message, "type": plan.error_type, "code": None}}
        await self._event(json.dumps(error).encode(), more_body=False)

    async def _text_chunks(self, text: str) -> None:
        """The role chunk, then ``text`` piece by piece at the reply's pace."""
        await self._chunk(Delta(role="assistant", content=""))
        for piece in split_text(text):
            await self._pause()
            await self._chunk(Delta(content=piece))

    async def _start_stream(self) -> None:
        headers = [*SSE_HEADERS, (b"x-request-id", self.id.encode())]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> None:
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
        )
        await self._event(chunk.model_dump_json().encode())

    async def _event(self, data: bytes, *, more_body: bool = True) -> None:
        body = b"data: " + data + b"\n\n"
        await self.send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def _pause(self) -> None:
        # Even without a delay, yield: daphne's send never suspends, and a 20000-word reply
        # must not starve other connections or the disconnect watcher.
        await asyncio.sleep(self.delay)


async def run_until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or the client disconnects, whichever comes first.

    Both tasks are always cancelled and awaited, so nothing outlives the request.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        done, _pending = await asyncio.wait(
            {work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
    if work_task in done:
        work_task.result()


def close_connection(send: Send) -> bool:
    """Close the TCP connection under a daphne response, mid-body. False elsewhere.

    ASGI has no message for "abort this response", and daphne, unlike other servers, does not
    close the connection when an application fails after the response has started (its error
    page then fails too). Daphne's ``send`` is ``partial(server.handle_reply, request)``, and
    the Twisted request knows its transport, so this reaches for it.
    """
    request = send.args[0] if isinstance(send, functools.partial) and send.args else None
    transport = getattr(getattr(request, "channel", None), "transport", None)
    lose_connection = getattr(transport, "loseConnection", None)
    if not callable(lose_connection):
        return False
    lose_connection()
    return True


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_json(
    send: Send, status: int, payload: BaseModel, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = payload.model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
