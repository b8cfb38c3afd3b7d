"""Turns: start, continue, cancel, and recover them. One turn = a user message (or a finished
background operation) answered by the model, with as many tool rounds as it needs.

A turn runs as an ``asyncio`` task owned by the server process, never by a socket: closing
the socket that started it does not stop it; only ``cancel`` does (or a shutdown). It holds
its session's turn lease (``sessions_app.store.leases``) while it runs, so at most one turn runs
per session across all processes, and its process's cancel inbox joins the session's control
group, so a ``cancel`` sent to any process reaches it. The steps themselves are in ``turn_steps``.

Double-send policy: one turn per session at a time. A ``send`` while one runs is refused
with ``turn_in_progress``; a retried ``send`` with the same client message id is
acknowledged as a duplicate and starts nothing. The user's limits (messages a minute,
running turns across sessions: ``sessions_app.limits``) are checked before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from sessions_app import events, limits, process, store
from sessions_app.errors import LimitExceeded, Refused, SessionNotFound
from sessions_app.infra.db import db_sync_to_async
from sessions_app.infra.loop_local import LoopLocal
from sessions_app.model import client as llm
from sessions_app.model import context_window
from sessions_app.schemas import ChatMessageData
from sessions_app.store import leases, turn_writes
from sessions_app.tools.registry import tools_openai_schemas
from sessions_app.turns.runner import FirstCall, ModelCall, TurnRunner, empty_reply, message_out

logger = logging.getLogger(__name__)

__all__ = ["TurnInProgress", "TurnStart", "message_out", "turn_cancel", "turn_start"]

TITLE_PROMPT = (
    "Write a short title (at most six words) for a conversation that starts with the "
    "user's message below. Reply with the title only, without quotes."
)
# How long a finished operation waits for a running turn before its follow-up turn.
CONTINUE_WAIT_SECONDS = 600.0
INTERRUPTED_TOOL_RESULT = "Error: the server running this turn stopped before the tool finished."


class TurnInProgress(Refused):
    def __init__(self) -> None:
        super().__init__(
            "turn_in_progress", "A reply is still being written in this session; wait or cancel it."
        )


class ServerDraining(Refused):
    def __init__(self) -> None:
        super().__init__(
            "server_shutting_down",
            "This server is restarting; reconnect and send again in a moment.",
            retry_after=1,
        )


@dataclass(frozen=True)
class TurnStart:
    """What ``turn_start`` did: started a turn, or recognised a retried send."""

    message: ChatMessageData
    duplicate: bool
    turn_id: uuid.UUID | None


@dataclass
class _Turn:
    session_id: uuid.UUID
    owner_id: int
    turn_id: uuid.UUID
    notice: str | None = None
    first_call: FirstCall | None = None
    task: asyncio.Task[None] | None = None
    stop_reason: str = "cancelled"


@dataclass(frozen=True)
class _Prepared:
    """A turn's first model call, prepared from the history before the turn starts."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    user_sequence: int  # the user's message's sequence the messages were made for
    event_floor: int  # the session's stored event seq floor when the history was read


# The turns this process runs, by session. Strong references: the loop keeps only weak ones.
_running: dict[uuid.UUID, _Turn] = {}
# Background work that must outlive its caller (titles, the event floor of a new turn).
_background: set[asyncio.Task[Any]] = set()


def control_group(session_id: uuid.UUID) -> str:
    return f"chat-control.{session_id}"


def turn_running(session_id: uuid.UUID) -> bool:
    """Whether this process runs a turn of the session."""
    return session_id in _running


def _take_lease(turn: _Turn, *, take_stale: bool = True) -> bool:
    """Take the session's lease for ``turn``; raises ``LimitExceeded`` (too many turns)."""
    return leases.turn_lease_acquire(
        session_id=turn.session_id,
        turn_id=turn.turn_id,
        owner=process.process_id(),
        owner_id=turn.owner_id,
        take_stale=take_stale,
    )


async def _acquire(turn: _Turn) -> bool:
    """``_take_lease`` from async code."""
    return bool(await db_sync_to_async(_take_lease)(turn))


