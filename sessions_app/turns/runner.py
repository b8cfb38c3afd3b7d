"""Running one turn: model calls streamed into assistant messages, tool rounds, the outcome.

``turn_run`` holds the session's lease while the turn runs (renewing it, and stopping the
turn when another process took it away), hears ``cancel`` from any process, and publishes
how the turn ended; ``TurnRunner`` makes its steps. Every write goes to the database before
its event is published, so a client that reconnects finds it either way.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from django.conf import settings

from sessions_app import events, operations, process, store
from sessions_app.errors import LeaseLost, LimitExceeded, Refused, SessionNotFound
from sessions_app.events import frames
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import client as llm
from sessions_app.model import context_window
from sessions_app.schemas import ChatMessageData, Usage
from sessions_app.store import leases
from sessions_app.tools.base import ToolContext
from sessions_app.tools.registry import (
    tool_arguments_parse,
    tool_execute,
    tool_get,
    tools_openai_schemas,
)
from sessions_app.turns.cancel import hear_cancels
from sessions_app.turns.registry import Turn, running_add, running_remove, turn_cancel
from sessions_app.turns.text_stream import (
    Checkpoints,
    FirstCall,
    ModelCall,
    Step,
    TextSender,
    empty_reply,
)
from sessions_app.turns.titles import title_make

logger = logging.getLogger(__name__)

CANCELLED_TOOL_RESULT = "Error: the turn was stopped before this tool finished."
# A jump of seq this large within one turn means the event counter restarted (a turn and
# the operations around it publish far fewer events; a restart jumps by SEQ_RESTART_GAP).
LOG_RESTART_JUMP = events.SEQ_RESTART_GAP // 2


class CutShort(NamedTuple):
    """How a reply the model ended early is stored, and the error the turn ends with."""

    status: str
    code: str
    message: str


# The model's finish reasons that end a reply before it is whole.
CUT_SHORT = {
    "length": CutShort(
        "interrupted",
        "model_reply_cut_off",
        "The model stopped at its length limit: the reply is cut off.",
    ),
    "content_filter": CutShort(
        "failed",
        "model_reply_filtered",
        "The model's content filter stopped the reply.",
    ),
}


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

    async def publish(self, event: frames.SessionEvent) -> None:
        """Publish an event of this turn (it carries the turn's id)."""
        event.turn_id = str(self.turn_id)
        seq = await events.event_publish(self.sid, event)
        if seq is None:
            return
        if self.last_seq is not None and seq > self.last_seq + LOG_RESTART_JUMP:
            # The counter restarted past its floor (Redis lost the log): the text streamed
            # so far goes out again whole, so no reader is left with a hole.
            logger.warning("event log of session %s restarted; resending the text", self.sid)
            if self.step is not None and self.step.message.status == "streaming":
                self.step.resend_all()
        self.last_seq = seq

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
                    frames.ErrorEvent(
                        code="token_limit",
                        message=(
                            f"This reply used {spent} tokens, over the limit of "
                            f"{settings.CHAT_TURN_MAX_TOKENS} for one turn; it was stopped. "
                            "Send another message to continue."
                        ),
                    )
                )
                return "token_limit"
        await self.publish(
            frames.ErrorEvent(
                code="step_limit",
                message=(
                    f"The model asked for tools {settings.CHAT_TURN_MAX_STEPS} times in a row; "
                    "the turn was stopped. Send another message to continue."
                ),
            )
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
        await self.publish(frames.MessageCreated(message=events.message_out(self.step.message)))
        return call

    async def stream_step(self, tools: list[dict[str, Any]]) -> list[llm.ToolCallRequest]:
        self.step = None
        call = await self.step_start(tools)
        step = self.step
        assert step is not None
        placeholder = step.message
        end: llm.StreamEnd | None = None
        sender, checkpoints = TextSender(self.publish, step), Checkpoints(self.sid, step)
        try:
            async for item in call:
                if isinstance(item, llm.TextDelta):
                    sender.add(item.text)
                elif isinstance(item, llm.ToolCallRequest):
                    await sender.flush()
                    await self.publish(
                        frames.ToolCall(
                            message_sequence=placeholder.sequence, tool_call=item.as_openai()
                        )
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
        cut = CUT_SHORT.get(end.finish_reason)
        # The reply and the call's usage in one write; the events follow in their order.
        step.message, totals = await db_sync_to_async(store.message_complete)(
            session_id=self.sid,
            sequence=placeholder.sequence,
            changes={
                "content": (text or None) if calls else text,
                "tool_calls": [c.as_openai() for c in calls] or None,
                "status": cut.status if cut else "complete",
            },
            usage=end.usage,
            model=settings.CHAT_MODEL,
            turn_id=self.turn_id,  # nothing is written once another process recovered it
        )
        if end.usage is not None and totals is not None:
            await self.usage_published(end.usage, totals)
        await self.publish(frames.MessageUpdated(message=events.message_out(step.message)))
        if cut:
            # The reply is stored as it came, marked; the turn ends with the reason.
            raise llm.ModelError(cut.code, cut.message)
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
            frames.UsageReported(usage=usage, turn_usage=self.usage, session_usage=totals)
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
            await self.publish(frames.MessageCreated(message=events.message_out(message)))
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
                frames.ToolProgress(
                    message_sequence=message.sequence,
                    tool_call_id=call.id,
                    fraction=fraction,
                    text=text,
                )
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
        await self.publish(frames.ToolResult(message=events.message_out(done)))

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
            await self.publish(frames.ToolResult(message=events.message_out(done)))
            await self.publish(frames.ErrorEvent(code=exc.code, message=exc.message))
            return
        self.replace_tool_message(stored)
        self.operation_messages.add(stored.sequence)
        if created:
            await self.publish(
                frames.OperationStarted(
                    operation=events.operation_out(op),
                    message=events.message_out(stored),
                    notice="This runs in the background: you can close this tab and come back.",
                )
            )
        else:
            # The same work already runs: point at it instead of starting it twice.
            shown = events.message_out(stored)
            await self.publish(
                frames.ToolResult(message=shown)
                if stored.status == "complete"
                else frames.MessageUpdated(message=shown)
            )
            await self.publish(frames.OperationInProgress(operation=events.operation_out(op)))

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
            await self.publish(frames.MessageUpdated(message=events.message_out(step.message)))
        for message in step.tool_messages:
            if message.status == "pending" and message.sequence not in self.operation_messages:
                done = await self.update(
                    message, content=CANCELLED_TOOL_RESULT, status="interrupted"
                )
                await self.publish(frames.ToolResult(message=events.message_out(done)))


def turn_launch(turn: Turn) -> None:
    """Run ``turn`` as a task of this process (it holds the session's lease already)."""
    running_add(turn)
    name = f"turn {turn.turn_id} of session {turn.session_id}"
    turn.task = process.spawn(turn_run(turn), name)


async def _keep_lease(turn: Turn) -> None:
    """Renew the lease; stop the turn if it was taken away (this process was presumed dead)."""

    async def renew() -> bool:
        return bool(
            await db_sync_to_async(leases.turn_lease_renew)(
                session_id=turn.session_id, turn_id=turn.turn_id
            )
        )

    def lost() -> None:
        turn.lease_lost = True
        turn_cancel(turn.session_id, reason="interrupted")

    await process.keep_renewing(renew, lost, f"turn {turn.turn_id}")


async def _release(turn: Turn, event_seq: int | None = None) -> bool:
    """Give the lease up; ``False`` when another process had taken it."""
    released = await db_sync_to_async(leases.turn_lease_release)(
        session_id=turn.session_id, turn_id=turn.turn_id, event_seq=event_seq
    )
    return bool(released)


async def turn_run(turn: Turn) -> None:
    """Run ``turn`` to its end, holding its lease, and publish how it ended."""
    runner = TurnRunner(
        turn.session_id, turn.owner_id, turn.turn_id, turn.notice, first_call=turn.first_call
    )
    helpers = [
        asyncio.ensure_future(_keep_lease(turn)),
        asyncio.ensure_future(hear_cancels(turn)),
    ]
    status = "failed"
    try:
        await runner.publish(frames.TurnStarted())
        status = await runner.run()
    except asyncio.CancelledError:
        status = turn.stop_reason
        if not turn.lease_lost:  # else the recovering process ended it already
            await runner.close_step("interrupted")
    except (llm.ModelError, Refused) as exc:
        # A model error, or a refusal of the request before the model saw it (the history
        # does not fit the context window): the error's code tells the user which.
        await runner.close_step("failed")
        await runner.publish(
            frames.ErrorEvent(code=exc.code, message=exc.message, retry_after=exc.retry_after)
        )
    except LeaseLost:
        turn.lease_lost = True  # its reply was not written: the recovery's end stands
    except SessionNotFound:
        logger.info("session %s was deleted during turn %s", turn.session_id, turn.turn_id)
        status = "session_deleted"
    except Exception:
        logger.exception("turn %s of session %s failed", turn.turn_id, turn.session_id)
        try:
            await runner.close_step("failed")
        finally:
            await runner.publish(
                frames.ErrorEvent(
                    code="internal_error", message="The server failed to finish the reply."
                )
            )
    finally:
        for helper in helpers:
            helper.cancel()
        # The session is free before turn_finished says so: a client that sends the moment
        # it sees turn_finished must not be told that a turn is in progress.
        try:
            # With the event floor: the turn_finished event below passes it by one.
            if not turn.lease_lost and not await _release(turn, runner.last_seq):
                turn.lease_lost = True
        except Exception:
            logger.warning("could not release turn %s; its lease expires", turn.turn_id)
        finally:
            running_remove(turn)
        if turn.lease_lost:
            # Another process recovered this turn and published its end: one end only.
            logger.warning("turn %s lost its lease; its end is the recovery's", turn.turn_id)
        else:
            await runner.publish(frames.TurnFinished(status=status, turn_usage=runner.usage))
    if status == "completed" and not turn.lease_lost:
        process.spawn(title_make(turn.session_id), "title")
