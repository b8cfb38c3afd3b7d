"""Consumer-level test helpers: WebsocketCommunicator sockets and the fixtures they need."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connections

from chatproject.routing import websocket_urlpatterns
from sessions_app import process, store, turns
from sessions_app.model import client as llm
from sessions_app.models import ChatMessage
from tests.conftest import OWNER_PASSWORD
from tests.servers import session_cookie
from tests.wsclient import FrameReader

FRAME_TIMEOUT = 30
ROUTER = URLRouter(websocket_urlpatterns)


@pytest.fixture
def chat_runtime_settings(settings: Any, local_model_url: str) -> None:
    settings.CHAT_MODEL_BASE_URL = local_model_url
    settings.CHAT_MODEL_MAX_RETRIES = 0
    settings.CHAT_MODEL_TIMEOUT = 5
    settings.CHAT_CHECKPOINT_SECONDS = 0.05


@pytest.fixture
def cookie(owner: Any) -> str:
    """The ``Cookie`` header of the logged-in owner, for real websocket clients."""
    return session_cookie(owner.get_username(), OWNER_PASSWORD)


@pytest.fixture
async def chat_runtime(chat_runtime_settings: None) -> AsyncIterator[None]:
    """The local model, fast checkpoints, and no turn or background task left behind."""
    yield
    await turns.turns_interrupt_all()
    await process.background_wait()
    await process.stop()
    # The model client's connections belong to this loop too (aiohttp logs an ERROR for a
    # session left open).
    await llm.clients_close()
    # Close the layer's connections and receiver in this loop (conftest's
    # _fresh_channel_layer then drops the layer).
    layer = get_channel_layer()
    if layer is not None:
        await layer.flush()
    # The executor thread of database_sync_to_async keeps its connection otherwise, and the
    # test database could not be dropped at the end of the run.
    await database_sync_to_async(connections.close_all)()


class Socket(FrameReader):
    """A communicator plus the client's view of the session."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        super().__init__()
        self.communicator = communicator

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive_text(self) -> str:
        return str(await self.communicator.receive_from(timeout=FRAME_TIMEOUT))

    async def close(self) -> None:
        await self.communicator.disconnect()


async def open_socket(user: Any, session_id: Any, *, resume: bool = True) -> Socket:
    communicator = WebsocketCommunicator(ROUTER, f"/ws/sessions/{session_id}/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected
    socket = Socket(communicator)
    hello = await socket.next()
    assert hello["type"] == "hello" and hello["session_id"] == str(session_id)
    if resume:
        await socket.send({"type": "resume", "last_seq": None})
        assert (await socket.next())["type"] == "snapshot"
    return socket


@pytest.fixture
async def session_id(owner: Any) -> uuid.UUID:
    state = await database_sync_to_async(store.session_create)(owner_id=owner.pk)
    return state.id


async def db_messages(session_id: uuid.UUID) -> list[tuple[int, str, str | None, str]]:
    def read() -> list[tuple[int, str, str | None, str]]:
        rows = ChatMessage.objects.filter(session_id=session_id).order_by("sequence")
        return [(m.sequence, m.role, m.content, m.status) for m in rows]

    return await database_sync_to_async(read)()