async def turn_start(
    *, session_id: uuid.UUID, owner_id: int, content: str, client_message_id: str
) -> TurnStart:
    """Store the user's message (once per client message id) and start the turn.

    Raises ``Refused`` (``TurnInProgress``, ``ServerDraining``, ``LimitExceeded``, a message
    too long) and ``SessionNotFound``; ``StoreWriteError`` when the message could not be
    saved. Then nothing started. A retried send of a stored message is acknowledged as a
    duplicate whatever the limits say.
    """
    if process.draining():
        raise ServerDraining()
    if len(content) > settings.CHAT_MESSAGE_MAX_CHARS:
        raise Refused(
            "message_too_long",
            f"The message has {len(content)} characters; the limit is "
            f"{settings.CHAT_MESSAGE_MAX_CHARS}.",
        )
    turn = _Turn(session_id=session_id, owner_id=owner_id, turn_id=uuid.uuid4())
    user_message = ChatMessageData(
        role="user", content=content, client_message_id=client_message_id
    )
    try:
        await limits.check_message_rate(owner_id=owner_id)
        if session_id in _running:
            raise TurnInProgress()
        prepared = await _prepare(session_id, owner_id, user_message)
    except Refused:
        existing = await _existing_message(session_id, owner_id, client_message_id)
        if existing is not None:
            return TurnStart(message=existing, duplicate=True, turn_id=None)
        raise
    # The first model call goes out now, while the turn's lease and messages are written:
    # the model's own time to first token hides the database's. If the turn does not
    # start after all (a turn runs, a retried send, a limit), the call is dropped unread.
    call = ModelCall(prepared.messages, prepared.tools) if prepared is not None else None
    kept: ModelCall | None = None  # the call the turn takes over; any other is closed
    try:
        begun, recovered = await _begin_turn(turn, user_message, with_reply=prepared is not None)
        message = begun.message
        if not begun.created:
            return TurnStart(message=message, duplicate=True, turn_id=None)
        first = await events.event_publish(
            session_id, "message_created", message=message_out(message), turn_id=str(turn.turn_id)
        )
        if first is not None and (prepared is None or prepared.event_floor == 0):
            # A session's first floor; later ones are saved as its turns end.
            _spawn(events.event_floor_save(session_id, first["seq"]), "event floor")
        if begun.followers:
            # Only a call made from the history as stored: if it changed meanwhile (a dead
            # turn's work was finished first, or a message came from elsewhere), the turn
            # reads it again and calls then.
            current = prepared is not None and prepared.user_sequence == message.sequence
            kept = call if current and not recovered else None
            turn.first_call = FirstCall(reply=begun.followers[0], call=kept)
        _launch(turn)
    finally:
        if call is not None and call is not kept:
            call.close()
    return TurnStart(message=message, duplicate=False, turn_id=turn.turn_id)


async def _begin_turn(
    turn: _Turn, message: ChatMessageData, *, with_reply: bool
) -> tuple[store.AppendedOnce, bool]:
    """``_begin`` from async code, finishing a dead turn first if one holds the lease;
    returns what was stored and whether a dead turn was finished first. Raises what
    ``turn_start`` raises; a retried send comes back as not ``created``."""
    client_message_id = message.client_message_id or ""
    reply = empty_reply()
    begin = db_sync_to_async(_begin)
    recovered = False
    try:
        begun = await begin(turn, message, reply if with_reply else None)
        if begun == "stale":
            await _recover_stale_turn(turn.session_id)
            recovered = True
            begun = await begin(turn, message, reply if with_reply else None)
        if not isinstance(begun, store.AppendedOnce):
            raise TurnInProgress()
    except Refused:
        existing = await _existing_message(turn.session_id, turn.owner_id, client_message_id)
        if existing is not None:
            return store.AppendedOnce(existing, [], False), recovered
        raise
    return begun, recovered


