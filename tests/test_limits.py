"""sessions_app.limits: every limit is tripped, over the websocket and over HTTP.

Each refusal must carry a stable code, a readable message and (where waiting helps) a
``retry_after``; nothing refused may leave a trace in the database. On the PostgreSQL +
Redis pass the rate counts live in Redis and are shared by every event loop and process.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client
from limits.aio.storage import memory as limits_memory

from sessions_app import limits, store
from sessions_app.errors import LimitExceeded
from sessions_app.models import ChatSession, Operation
from tests.chat_fixtures import FRAME_TIMEOUT, ROUTER, db_messages, open_socket
from tests.wsclient import send_frame

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("chat_runtime"),
]


async def new_session(user: Any) -> uuid.UUID:
    state = await database_sync_to_async(store.session_create)(owner_id=user.pk)
    return state.id


def errors(frames: list[dict[str, Any]]) -> list[str]:
    return [f["code"] for f in frames if f["type"] == "error"]


# --- per socket ---------------------------------------------------------------------------------


async def test_message_size(owner: Any, session_id: uuid.UUID, settings: Any) -> None:
    settings.CHAT_MESSAGE_MAX_CHARS = 10
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame("x" * 11))
    refused = await socket.next()
    assert refused["code"] == "message_too_long" and "limit is 10" in refused["message"]
    await socket.send(send_frame("x" * 10))
    assert (await socket.next())["type"] == "ack"
    await socket.until_type("turn_finished")
    assert [m[2] for m in await db_messages(session_id) if m[1] == "user"] == ["x" * 10]


class StoppedClock:
    """``time.time`` and ``time.monotonic`` standing still until moved on: a rate window
    passes when the test says so, never because the machine was slow."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.steady = time.monotonic()

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.steady

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.steady += seconds


