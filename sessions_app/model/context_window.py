"""The context window: what of a session the model is sent, within a token budget.

A model call is sent at most ``CHAT_CONTEXT_MAX_TOKENS - CHAT_CONTEXT_REPLY_TOKENS`` tokens,
everything counted: the system prompt, the history, a notice, and the tool schemas. What does
not fit is left out of the model's view, never out of the database, by whole units:

- a **block** is one message, or an assistant message with tool calls together with the tool
  messages answering it (a call is never separated from its results);
- a **turn** is a user message and every block after it up to the next user message.

The oldest turns go first; the system prompt and the newest turn always stay. When the newest
turn alone is too long, its oldest blocks go (its user message and its last block stay); when
even that is too long, ``ContextTooLong`` (``context_too_long``) ends the turn before any
model call. With ``CHAT_CONTEXT_SUMMARY`` on, what was left out is summarised by the model and
the summary, stored on the session with the sequence it covers, is sent after the system
prompt (``docs/architecture.md#context-window``).

Tokens are counted by ``sessions_app.model.tokens``: ``tiktoken`` for OpenAI models, an
estimate for others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from django.conf import settings

from sessions_app import store
from sessions_app.errors import Refused, SessionNotFound
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model import client as llm
from sessions_app.model.openai_messages import message_to_openai
from sessions_app.model.tokens import TOKENS_PER_MESSAGE, TokenCounter, counter_for
from sessions_app.schemas import SessionState, Usage

logger = logging.getLogger(__name__)

SUMMARY_PROMPT = (
    "Conversation summary request. The transcript below is the oldest part of a conversation "
    "between a user and an assistant that uses tools; it no longer fits in the assistant's "
    "context. Write a concise summary of it for the assistant to read instead: the user's "
    "goals and preferences, facts, decisions, tool results and open questions worth "
    "remembering. When the transcript starts with an earlier summary, merge it in. Reply "
    "with the summary only."
)
SUMMARY_INTRO = "Summary of the earlier conversation: "
TRANSCRIPT_LINE_MAX_CHARS = 1000
SUMMARY_ROUNDS = 2


class ContextTooLong(Refused):
    """Even the newest turn, reduced to its user message and last block, exceeds the budget:
    the request is refused before the model is called, and the turn ends with an ``error``
    event carrying its code."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(
            "context_too_long",
            f"This request needs about {needed} tokens (system prompt, tool descriptions, the "
            f"newest message and its tool results), more than the {budget} tokens the model "
            "may be sent at once. Send a shorter message, or start a new chat.",
        )
        self.needed = needed
        self.budget = budget


def context_budget() -> int:
    """Tokens one model call may be sent."""
    return int(settings.CHAT_CONTEXT_MAX_TOKENS) - int(settings.CHAT_CONTEXT_REPLY_TOKENS)


# --- fitting -------------------------------------------------------------------------------


class Entry(NamedTuple):
    sequence: int | None  # the stored message's; None for what is not stored (a notice)
    message: dict[str, Any]


@dataclass
class _Block:
    entries: list[Entry]
    counter: TokenCounter

    @cached_property
    def tokens(self) -> int:
        return sum(self.counter.message(e.message) for e in self.entries)


@dataclass(frozen=True)
class Fit:
    messages: list[dict[str, Any]]  # what to send
    tokens: int  # all of it counted, tool schemas included
    dropped: list[Entry] = field(default_factory=list)  # whole oldest turns left out, in order
    trimmed: int = 0  # blocks of the newest turn left out


def _blocks(entries: list[Entry], counter: TokenCounter) -> list[_Block]:
    blocks: list[_Block] = []
    open_calls: set[Any] = set()
    function_open = False
    for entry in entries:
        role = entry.message.get("role")
        answers = (role == "tool" and entry.message.get("tool_call_id") in open_calls) or (
            role == "function" and function_open
        )
        if answers and blocks:
            blocks[-1].entries.append(entry)
            continue
        blocks.append(_Block([entry], counter))
        calls = entry.message.get("tool_calls") if role == "assistant" else None
        open_calls = {c.get("id") for c in calls or [] if isinstance(c, dict)}
        function_open = role == "assistant" and bool(entry.message.get("function_call"))
    return blocks


def _turns(blocks: list[_Block]) -> list[list[_Block]]:
    turns: list[list[_Block]] = []
    for block in blocks:
        if not turns or block.entries[0].message.get("role") == "user":
            turns.append([block])
        else:
            turns[-1].append(block)
    return turns