async def _prepare(
    session_id: uuid.UUID, owner_id: int, message: ChatMessageData
) -> _Prepared | None:
    """The first model call of a turn about to start, from the history as it is now plus
    ``message``: so the turn calls the model as soon as it has started, without reading
    the history again. ``None`` when the call needs more than that (a summary), or when
    the history does not fit at all (the turn reports it). Raises ``SessionNotFound``."""
    state = await db_sync_to_async(store.session_get)(session_id=session_id, owner_id=owner_id)
    sequence = state.last_sequence + 1
    view = state.model_copy(
        update={"messages": [*state.messages, message.model_copy(update={"sequence": sequence})]}
    )
    tools = tools_openai_schemas()
    messages = await context_window.session_view_unless_summarised(view, tools=tools)
    if messages is None:
        return None
    return _Prepared(
        messages=messages, tools=tools, user_sequence=sequence, event_floor=state.last_event_seq
    )


def _begin(
    turn: _Turn, message: ChatMessageData, reply: ChatMessageData | None
) -> str | store.AppendedOnce:
    """The database work before a turn starts, one transaction: take the lease and store
    the user's message (once per client message id) with ``reply``, the turn's empty first
    reply, after it.

    Returns what was stored (the lease is kept only when the message is new), ``"busy"``
    when a live turn holds the lease, or ``"stale"`` when a dead turn still does (the
    caller recovers it, then tries again). Raises ``LimitExceeded`` (too many turns) and
    the store's errors, holding nothing. On PostgreSQL one round trip (``store_pg``).
    """
    if turn_writes.enabled():
        begun = turn_writes.turn_begin(
            session_id=turn.session_id,
            owner_id=turn.owner_id,
            turn_id=turn.turn_id,
            process=process.process_id(),
            messages=[message] if reply is None else [message, reply],
        )
        if begun.outcome in ("busy", "stale"):
            return begun.outcome
        if begun.outcome == "duplicate":
            existing = store.message_by_client_id(
                session_id=turn.session_id,
                owner_id=turn.owner_id,
                client_message_id=message.client_message_id or "",
            )
            assert existing is not None  # stored messages are never deleted alone
            return store.AppendedOnce(existing, [], False)
        return store.AppendedOnce(begun.messages[0], begun.messages[1:], True)
    with transaction.atomic():
        if not _take_lease(turn, take_stale=False):
            stale = leases.turn_leases_stale(session_id=turn.session_id)
            return "stale" if stale else "busy"
        stored = store.message_append_once(
            session_id=turn.session_id,
            owner_id=turn.owner_id,
            message=message,
            followers=[reply] if reply is not None else [],
        )
        if not stored.created:
            transaction.set_rollback(True)  # a retried send: the lease goes back
    return stored


async def turn_continue(*, session_id: uuid.UUID, owner_id: int, notice: str) -> bool:
    """Let the model continue a session without a user message (a background result came).

    Waits (up to ``CONTINUE_WAIT_SECONDS``) while another turn runs; returns whether the
    follow-up turn ran.
    """
    turn = _Turn(session_id=session_id, owner_id=owner_id, turn_id=uuid.uuid4(), notice=notice)
    # A turn running now may have made its last model call already: wait for it to end,
    # then tell the model (a redundant notice costs a short reply; a lost one, the result).
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CONTINUE_WAIT_SECONDS
    while session_id in _running or not await _acquire_unless_limited(turn):
        if process.draining() or loop.time() > give_up:
            logger.warning("no follow-up turn for session %s: it stayed busy", session_id)
            return False
        await asyncio.sleep(settings.CHAT_HEARTBEAT_SECONDS)
    _launch(turn)
    task = turn.task
    assert task is not None
    await asyncio.wait([task])
    return True


async def _acquire_unless_limited(turn: _Turn) -> bool:
    """``_acquire``, with the user's running-turn limit read as "busy": a follow-up waits."""
    try:
        return await _acquire(turn)
    except LimitExceeded:
        return False


def _launch(turn: _Turn) -> None:
    _running[turn.session_id] = turn
    turn.task = process.detached(_run(turn), f"turn {turn.turn_id} of session {turn.session_id}")


async def _release(turn: _Turn, event_seq: int | None = None) -> None:
    await db_sync_to_async(leases.turn_lease_release)(
        session_id=turn.session_id, turn_id=turn.turn_id, event_seq=event_seq
    )


async def _existing_message(
    session_id: uuid.UUID, owner_id: int, client_message_id: str
) -> ChatMessageData | None:
    message: ChatMessageData | None = await db_sync_to_async(store.message_by_client_id)(
        session_id=session_id, owner_id=owner_id, client_message_id=client_message_id
    )
    return message