async def test_frames_per_second_per_socket(
    owner: Any, session_id: uuid.UUID, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.CHAT_WS_FRAMES_PER_SECOND = 5
    clock = StoppedClock()
    # The clocks the frame limiter reads (the limits library's memory storage and ours).
    monkeypatch.setattr(limits_memory, "time", clock)
    monkeypatch.setattr(limits, "time", clock)
    socket = await open_socket(owner, session_id)  # its resume frame counts: 4 are left
    judged = 0
    all_judged = asyncio.Event()
    check = limits.FrameRate.check

    async def counted_check(self: limits.FrameRate) -> bool:
        nonlocal judged
        try:
            return await check(self)
        finally:
            judged += 1
            if judged == 12:
                all_judged.set()

    monkeypatch.setattr(limits.FrameRate, "check", counted_check)
    for i in range(12):
        await socket.send({"type": "ping", "id": str(i)})
    frames = [await socket.next() for _ in range(5)]
    assert [f["type"] for f in frames] == ["pong"] * 4 + ["error"]
    refused = frames[-1]
    assert refused["code"] == "frame_rate_limited"
    assert 0 < refused["retry_after"] <= 1
    # Every ping has met the limiter inside the window before it passes.
    await asyncio.wait_for(all_judged.wait(), timeout=FRAME_TIMEOUT)
    clock.advance(refused["retry_after"] + 0.01)  # the window has passed
    await socket.send({"type": "ping", "id": "later"})
    # The rest of that window's excess was dropped without an error frame each: the socket
    # handles frames in order, so a frame sent for any of them would come before this pong.
    assert (await socket.next()) == {"type": "pong", "id": "later", "last_seq": 0}


async def test_sockets_per_user(owner: Any, session_id: uuid.UUID, settings: Any) -> None:
    settings.CHAT_USER_MAX_SOCKETS = 2
    first = await open_socket(owner, session_id)
    await open_socket(owner, session_id)
    third = WebsocketCommunicator(ROUTER, f"/ws/sessions/{session_id}/")
    third.scope["user"] = owner
    assert (await third.connect(timeout=FRAME_TIMEOUT))[0]
    refused = json.loads(await third.receive_from(timeout=FRAME_TIMEOUT))
    assert refused["code"] == "too_many_sockets" and refused["retry_after"] > 0
    assert (await third.receive_output(timeout=FRAME_TIMEOUT))["code"] == 4429
    await first.close()
    again = await open_socket(owner, session_id)  # a closed socket stops counting at once
    await again.send({"type": "ping"})
    assert (await again.next())["type"] == "pong"


async def test_a_socket_that_stops_renewing_stops_counting(owner: Any, settings: Any) -> None:
    settings.CHAT_USER_MAX_SOCKETS = 1
    await limits.socket_open(owner_id=owner.pk, socket_id="crashed-process-socket")
    with pytest.raises(LimitExceeded):
        await limits.socket_open(owner_id=owner.pk, socket_id="new")
    await _expire_sockets(owner.pk)
    await limits.socket_open(owner_id=owner.pk, socket_id="new")
    await limits.socket_close(owner_id=owner.pk, socket_id="new")


async def _expire_sockets(owner_id: int) -> None:
    """What the passing of SOCKET_TTL_SECONDS does to entries nobody renews."""
    if not django_settings.REDIS_URL:
        limits._sockets[owner_id] = dict.fromkeys(limits._sockets[owner_id], 0.0)
        return
    from sessions_app.infra.redis_clients import redis_client

    key = limits._sockets_key(owner_id)
    client = redis_client(django_settings.REDIS_URL)
    for member in await client.zrange(key, 0, -1):
        await client.zadd(key, {member: 0})


# --- per user -----------------------------------------------------------------------------------


async def test_messages_per_minute_per_user(owner: Any, settings: Any) -> None:
    settings.CHAT_USER_MESSAGES_PER_MINUTE = 2
    sessions = [await new_session(owner) for _ in range(3)]
    for sid in sessions[:2]:
        socket = await open_socket(owner, sid)
        await socket.send(send_frame("hello", "m-" + str(sid)[:8]))
        await socket.until_type("turn_finished")
    socket = await open_socket(owner, sessions[2])
    await socket.send(send_frame("one too many", "m-3"))
    refused = await socket.next()
    assert refused["code"] == "message_rate_limited"
    assert 0 < refused["retry_after"] <= 60
    assert await db_messages(sessions[2]) == []
    # A retried send of a stored message is still acknowledged as the duplicate it is.
    retry = await open_socket(owner, sessions[0])
    await retry.send(send_frame("hello", "m-" + str(sessions[0])[:8]))
    ack = await retry.next()
    assert ack["type"] == "ack" and ack["duplicate"] is True


async def test_message_rate_is_shared_across_event_loops_with_redis(
    owner: Any, settings: Any
) -> None:
    """Another process counts in the same window: here, another event loop and client."""
    settings.CHAT_USER_MESSAGES_PER_MINUTE = 1
    await limits.check_message_rate(owner_id=owner.pk)

    def elsewhere() -> str:
        try:
            asyncio.run(limits.check_message_rate(owner_id=owner.pk))
        except LimitExceeded as exc:
            return exc.code
        return "allowed"

    outcome = await asyncio.to_thread(elsewhere)
    assert outcome == ("message_rate_limited" if django_settings.REDIS_URL else "allowed")


async def test_running_turns_per_user(owner: Any, settings: Any) -> None:
    settings.CHAT_USER_MAX_RUNNING_TURNS = 1
    busy, other = await new_session(owner), await new_session(owner)
    first = await open_socket(owner, busy)
    await first.send(send_frame("/words 400", "long"))
    await first.until(lambda f: f["type"] == "text_delta")
    second = await open_socket(owner, other)
    await second.send(send_frame("hello", "blocked"))
    refused = await second.next()
    assert refused["code"] == "too_many_turns" and "limit is 1" in refused["message"]
    assert await db_messages(other) == []
    # Over HTTP the same refusal is a 429.
    client = await database_sync_to_async(_client_for)(owner)
    response = await database_sync_to_async(client.post)(
        f"/api/sessions/{other}/messages/",
        {"content": "hello", "client_message_id": "http-1"},
        content_type="application/json",
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_turns"
    await first.until_type("turn_finished")
    await second.send(send_frame("hello", "after"))
    assert (await second.next())["type"] == "ack"
    await second.until_type("turn_finished")


def _client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def test_operations_per_session_and_per_user(owner: Any, settings: Any) -> None:
    settings.CHAT_SESSION_MAX_OPERATIONS = 1
    settings.CHAT_USER_MAX_OPERATIONS = 2
    sessions = [await new_session(owner) for _ in range(3)]
    socket = await open_socket(owner, sessions[0])
    await socket.send(send_frame('/tool timer {"seconds": 60, "label": "a"}'))
    await socket.until_type("turn_finished")
    # A second one in the same session: the model reads why, the user gets an error event.
    await socket.send(send_frame('/tool timer {"seconds": 60, "label": "b"}'))
    frames = await socket.until_type("turn_finished")
    assert errors(frames) == ["too_many_operations"]
    [result] = [f for f in frames if f["type"] == "tool_result"]
    assert result["message"]["status"] == "failed"
    assert "limit is 1" in result["message"]["content"]
    assert not any(f["type"] == "operation_started" for f in frames)
    # Per user: one more in another session fits, the next does not.
    for sid, expected in ((sessions[1], []), (sessions[2], ["too_many_operations"])):
        other = await open_socket(owner, sid)
        await other.send(send_frame('/tool timer {"seconds": 60, "label": "c"}'))
        frames = await other.until_type("turn_finished")
        assert errors(frames) == expected
    count = await database_sync_to_async(Operation.objects.count)()
    assert count == 2


async def test_sessions_per_user(owner: Any, stranger: Any, settings: Any) -> None:
    settings.CHAT_USER_MAX_SESSIONS = 2
    client = await database_sync_to_async(_client_for)(owner)

    def create() -> Any:
        return client.post("/api/sessions/", {}, content_type="application/json")

    assert [(await database_sync_to_async(create)()).status_code for _ in range(2)] == [201, 201]
    refused = await database_sync_to_async(create)()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_sessions"
    assert "Retry-After" not in refused  # waiting does not help; deleting does
    # The page's "new chat" button says the same, and the stranger is not affected.
    page = await database_sync_to_async(client.post)("/sessions/new/", follow=True)
    assert "delete some" in page.content.decode()
    owned = ChatSession.objects.filter(owner_id=owner.pk).count
    assert await database_sync_to_async(owned)() == 2
    await database_sync_to_async(store.session_create)(owner_id=stranger.pk, limited=True)


# --- per turn -----------------------------------------------------------------------------------


async def test_tool_steps_per_turn(owner: Any, session_id: uuid.UUID, settings: Any) -> None:
    settings.CHAT_TURN_MAX_STEPS = 2
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame('/loop calculator {"expression": "1+1"}'))
    frames = await socket.until_type("turn_finished")
    assert errors(frames) == ["step_limit"]
    assert frames[-1]["status"] == "step_limit"


async def test_tokens_per_turn(owner: Any, session_id: uuid.UUID, settings: Any) -> None:
    settings.CHAT_TURN_MAX_TOKENS = 100
    socket = await open_socket(owner, session_id)
    await socket.send(send_frame('/loop calculator {"expression": "2*2"}'))
    frames = await socket.until_type("turn_finished")
    assert errors(frames) == ["token_limit"]
    assert frames[-1]["status"] == "token_limit"
    spent = [f["turn_usage"]["total_tokens"] for f in frames if f["type"] == "usage"]
    assert spent[-1] >= 100 > spent[-2]  # stopped at the first step that went over
    # Stopped between steps: every tool call made was answered before the stop.
    stored = await db_messages(session_id)
    assert [role for _, role, _, _ in stored] == ["user"] + ["assistant", "tool"] * len(spent)
    assert all(status == "complete" for _, _, _, status in stored)


# --- the limiter itself -----------------------------------------------------------------------


async def test_many_sends_at_once_are_all_counted_on_the_loops_redis_pool(
    owner: Any, settings: Any, monkeypatch: Any, caplog: Any
) -> None:
    """The message rate counts in Redis through the loop's pool, which makes callers wait
    for a connection: more sends at once than it has connections are all counted, none let
    through for want of one."""
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL=redis://… (runs in the second pass)")
    from sessions_app.infra import redis_clients

    monkeypatch.setattr(redis_clients, "POOL_MAX_CONNECTIONS", 2)
    monkeypatch.setattr(redis_clients, "_clients", redis_clients.LoopLocal())
    monkeypatch.setattr(limits, "_limiters", limits.LoopLocal())
    settings.CHAT_USER_MESSAGES_PER_MINUTE = 10
    pool = redis_clients.redis_client(django_settings.REDIS_URL).connection_pool
    storage: Any = limits._limiter(shared=True).storage
    assert storage.bridge.storage.connection_pool is pool

    async def send() -> str:
        try:
            await limits.check_message_rate(owner_id=owner.pk)
        except LimitExceeded as exc:
            return exc.code
        return "allowed"

    outcomes = await asyncio.gather(*(send() for _ in range(30)))
    assert outcomes.count("allowed") == 10
    assert outcomes.count("message_rate_limited") == 20
    assert "rate limiter unavailable" not in caplog.text


async def test_a_broken_rate_store_lets_requests_through(
    owner: Any, settings: Any, monkeypatch: Any, caplog: Any
) -> None:
    settings.CHAT_USER_MESSAGES_PER_MINUTE = 1

    class Broken:
        async def hit(self, *args: Any) -> bool:
            raise ConnectionError("redis is down")

    monkeypatch.setattr(limits, "_limiter", lambda shared: Broken())
    for _ in range(3):
        await limits.check_message_rate(owner_id=owner.pk)
    assert "rate limiter unavailable" in caplog.text
