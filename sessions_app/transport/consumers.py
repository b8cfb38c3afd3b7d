"""The websocket consumer at ``/ws/sessions/<id>/``: translation between frames and services.

Each socket joins its session's group and forwards the session's events in ``seq`` order,
without gaps: when the channel layer delivers an event out of order (or not at all), the
missing ones are read from the replay log; when the log cannot help, a snapshot is sent.
A socket delivers nothing until the client has sent ``resume`` (its cursor, or null for a
snapshot); any other first frame implies ``resume`` with null.

Close codes: 4401 not logged in, 4404 no such session (another user's looks the same),
4429 too many sockets of the user (after an ``error`` frame saying so), 4503 the server
cannot serve the socket now (Redis unreachable): reconnect with backoff. Bad frames, and
frames over the per-socket rate, get an ``error`` frame and the socket carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from asgiref.typing import WebSocketConnectEvent
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from pydantic import BaseModel

from sessions_app import events, limits, process, store, turns
from sessions_app.errors import LimitExceeded, Refused, SessionNotFound, StoreWriteError
from sessions_app.events.frames import AckFrame, ErrorFrame, HelloFrame, PongFrame, SocketFrame
from sessions_app.infra.db import db_sync_to_async
from sessions_app.model.client import model_info
from sessions_app.transport.client_frames import (
    CancelFrame,
    PingFrame,
    ResumeFrame,
    SendFrame,
    frame_parse,
)
from sessions_app.transport.feed import feed_since

logger = logging.getLogger(__name__)

# What a server raises for a frame sent on a closed socket: the ASGI spec asks for an
# OSError; daphne raises autobahn's Disconnected (a RuntimeError).
_SOCKET_CLOSED: tuple[type[Exception], ...] = (OSError,)
try:
    from autobahn.exception import Disconnected
except ImportError:  # another ASGI server
    pass
else:
    _SOCKET_CLOSED = (OSError, Disconnected)

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_LIMITED = 4429
# 1011 would say it, but autobahn lets an application close only with 1000 or 3000-4999.
CLOSE_UNAVAILABLE = 4503


class ChatConsumer(AsyncWebsocketConsumer):
    session_id: uuid.UUID
    owner_id: int
    # The last seq sent to this socket; None until the client resumed.
    delivered: int | None
    accepted = False
    connect_received = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The socket's life; a failure of the channel layer (Redis unreachable), at the
        handshake or later, closes it with 4503 (the documented "try again with backoff")
        instead of an HTTP 500 at the handshake or a dropped connection."""
        try:
            await super().__call__(scope, receive, send)
        except Exception:
            logger.warning("socket failed; closing it with 4503", exc_info=True)
            try:
                if not self.accepted:
                    # The handshake first (its websocket.connect read, then accepted): a
                    # close before the accept would be an HTTP 403.
                    if not self.connect_received:
                        await asyncio.wait_for(receive(), 5)
                    await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": CLOSE_UNAVAILABLE})
            except Exception:
                logger.warning("could not close the failed socket", exc_info=True)

    async def websocket_connect(self, message: WebSocketConnectEvent) -> None:
        self.connect_received = True
        await super().websocket_connect(message)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the message's handler, without channels' hop to close stale connections.

        ``AsyncConsumer.dispatch`` first runs ``close_old_connections`` in the one thread
        all database work of the process shares, for every message, so every event relayed
        to every socket would wait there behind every other socket's. The handlers here
        reach the database only through ``db_sync_to_async``, which closes stale
        connections itself.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        process.ensure_started()  # also when mounted without chatproject.asgi (tests)
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        self.owner_id = user.pk
        self.delivered = None
        try:
            self.session_id = uuid.UUID(self.scope["url_route"]["kwargs"]["session_id"])
            await db_sync_to_async(store.session_check_owner)(
                session_id=self.session_id, owner_id=self.owner_id
            )
        except (ValueError, SessionNotFound):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        try:
            await limits.socket_open(owner_id=self.owner_id, socket_id=self.channel_name)
        except LimitExceeded as exc:
            await self.send_error(exc.code, exc.message, retry_after=exc.retry_after)
            await self.close(code=CLOSE_LIMITED)
            return
        self.counted = asyncio.ensure_future(self.stay_counted())
        self.frame_rate = limits.FrameRate()
        await self.channel_layer.group_add(events.group_name(self.session_id), self.channel_name)
        self.groups.append(events.group_name(self.session_id))  # left again on disconnect
        info = model_info()
        await self.send_shape(
            HelloFrame(
                session_id=str(self.session_id),
                model=info.name,
                offline_demo=info.offline_demo,
                max_frame_bytes=settings.CHAT_WS_MAX_FRAME_BYTES,
                max_message_chars=settings.CHAT_MESSAGE_MAX_CHARS,
            )
        )

    async def disconnect(self, code: int) -> None:
        counted = getattr(self, "counted", None)
        if counted is not None:
            counted.cancel()
            await limits.socket_close(owner_id=self.owner_id, socket_id=self.channel_name)

    async def stay_counted(self) -> None:
        """Renew this socket's entry among the user's open sockets while it is open."""
        while True:
            await asyncio.sleep(limits.SOCKET_TTL_SECONDS / 3)
            await limits.socket_renew(owner_id=self.owner_id, socket_id=self.channel_name)

    # --- client frames ------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not hasattr(self, "frame_rate"):
            return  # refused at connect; frames racing the close are ignored
        try:
            if not await self.frame_rate.check():
                return  # over the rate, and already told so in this window
            frame = frame_parse(text_data, max_bytes=settings.CHAT_WS_MAX_FRAME_BYTES)
            if self.delivered is None and not isinstance(frame, ResumeFrame):
                await self.resume(None)
            await self.dispatch_frame(frame)
        except Refused as exc:
            await self.send_error(
                exc.code, exc.message, retry_after=exc.retry_after, details=exc.details
            )
        except SessionNotFound:
            await self.close(code=CLOSE_NOT_FOUND)
        except StoreWriteError as exc:
            await self.send_error(exc.code, str(exc), retry_after=1)

    async def dispatch_frame(self, frame: BaseModel) -> None:
        if isinstance(frame, SendFrame):
            await self.on_send(frame)
        elif isinstance(frame, CancelFrame):
            await self.on_cancel()
        elif isinstance(frame, ResumeFrame):
            await self.resume(frame.last_seq)
        elif isinstance(frame, PingFrame):
            # Join the group again: a Redis restarted since the connect forgot the membership.
            await self.channel_layer.group_add(
                events.group_name(self.session_id), self.channel_name
            )
            head = await events.event_head(self.session_id)
            await self.send_shape(PongFrame(id=frame.id, last_seq=head))

    async def on_send(self, frame: SendFrame) -> None:
        started = await turns.turn_start(
            session_id=self.session_id,
            owner_id=self.owner_id,
            content=frame.content,
            client_message_id=frame.client_message_id,
        )
        await self.send_shape(
            AckFrame(
                of="send",
                client_message_id=frame.client_message_id,
                message_sequence=started.message.sequence,
                duplicate=started.duplicate,
            )
        )

    async def on_cancel(self) -> None:
        await turns.turn_cancel_anywhere(self.session_id)
        await self.send_shape(AckFrame(of="cancel"))

    # --- delivery -----------------------------------------------------------------------------

    async def resume(self, last_seq: int | None) -> None:
        """Send what the client missed after ``last_seq`` (or a snapshot), then go live."""
        self.delivered = last_seq
        await self.catch_up()

    async def catch_up(self) -> None:
        """Send every event after ``delivered``, or a snapshot when the log cannot."""
        feed = await feed_since(self.session_id, self.owner_id, self.delivered)
        if feed.snapshot is not None:
            self.delivered = feed.snapshot.seq
            await self.send_text(feed.snapshot.encode())
        else:
            await self.send_events(feed.events or [])

    async def send_events(self, batch: list[events.Event]) -> None:
        for event in batch:
            if self.delivered is not None and event["seq"] > self.delivered:
                await self.send_text(json.dumps(event, separators=(",", ":")))
                self.delivered = event["seq"]

    async def session_event(self, message: dict[str, Any]) -> None:
        """A live event of the session, from the channel layer (its frame already made)."""
        seq = message["seq"]
        if self.delivered is None or seq <= self.delivered:
            return
        if seq == self.delivered + 1:
            await self.send_text(message["frame"])
            self.delivered = seq
            return
        # A gap: the layer reordered or lost events. The log has every seq up to this one.
        await self.catch_up()

    # --- helpers ------------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send a frame; a socket the client has just closed gets nothing, without an error.

        A frame can be on its way when the client goes (a ``pong`` for the ``ping`` it sent
        just before closing): the server then refuses it (``_SOCKET_CLOSED``), and the
        disconnect that follows cleans up.
        """
        try:
            await self.send(text_data=text)
        except _SOCKET_CLOSED as exc:
            logger.debug("frame for a closed socket dropped: %s", exc)

    async def send_shape(self, frame: SocketFrame) -> None:
        await self.send_text(frame.encode())

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        await self.send_shape(ErrorFrame(code=code, message=message, **extra))
