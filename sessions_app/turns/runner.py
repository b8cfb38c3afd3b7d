"""The steps of one turn: a model call streamed into an assistant message, then its tool calls.

``TurnRunner`` is driven by ``sessions_app.turns.start``, which owns the lease, the registry of
running turns and the outcome. Every write goes to the database before its event is
published, so a client that reconnects finds it either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from sessions_app import events, operations, process, store
from sessions_app.errors import LimitExceeded, StoreWriteError
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import client as llm
from sessions_app.model import context_window
from sessions_app.schemas import ChatMessageData, MessageOut, Usage
from sessions_app.tools.base import ToolContext
from sessions_app.tools.registry import (
    tool_arguments_parse,
    tool_execute,
    tool_get,
    tools_openai_schemas,
)

logger = logging.getLogger(__name__)

CANCELLED_TOOL_RESULT = "Error: the turn was stopped before this tool finished."


def message_out(message: ChatMessageData) -> dict[str, Any]:
    """A stored message as events and snapshots carry it."""
    return MessageOut.of(message).model_dump(mode="json")


def empty_reply() -> ChatMessageData:
    """An assistant message about to stream, as stored before its first token."""
    return ChatMessageData(role="assistant", content="", status="streaming")


@dataclass
class Step:
    """The assistant message being streamed, and what the step has produced so far."""

    message: ChatMessageData
    text: list[str] = field(default_factory=list)
    length: int = 0
    # How much of ``text`` went out in text_delta events (pieces, characters).
    sent_pieces: int = 0
    sent_length: int = 0
    tool_messages: list[ChatMessageData] = field(default_factory=list)

    def add(self, piece: str) -> None:
        self.text.append(piece)
        self.length += len(piece)

    def unsent(self) -> tuple[int, str]:
        """The text not sent yet and its offset; marks it sent."""
        offset, piece = self.sent_length, "".join(self.text[self.sent_pieces :])
        self.sent_pieces, self.sent_length = len(self.text), self.length
        return offset, piece


class TextSender:
    """Sends a streaming step's text as it grows, one ``text_delta`` at a time.

    The first piece goes out at once. After a delta, the next waits until
    ``CHAT_TEXT_DELTA_MS`` have passed since it was sent, and carries every piece that
    arrived meanwhile; so does a delta that waited for the previous one to be published
    (the log append and the group send take their time). An event costs the server about
    the same whatever it carries, so this bounds the events of an answer to what a reader
    can tell apart, and a busy process sends fewer, larger deltas instead of falling
    behind the model. The model is read meanwhile: the stream's pace never waits for the
    event log or the channel layer.
    """

    def __init__(self, runner: TurnRunner, step: Step) -> None:
        self.runner = runner
        self.step = step
        self.more = asyncio.Event()
        self.caught_up = asyncio.Event()  # set while every added piece has been published
        self.caught_up.set()
        self.hurry = asyncio.Event()  # set by flush: what is left goes out without waiting
        self.task = asyncio.ensure_future(self.send_loop())

    async def send_loop(self) -> None:
        step = self.step
        loop = asyncio.get_running_loop()
        interval = settings.CHAT_TEXT_DELTA_SECONDS
        next_at = 0.0
        while True:
            await self.more.wait()
            wait = next_at - loop.time()
            if wait > 0 and not self.hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hurry.wait(), wait)
            self.more.clear()
            while step.sent_length < step.length:
                next_at = loop.time() + interval
                offset, text = step.unsent()
                await self.runner.publish(
                    "text_delta",
                    message_sequence=step.message.sequence,
                    offset=offset,
                    text=text,
                )
            self.caught_up.set()
            self.hurry.clear()

    def add(self, piece: str) -> None:
        # Kept before it is sent: a cancel that lands while the event is on its way
        # (already in the log) must not leave the stored answer shorter than it.
        self.step.add(piece)
        self.caught_up.clear()
        self.more.set()

    async def flush(self) -> None:
        """Return once every piece added so far has been published (at once: the wait
        between deltas is skipped)."""
        if self.caught_up.is_set():
            return
        self.hurry.set()
        caught_up = asyncio.ensure_future(self.caught_up.wait())
        try:
            await asyncio.wait([caught_up, self.task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            caught_up.cancel()
        if self.task.done():
            self.task.result()  # a failure of the sender is the step's failure

    def stop(self) -> None:
        self.task.cancel()


class Checkpoints:
    """Writes a streaming step's text to the database every ``CHAT_CHECKPOINT_SECONDS``,
    counted from the end of the previous write, beside the stream: a slow database delays
    the next checkpoint, never the next piece. At most one write is on its way; ``stop``
    waits for it, so the step's final write always lands after it."""

    def __init__(self, runner: TurnRunner, step: Step) -> None:
        self.runner = runner
        self.step = step
        self.written = 0
        self.writing: asyncio.Future[None] | None = None
        self.task = asyncio.ensure_future(self.checkpoint_loop())

    async def checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.CHAT_CHECKPOINT_SECONDS)
            if self.step.length != self.written:
                self.writing = asyncio.ensure_future(self.write())
                await asyncio.shield(self.writing)

    async def write(self) -> None:
        length, text = self.step.length, "".join(self.step.text)
        sequence = self.step.message.sequence
        assert sequence is not None
        try:
            await db_sync_to_async(store.message_checkpoint)(
                session_id=self.runner.sid, sequence=sequence, content=text
            )
        except StoreWriteError:
            # The final write decides; a crash before it loses a little more text.
            logger.warning("checkpoint of session %s failed", self.runner.sid, exc_info=True)
        else:
            self.written = length

    async def stop(self) -> None:
        self.task.cancel()
        if self.writing is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.writing