def turn_cancel(session_id: uuid.UUID, reason: str = "cancelled") -> bool:
    """Stop the session's turn if this process runs it. Returns whether one was stopped."""
    turn = _running.get(session_id)
    if turn is None or turn.task is None or turn.task.done():
        return False
    turn.stop_reason = reason
    turn.task.cancel()
    return True


async def turn_cancel_anywhere(session_id: uuid.UUID) -> None:
    """Stop the session's turn in whichever process runs it."""
    if turn_cancel(session_id):
        return
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(
            control_group(session_id), {"type": "turn.cancel", "session_id": str(session_id)}
        )


async def turn_wait(session_id: uuid.UUID) -> None:
    """Wait until this process runs no turn of the session (tests, shutdown)."""
    turn = _running.get(session_id)
    if turn is not None and turn.task is not None:
        await asyncio.wait([turn.task])


async def turns_interrupt_all() -> None:
    """Shutdown: stop every turn of this process, keeping their text, and wait for them."""
    tasks = []
    for session_id, turn in list(_running.items()):
        if turn_cancel(session_id, reason="interrupted") and turn.task is not None:
            tasks.append(turn.task)
    if tasks:
        await asyncio.wait(tasks)


# --- running ---------------------------------------------------------------------------------


async def _keep_lease(turn: _Turn) -> None:
    """Renew the lease; stop the turn if it was taken away (this process was presumed dead)."""
    while True:
        await asyncio.sleep(settings.CHAT_HEARTBEAT_SECONDS)
        try:
            renewed = await db_sync_to_async(leases.turn_lease_renew)(
                session_id=turn.session_id, turn_id=turn.turn_id
            )
        except Exception:
            # One failed renewal is not a lost lease: try again at the next beat.
            logger.warning("could not renew the lease of turn %s", turn.turn_id, exc_info=True)
            continue
        if not renewed:
            logger.warning("turn %s lost its lease; stopping it", turn.turn_id)
            turn_cancel(turn.session_id, reason="interrupted")
            return


class _CancelInbox:
    """The loop's one channel-layer channel for ``cancel`` sent from other processes.

    A running turn adds it to its session's control group; one receiver serves every turn
    of the loop (a receiver per turn cost the loop a share of its time per running answer).
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def channel_name(self) -> str:
        async with self.lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
                self.task = process.detached(self.receive_loop(), "cancel inbox")
            return self.channel

    async def receive_loop(self) -> None:
        assert self.channel is not None
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except Exception:
                logger.warning("could not receive cancels; trying again", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") == "turn.cancel":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    turn_cancel(uuid.UUID(message["session_id"]))

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


_cancel_inboxes: LoopLocal[dict[str, _CancelInbox]] = LoopLocal()


def _cancel_inbox() -> _CancelInbox | None:
    """The running loop's inbox on the current channel layer (``None``: no layer)."""
    layer = get_channel_layer()
    if layer is None:
        return None
    inboxes = _cancel_inboxes.get(dict)
    inbox = inboxes.get("inbox")
    if inbox is None or inbox.layer is not layer:  # the layer was replaced (settings, tests)
        if inbox is not None:
            inbox.close()
        inbox = inboxes["inbox"] = _CancelInbox(layer)
    return inbox


async def _hear_cancels(turn: _Turn) -> None:
    """Put the loop's cancel inbox in the session's control group until the turn ends."""
    inbox = _cancel_inbox()
    if inbox is None:
        return
    channel = await inbox.channel_name()
    group = control_group(turn.session_id)
    await inbox.layer.group_add(group, channel)
    try:
        await asyncio.Event().wait()  # until the turn ends and cancels this
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(inbox.layer.group_discard(group, channel))