def fit_entries(
    head: list[Entry],
    entries: list[Entry],
    *,
    tools: list[dict[str, Any]] | None,
    budget: int,
    counter: TokenCounter,
) -> Fit:
    """``head`` (never dropped) plus as much of ``entries`` as fits in ``budget`` tokens.
    Only what is kept is counted, so the cost follows the budget, not the history length.
    Raises ``ContextTooLong``."""
    total = counter.messages([e.message for e in head]) + counter.tools(tools)
    turns = _turns(_blocks(entries, counter))
    if not turns:
        if total > budget:
            raise ContextTooLong(total, budget)
        return Fit([e.message for e in head], total)
    newest = turns[-1]
    total += sum(b.tokens for b in newest)
    start, trimmed = len(turns) - 1, 0
    if total > budget:
        # The newest turn alone is too long: leave out its oldest blocks but the first (its
        # user message) and the last (what the model answers now).
        middle = newest[1:-1]
        while middle and total > budget:
            total -= middle.pop(0).tokens
            trimmed += 1
        if total > budget:
            raise ContextTooLong(total, budget)
        newest = [newest[0], *middle, newest[-1]] if len(newest) > 1 else newest
    else:
        while start > 0 and total + sum(b.tokens for b in turns[start - 1]) <= budget:
            start -= 1
            total += sum(b.tokens for b in turns[start])
    kept = [*(b for turn in turns[start:-1] for b in turn), *newest]
    dropped = [e for turn in turns[:start] for b in turn for e in b.entries]
    messages = [e.message for e in head] + [e.message for b in kept for e in b.entries]
    return Fit(messages, total, dropped, trimmed)


def fit_messages(
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None,
    budget: int,
    counter: TokenCounter,
) -> Fit:
    """``fit_entries`` for plain OpenAI messages; a leading system or developer message is
    the prompt and always kept."""
    entries = [Entry(None, m) for m in messages]
    split = 1 if entries and messages[0].get("role") in ("system", "developer") else 0
    return fit_entries(
        entries[:split], entries[split:], tools=tools, budget=budget, counter=counter
    )


# --- the session's view --------------------------------------------------------------------


def _session_entries(state: SessionState) -> tuple[list[Entry], list[Entry]]:
    """(the prompt, the history) of a session as OpenAI messages with their sequences."""
    entries = []
    for message in state.messages:
        converted = message_to_openai(message, session_id=state.id)
        if converted is not None:
            entries.append(Entry(message.sequence, converted))
    if entries and entries[0].message["role"] in ("system", "developer"):
        return entries[:1], entries[1:]
    return [Entry(None, {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT})], entries


async def session_view(
    state: SessionState,
    *,
    tools: list[dict[str, Any]] | None,
    notice: str | None,
    on_usage: Callable[[Usage], Awaitable[None]],
) -> list[dict[str, Any]]:
    """The messages of the session's next model call. Raises ``ContextTooLong``; a failed
    summary only costs the summary (a warning is logged)."""
    head, entries, plain = await _plain_view(state, tools=tools, notice=notice)
    if not _needs_summary(plain):
        return plain.messages
    counter = counter_for(settings.CHAT_MODEL)
    try:
        fitted = await _summarised(state, head, entries, plain, tools, counter, on_usage)
    except SessionNotFound:
        raise
    except Exception:
        logger.warning("no context summary for session %s", state.id, exc_info=True)
        return plain.messages
    return fitted.messages if fitted is not None else plain.messages


async def session_view_unless_summarised(
    state: SessionState, *, tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]] | None:
    """``session_view`` when it needs no model call (no summary to write or read), else
    ``None``; also ``None`` for ``ContextTooLong``, which ``session_view`` raises. For a turn
    that prepares its first model call before it starts: nothing here writes or publishes."""
    try:
        _head, _entries, plain = await _plain_view(state, tools=tools, notice=None)
    except ContextTooLong:
        return None
    return None if _needs_summary(plain) else plain.messages


async def _plain_view(
    state: SessionState, *, tools: list[dict[str, Any]] | None, notice: str | None
) -> tuple[list[Entry], list[Entry], Fit]:
    """The session's prompt and history, and what of them fits (no summary)."""
    head, entries = _session_entries(state)
    if notice:
        entries.append(Entry(None, {"role": "developer", "content": notice}))
    counter = counter_for(settings.CHAT_MODEL)
    plain = await asyncio.to_thread(
        fit_entries, head, entries, tools=tools, budget=context_budget(), counter=counter
    )
    return head, entries, plain


def _needs_summary(plain: Fit) -> bool:
    return bool(plain.dropped) and bool(settings.CHAT_CONTEXT_SUMMARY)


def summary_message(text: str) -> dict[str, Any]:
    return {"role": "system", "content": SUMMARY_INTRO + text}