class ModelCall:
    """A model call read by a task of its own into a queue, so that it can start before
    the turn that uses it (``sessions_app.turns.start``: the first call of a turn is made while
    the turn's lease and messages are being written, and dropped if the turn does not
    start). Iterate it once, like ``llm.stream_chat``; ``close`` stops the call."""

    _END = object()

    def __init__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.task = process.detached(self.read(messages, tools), "model call")

    async def read(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> None:
        try:
            async for item in llm.stream_chat(messages=messages, tools=tools or None):
                self.items.put_nowait(item)
        except Exception as exc:  # the reader's to raise, after what came before it
            self.items.put_nowait(exc)
        else:
            self.items.put_nowait(self._END)

    async def __aiter__(self) -> AsyncIterator[llm.StreamItem]:
        while True:
            item = await self.items.get()
            if item is self._END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        self.task.cancel()


@dataclass(frozen=True)
class FirstCall:
    """What a turn prepared for its first model call before it started: the reply's empty
    message, stored with the user's, and the call itself when the history it was made from
    is still current (``None``: read the history again and call then)."""

    reply: ChatMessageData
    call: ModelCall | None


class TurnRunner:
    def __init__(
        self,
        session_id: uuid.UUID,
        owner_id: int,
        turn_id: uuid.UUID,
        notice: str | None,
        first_call: FirstCall | None = None,
    ) -> None:
        self.sid = session_id
        self.owner_id = owner_id
        self.turn_id = turn_id
        # A note for the model on the first call only (a finished background operation).
        self.notice = notice
        self.first_call = first_call
        self.usage = Usage()
        self.step: Step | None = None
        self.last_seq: int | None = None
        # Tool messages that belong to operations: they stay pending when the turn ends.
        self.operation_messages: set[int | None] = set()

    async def publish(self, event_type: str, **fields: Any) -> None:
        event = await events.event_publish(
            self.sid, event_type, turn_id=str(self.turn_id), **fields
        )
        if event is not None:
            self.last_seq = event["seq"]

    async def update(self, message: ChatMessageData, **changes: Any) -> ChatMessageData:
        assert message.sequence is not None
        return await db_sync_to_async(store.message_update)(
            session_id=self.sid, sequence=message.sequence, changes=changes
        )

    async def run(self) -> str:
        """Model calls and tool rounds until the model answers or the step limit is hit."""
        tools = tools_openai_schemas()
        for _ in range(settings.CHAT_TURN_MAX_STEPS):
            calls = await self.stream_step(tools)
            if not calls:
                return "completed"
            await self.run_tools(calls)
            # Checked between model calls, after the tool results are stored: the model's
            # view stays consistent (every call answered) for the next turn.
            spent = self.usage.total_tokens
            if spent >= settings.CHAT_TURN_MAX_TOKENS:
                await self.publish(
                    "error",
                    code="token_limit",
                    message=(
                        f"This reply used {spent} tokens, over the limit of "
                        f"{settings.CHAT_TURN_MAX_TOKENS} for one turn; it was stopped. "
                        "Send another message to continue."
                    ),
                )
                return "token_limit"
        await self.publish(
            "error",
            code="step_limit",
            message=(
                f"The model asked for tools {settings.CHAT_TURN_MAX_STEPS} times in a row; "
                "the turn was stopped. Send another message to continue."
            ),
        )
        return "step_limit"

    async def model_messages(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The history within the token budget (``context_window``; raises ``ContextTooLong``)."""
        state = await db_sync_to_async(store.session_get)(session_id=self.sid)
        notice, self.notice = self.notice, None
        return await context_window.session_view(
            state, tools=tools, notice=notice, on_usage=self.record_usage
        )

    async def step_start(
        self, tools: list[dict[str, Any]]
    ) -> ModelCall | AsyncIterator[llm.StreamItem]:
        """Store the step's empty reply (unless the turn did before it started), publish
        it, and start the step's model call (unless the turn did)."""
        first, self.first_call = self.first_call, None
        if first is not None:
            self.step = Step(message=first.reply)  # a failure from here on closes it
        call: ModelCall | AsyncIterator[llm.StreamItem] | None = first.call if first else None
        if call is None:
            messages = await self.model_messages(tools)
            if self.step is None:
                [reply] = await db_sync_to_async(store.messages_append)(
                    session_id=self.sid, messages=[empty_reply()]
                )
                self.step = Step(message=reply)
            call = llm.stream_chat(messages=messages, tools=tools or None)
        assert self.step is not None
        await self.publish("message_created", message=message_out(self.step.message))
        return call

    async def stream_step(self, tools: list[dict[str, Any]]) -> list[llm.ToolCallRequest]:
        self.step = None
        call = await self.step_start(tools)
        step = self.step
        assert step is not None
        placeholder = step.message
        end: llm.StreamEnd | None = None
        sender, checkpoints = TextSender(self, step), Checkpoints(self, step)
        try:
            async for item in call:
                if isinstance(item, llm.TextDelta):
                    sender.add(item.text)
                elif isinstance(item, llm.ToolCallRequest):
                    await sender.flush()
                    await self.publish(
                        "tool_call",
                        message_sequence=placeholder.sequence,
                        tool_call=item.as_openai(),
                    )
                else:
                    end = item
            await sender.flush()
        finally:
            if isinstance(call, ModelCall):
                call.close()
            sender.stop()
            await checkpoints.stop()
        assert end is not None and placeholder.sequence is not None
        calls = end.tool_calls
        text = "".join(step.text)
        # The reply and the call's usage in one write; the events follow in their order.
        step.message, totals = await db_sync_to_async(store.message_complete)(
            session_id=self.sid,
            sequence=placeholder.sequence,
            changes={
                "content": (text or None) if calls else text,
                "tool_calls": [c.as_openai() for c in calls] or None,
                "status": "complete",
            },
            usage=end.usage,
            model=settings.CHAT_MODEL,
        )
        if end.usage is not None and totals is not None:
            await self.usage_published(end.usage, totals)
        await self.publish("message_updated", message=message_out(step.message))
        return calls

    async def record_usage(self, usage: Usage) -> None:
        totals = await db_sync_to_async(store.usage_record)(
            session_id=self.sid, usage=usage, model=settings.CHAT_MODEL
        )
        await self.usage_published(usage, totals)

    async def usage_published(self, usage: Usage, totals: Usage) -> None:
        """Add recorded ``usage`` to the turn's and publish it with the session's totals."""
        self.usage = Usage(
            prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
        )
        await self.publish(
            "usage",
            usage=usage.model_dump(),
            turn_usage=self.usage.model_dump(),
            session_usage=totals.model_dump(),
        )

    async def run_tools(self, calls: list[llm.ToolCallRequest]) -> None:
        """Run the step's tool calls in parallel; long-running ones become operations."""
        pending = await db_sync_to_async(store.messages_append)(
            session_id=self.sid,
            messages=[
                ChatMessageData(role="tool", name=c.name, tool_call_id=c.id, status="pending")
                for c in calls
            ],
        )
        assert self.step is not None
        self.step.tool_messages = pending
        for message in pending:
            await self.publish("message_created", message=message_out(message))
        await asyncio.gather(*(self.run_tool(c, m) for c, m in zip(calls, pending, strict=True)))

    async def run_tool(self, call: llm.ToolCallRequest, message: ChatMessageData) -> None:
        tool = tool_get(call.name)
        if tool is not None and tool.is_long_running:
            try:
                arguments = tool_arguments_parse(tool, call.arguments).model_dump(mode="json")
            except ValueError:
                pass  # tool_execute below reports the bad arguments to the model
            else:
                await self.start_operation(call, message, arguments)
                return

        async def progress(fraction: float | None, text: str) -> None:
            await self.publish(
                "tool_progress",
                message_sequence=message.sequence,
                tool_call_id=call.id,
                fraction=fraction,
                text=text,
            )

        async def complete(messages: list[dict[str, Any]]) -> str:
            text, usage = await llm.complete_text(messages=messages)
            if usage is not None:
                await self.record_usage(usage)
            return text

        context = ToolContext(
            session_id=self.sid,
            owner_id=self.owner_id,
            tool_call_id=call.id,
            progress=progress,
            complete=complete,
        )
        outcome = await tool_execute(name=call.name, raw_arguments=call.arguments, context=context)
        done = await self.update(
            message, content=outcome.content, status="complete" if outcome.ok else "failed"
        )
        self.replace_tool_message(done)
        await self.publish("tool_result", message=message_out(done))

    async def start_operation(
        self, call: llm.ToolCallRequest, message: ChatMessageData, arguments: Any
    ) -> None:
        try:
            op, created, stored = await db_sync_to_async(operations.operation_create)(
                session_id=self.sid,
                message=message,
                tool_name=call.name,
                tool_call_id=call.id,
                arguments=arguments,
            )
        except LimitExceeded as exc:
            # The model reads why in the tool result; the user gets the error event too.
            done = await self.update(message, content=f"Error: {exc.message}", status="failed")
            self.replace_tool_message(done)
            await self.publish("tool_result", message=message_out(done))
            await self.publish("error", code=exc.code, message=exc.message)
            return
        self.replace_tool_message(stored)
        self.operation_messages.add(stored.sequence)
        if created:
            await self.publish(
                "operation_started",
                operation=operations.operation_out(op),
                message=message_out(stored),
                notice="This runs in the background: you can close this tab and come back.",
            )
        else:
            # The same work already runs: point at it instead of starting it twice.
            await self.publish(
                "tool_result" if stored.status == "complete" else "message_updated",
                message=message_out(stored),
            )
            await self.publish("operation_in_progress", operation=operations.operation_out(op))

    def replace_tool_message(self, done: ChatMessageData) -> None:
        assert self.step is not None
        self.step.tool_messages = [
            done if m.sequence == done.sequence else m for m in self.step.tool_messages
        ]

    async def close_step(self, status: str) -> None:
        """Keep what a broken or stopped step produced, marked with ``status``."""
        step = self.step
        if step is None:
            return
        if step.message.status == "streaming":
            text = "".join(step.text)
            step.message = await self.update(step.message, content=text, status=status)
            await self.publish("message_updated", message=message_out(step.message))
        for message in step.tool_messages:
            if message.status == "pending" and message.sequence not in self.operation_messages:
                done = await self.update(
                    message, content=CANCELLED_TOOL_RESULT, status="interrupted"
                )
                await self.publish("tool_result", message=message_out(done))
