"""``cancel`` from any process: the session's control group, and one inbox per loop.

A running turn adds its loop's cancel inbox to its session's control group, so a ``cancel``
received by any process reaches the process that runs the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from channels.layers import get_channel_layer

from sessions_app import process
from sessions_app.infra.loop_local import LoopLocal
from sessions_app.turns.registry import Turn, turn_cancel

logger = logging.getLogger(__name__)


def control_group(session_id: uuid.UUID) -> str:
    return f"chat-control.{session_id}"


async def turn_cancel_anywhere(session_id: uuid.UUID) -> None:
    """Stop the session's turn in whichever process runs it."""
    if turn_cancel(session_id):
        return
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(
            control_group(session_id), {"type": "turn.cancel", "session_id": str(session_id)}
        )


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
                self.task = process.spawn_service(self.receive_loop(), "cancel inbox")
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


async def hear_cancels(turn: Turn) -> None:
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