async def _run(turn: _Turn) -> None:
    runner = TurnRunner(
        turn.session_id, turn.owner_id, turn.turn_id, turn.notice, first_call=turn.first_call
    )
    helpers = [
        asyncio.ensure_future(_keep_lease(turn)),
        asyncio.ensure_future(_hear_cancels(turn)),
    ]
    status = "failed"
    try:
        await runner.publish("turn_started")
        status = await runner.run()
    except asyncio.CancelledError:
        status = turn.stop_reason
        await runner.close_step("interrupted")
    except llm.ModelError as exc:
        await runner.close_step("failed")
        fields: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.retry_after is not None:
            fields["retry_after"] = exc.retry_after
        await runner.publish("error", **fields)
    except SessionNotFound:
        logger.info("session %s was deleted during turn %s", turn.session_id, turn.turn_id)
        status = "session_deleted"
    except Exception:
        logger.exception("turn %s of session %s failed", turn.turn_id, turn.session_id)
        try:
            await runner.close_step("failed")
        finally:
            await runner.publish(
                "error", code="internal_error", message="The server failed to finish the reply."
            )
    finally:
        for helper in helpers:
            helper.cancel()
        # The session is free before turn_finished says so: a client that sends the moment
        # it sees turn_finished must not be told that a turn is in progress.
        try:
            # With the event seq floor: the turn_finished event below passes it by one.
            await _release(turn, runner.last_seq)
        except Exception:
            logger.warning("could not release turn %s; its lease expires", turn.turn_id)
        finally:
            if _running.get(turn.session_id) is turn:
                del _running[turn.session_id]
        await runner.publish("turn_finished", status=status, turn_usage=runner.usage.model_dump())
    if status == "completed":
        _spawn(_make_title(turn.session_id), "title")


def _spawn(coro: Any, name: str) -> None:
    task = process.detached(coro, name)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def background_wait() -> None:
    """Wait for background work such as title generation (tests, shutdown)."""
    while _background:
        await asyncio.wait(list(_background))


async def _make_title(session_id: uuid.UUID) -> None:
    """Give a session whose first exchange just finished a title (unless it has one)."""
    try:
        state = await db_sync_to_async(store.session_get)(session_id=session_id)
        users = [m for m in state.messages if m.role == "user"]
        if state.title or len(users) != 1:
            return
        text, _usage = await llm.complete_text(
            messages=[
                {"role": "system", "content": TITLE_PROMPT},
                {"role": "user", "content": users[0].content or ""},
            ]
        )
        title = " ".join(text.strip().strip("\"'").split())[: settings.CHAT_TITLE_MAX_LENGTH]
        if not title:
            return
        if await db_sync_to_async(store.session_title_set_if_empty)(
            session_id=session_id, title=title
        ):
            await events.event_publish(session_id, "title_updated", title=title)
    except SessionNotFound:
        return
    except Exception:
        logger.warning("could not make a title for session %s", session_id, exc_info=True)


# --- crash recovery --------------------------------------------------------------------------


async def _recover(session_id: uuid.UUID, turn_id: uuid.UUID) -> bool:
    """Finish what a dead turn left: take its lease away first (so a turn that renewed it
    meanwhile is left alone), then keep its text, marked interrupted."""
    if not await db_sync_to_async(leases.turn_lease_break)(session_id=session_id, turn_id=turn_id):
        return False
    changed = await db_sync_to_async(store.messages_interrupt_unfinished)(
        session_id=session_id, tool_content=INTERRUPTED_TOOL_RESULT
    )
    logger.warning("turn %s of session %s was stale: interrupted", turn_id, session_id)
    for message in changed:
        kind = "tool_result" if message.role == "tool" else "message_updated"
        await events.event_publish(
            session_id, kind, message=message_out(message), turn_id=str(turn_id)
        )
    await events.event_publish(
        session_id,
        "turn_finished",
        status="interrupted",
        turn_id=str(turn_id),
        turn_usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    )
    return True


async def turns_sweep() -> None:
    """Recover turns whose process died: their streaming text is kept, marked interrupted."""
    stale = await db_sync_to_async(leases.turn_leases_stale)()
    for session_id, turn_id in stale:
        if session_id in _running:
            continue  # ours and alive (this process was only slow to renew)
        await _recover(session_id, turn_id)


async def _recover_stale_turn(session_id: uuid.UUID) -> None:
    """Before a new turn takes a stale lease, finish the dead turn that held it."""
    stale = await db_sync_to_async(leases.turn_leases_stale)(session_id=session_id)
    for sid, turn_id in stale:
        if sid not in _running:
            await _recover(sid, turn_id)