async def _summarised(
    state: SessionState,
    head: list[Entry],
    entries: list[Entry],
    plain: Fit,
    tools: list[dict[str, Any]] | None,
    counter: TokenCounter,
    on_usage: Callable[[Usage], Awaitable[None]],
) -> Fit | None:
    """The view with a summary of what is left out: the stored one while it covers exactly
    that, else the stored one extended by what is newly left out. ``None``: no summary."""
    budget = context_budget()

    def fit_after(text: str, through: int) -> Fit:
        rest = [e for e in entries if e.sequence is None or e.sequence > through]
        head_and_summary = [*head, Entry(None, summary_message(text))]
        return fit_entries(head_and_summary, rest, tools=tools, budget=budget, counter=counter)

    stored = await db_sync_to_async(store.session_context_summary)(session_id=state.id)
    text, through = stored.text, stored.through_sequence
    if text and through is not None and _starts_a_turn(entries, through):
        fitted = await asyncio.to_thread(fit_after, text, through)
    else:
        text, fitted = "", plain
        if len(plain.dropped) < settings.CHAT_CONTEXT_SUMMARY_MIN_MESSAGES:
            return None
    # The summary takes room too, so it may push one more turn out: then it is extended once
    # more. Past SUMMARY_ROUNDS the view goes without those turns until the next model call.
    for _ in range(SUMMARY_ROUNDS):
        if not fitted.dropped:
            break
        text = await _summarise(text, fitted.dropped, counter, budget, on_usage)
        through = max(e.sequence for e in fitted.dropped if e.sequence is not None)
        await db_sync_to_async(store.session_context_summary_set)(
            session_id=state.id, summary=text, through_sequence=through
        )
        fitted = await asyncio.to_thread(fit_after, text, through)
    return fitted


async def _summarise(
    previous: str,
    dropped: list[Entry],
    counter: TokenCounter,
    budget: int,
    on_usage: Callable[[Usage], Awaitable[None]],
) -> str:
    """``previous`` extended by ``dropped``, written by the model; raises ``ModelError``."""
    request = summary_request(
        previous, [e.message for e in dropped], counter=counter, budget=budget
    )
    text, usage = await llm.complete_text(messages=request)
    if usage is not None:
        await on_usage(usage)
    text = " ".join(text.split())
    if not text:
        raise ValueError("the model wrote an empty summary")
    limit = budget // 4  # a summary may take at most a quarter of the budget
    while counter.text(text) > limit:
        text = text[: len(text) * 3 // 4].rstrip("…") + "…"
    return text


def _starts_a_turn(entries: list[Entry], through: int) -> bool:
    """Whether the history after ``through`` starts with a user message (or is empty), so a
    summary up to ``through`` leaves no tool result without its call."""
    after = (e for e in entries if e.sequence is not None and e.sequence > through)
    first = next(after, None)
    return first is None or first.message.get("role") == "user"


def _one_line(text: str, limit: int = TRANSCRIPT_LINE_MAX_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def transcript_lines(messages: list[dict[str, Any]]) -> list[str]:
    """One line per message: ``[role] text``, tool calls as ``name(arguments)``."""
    names: dict[str, str] = {}
    lines = []
    for message in messages:
        role = str(message.get("role"))
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content) if content else ""
        if role == "assistant":
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name"))
                text += f" [calls {function.get('name')}({function.get('arguments')})]"
        elif role == "tool":
            role = f"tool {names.get(str(message.get('tool_call_id')), '')}".strip()
        lines.append(f"[{role}] {_one_line(text.strip())}")
    return lines


def summary_request(
    previous: str, messages: list[dict[str, Any]], *, counter: TokenCounter, budget: int
) -> list[dict[str, Any]]:
    """The summary call's messages. The transcript keeps within ``budget``: past it, its
    oldest lines are left out (said so in the transcript)."""
    head = [f"Earlier summary: {_one_line(previous, 4 * budget)}"] if previous else []
    lines = transcript_lines(messages)
    room = budget - counter.messages([{"role": "system", "content": SUMMARY_PROMPT}])
    room -= TOKENS_PER_MESSAGE + sum(counter.text(line) + 1 for line in head) + 20
    left_out = len(lines)
    for line in reversed(lines):  # the newest lines first: they explain the kept history
        room -= counter.text(line) + 1
        if room < 0:
            break
        left_out -= 1
    note = [f"({left_out} older messages are left out.)"] if left_out else []
    transcript = "\n".join([*head, *note, *lines[left_out:]])
    return [
        {"role": "system", "content": SUMMARY_PROMPT},
        {"role": "user", "content": transcript},
    ]
