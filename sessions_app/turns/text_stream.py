"""A model call streamed into an assistant message: the step's text, its ``text_delta``
events, its checkpoints, and a call that can start before the turn that reads it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings

from sessions_app import process, store
from sessions_app.errors import StoreWriteError
from sessions_app.events import frames
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import client as llm
from sessions_app.schemas import ChatMessageData

logger = logging.getLogger(__name__)


class Publish(Protocol):
    """Publishes one event of the turn (``TurnRunner.publish``)."""

    def __call__(self, event: frames.SessionEvent) -> Awaitable[None]: ...


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

    def resend_all(self) -> None:
        """Send the whole text again with the next delta, from offset 0: the event log lost
        the earlier deltas (its Redis restarted), so readers of the log, and clients whose
        snapshot came from it, may hold only the last checkpoint."""
        self.sent_pieces = self.sent_length = 0


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

    def __init__(self, publish: Publish, step: Step) -> None:
        self.publish = publish
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
                await self.publish(
                    frames.TextDelta(
                        message_sequence=step.message.sequence, offset=offset, text=text
                    )
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

    def __init__(self, session_id: uuid.UUID, step: Step) -> None:
        self.session_id = session_id
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
                session_id=self.session_id, sequence=sequence, content=text
            )
        except StoreWriteError:
            # The final write decides; a crash before it loses a little more text.
            logger.warning("checkpoint of session %s failed", self.session_id, exc_info=True)
        else:
            self.written = length

    async def stop(self) -> None:
        self.task.cancel()
        if self.writing is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.writing


class ModelCall:
    """A model call read by a task of its own into a queue, so that it can start before
    the turn that uses it (``turns.start``: the first call of a turn is made while
    the turn's lease and messages are being written, and dropped if the turn does not
    start). Iterate it once, like ``llm.stream_chat``; ``close`` stops the call."""

    _END = object()

    def __init__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.task = process.spawn(self.read(messages, tools), "model call")

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
