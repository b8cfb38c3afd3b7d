"""End to end: a real daphne process (with the local model mounted in it) and real websockets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sessions_app import store
from sessions_app.models import ChatMessage
from tests.conftest import OWNER_PASSWORD, STRANGER_PASSWORD
from tests.servers import FRAME_TIMEOUT, WsClient, daphne, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    with daphne() as address:
        yield address


@pytest.fixture
def cookie(owner: Any) -> str:
    return session_cookie(owner.get_username(), OWNER_PASSWORD)


@pytest.fixture
def session_id(owner: Any) -> uuid.UUID:
    return store.session_create(owner_id=owner.pk).id


def send_frame(content: str) -> dict[str, Any]:
    return {"type": "send", "content": content, "client_message_id": uuid.uuid4().hex}


async def db_messages(session_id: uuid.UUID) -> list[tuple[int, str, str | None, str]]:
    def read() -> list[tuple[int, str, str | None, str]]:
        rows = ChatMessage.objects.filter(session_id=session_id).order_by("sequence")
        return [(m.sequence, m.role, m.content, m.status) for m in rows]

    return await database_sync_to_async(read)()


async def test_streamed_reply_with_tools(server: str, cookie: str, session_id: uuid.UUID) -> None:
    ws = await WsClient.open(server, session_id, cookie)
    content = '/tool calculator {"expression": "2**10"}\n/tool current_time {}'
    await ws.send(send_frame(content))
    frames = await ws.until_type("turn_finished")
    assert frames[-1]["status"] == "completed"
    assert sum(f["type"] == "text_delta" for f in frames) > 3
    results = sorted(f["message"]["content"] for f in frames if f["type"] == "tool_result")
    assert results[0] == "2**10 = 1024"
    assert ws.view.gaps == []
    stored = await db_messages(session_id)
    assert [r for _, r, _, _ in stored] == ["user", "assistant", "tool", "tool", "assistant"]
    assert "1024" in (stored[-1][2] or "")
    assert ws.view.contents() == stored
    await ws.close()


async def test_cancel_mid_stream(server: str, cookie: str, session_id: uuid.UUID) -> None:
    ws = await WsClient.open(server, session_id, cookie)
    await ws.send(send_frame("/words 5000"))
    for _ in range(10):
        await ws.until_type("text_delta")
    await ws.send({"type": "cancel"})
    frames = await ws.until_type("turn_finished")
    assert frames[-1]["status"] == "cancelled"
    stored = await db_messages(session_id)
    assert stored[1][1] == "assistant" and stored[1][3] == "interrupted"
    assert 10 <= len((stored[1][2] or "").split()) < 5000
    assert ws.view.contents() == stored


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("/error rate_limit", "model_rate_limited"),
        ("/error drop 5", "model_stream_dropped"),
        ("/error stream 5", "model_stream_error"),
        ("/error timeout", "model_timeout"),
    ],
)
async def test_model_errors(
    server: str, cookie: str, session_id: uuid.UUID, command: str, code: str
) -> None:
    ws = await WsClient.open(server, session_id, cookie)
    await ws.send(send_frame(command))
    frames = await ws.until_type("turn_finished")
    assert [f["code"] for f in frames if f["type"] == "error"] == [code]
    stored = await db_messages(session_id)
    assert stored[1][3] == "failed"
    if command.startswith(("/error drop", "/error stream")):
        assert len((stored[1][2] or "").split()) == 5  # the words before the break are kept
    assert ws.view.contents() == stored


async def test_bad_frames_leave_other_sockets_alone(
    server: str, cookie: str, session_id: uuid.UUID
) -> None:
    bad = await WsClient.open(server, session_id, cookie)
    good = await WsClient.open(server, session_id, cookie)
    for raw, code in [
        ("{oops", "bad_json"),
        ('{"type": "explode"}', "unknown_type"),
        ('{"type": "send"}', "invalid_frame"),
        ('{"type": "send", "content": "' + "x" * 300_000 + '", "client_message_id": "a"}',
         "frame_too_large"),
    ]:  # fmt: skip
        await bad.send(raw)
        error = await bad.next()
        assert (error["type"], error["code"]) == ("error", code)
    await good.send(send_frame("/words 20"))
    await good.until_type("turn_finished")
    await bad.until_type("turn_finished")
    assert bad.view.events == good.view.events
    assert len(await db_messages(session_id)) == 2


async def test_who_may_connect(server: str, stranger: Any, session_id: uuid.UUID) -> None:
    async def close_code(cookie: str, sid: Any, origin: str | None = None) -> int:
        headers = {"Cookie": cookie, "Origin": origin or f"http://{server}"}
        async with connect(f"ws://{server}/ws/sessions/{sid}/", additional_headers=headers) as conn:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), FRAME_TIMEOUT)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code

    stranger_cookie = await database_sync_to_async(session_cookie)(
        stranger.get_username(), STRANGER_PASSWORD
    )
    assert await close_code("", session_id) == 4401
    assert await close_code("sessionid=forged", session_id) == 4401
    assert await close_code(stranger_cookie, session_id) == 4404
    assert await close_code(stranger_cookie, uuid.uuid4()) == 4404
    with pytest.raises(InvalidStatus) as refused:
        await close_code(stranger_cookie, session_id, origin="http://evil.example")
    assert refused.value.response.status_code == 403


async def test_two_sockets_see_the_same_events(
    server: str, cookie: str, session_id: uuid.UUID
) -> None:
    first = await WsClient.open(server, session_id, cookie)
    second = await WsClient.open(server, session_id, cookie)
    await second.send(send_frame('/tool calculator {"expression": "3*3"}'))
    await asyncio.gather(first.until_type("title_updated"), second.until_type("title_updated"))
    assert first.view.events == second.view.events
    assert first.view.contents() == await db_messages(session_id)


async def test_closed_socket_does_not_stop_the_turn(
    server: str, cookie: str, session_id: uuid.UUID
) -> None:
    watcher = await WsClient.open(server, session_id, cookie)
    sender = await WsClient.open(server, session_id, cookie)
    await sender.send(send_frame("/words 300"))
    await sender.until_type("text_delta")
    await sender.close()
    frames = await watcher.until_type("turn_finished")
    assert frames[-1]["status"] == "completed"
    stored = await db_messages(session_id)
    assert stored[1][3] == "complete" and len((stored[1][2] or "").split()) == 300
    # The sender comes back with its cursor and catches up exactly.
    back = await WsClient.open(server, session_id, cookie, resume=False)
    back.view = sender.view
    await back.send({"type": "resume", "last_seq": sender.view.last_seq})
    await back.until_type("turn_finished")
    assert back.view.gaps == [] and back.view.contents() == stored


async def test_events_over_http(server: str, cookie: str, session_id: uuid.UUID) -> None:
    """Clients without websockets: send over HTTP, then read events after a cursor."""
    import httpx2

    token = "t" * 32
    headers = {"Cookie": f"{cookie}; csrftoken={token}", "X-CSRFToken": token}
    base = f"http://{server}/api/sessions/{session_id}"
    async with httpx2.AsyncClient(headers=headers, timeout=FRAME_TIMEOUT) as http:
        first = (await http.get(f"{base}/events/")).json()
        cursor = first["snapshot"]["seq"]
        body = {"content": "/words 30", "client_message_id": "http-1"}
        sent = await http.post(f"{base}/messages/", json=body)
        assert sent.status_code == 202 and sent.json()["message_sequence"] == 1
        again = await http.post(f"{base}/messages/", json=body)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        other = await http.post(f"{base}/messages/", json={**body, "client_message_id": "x"})
        assert other.status_code in (202, 409)  # 409 while the first reply is written
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "turn_finished" for e in seen):
            page = (await http.get(f"{base}/events/", params={"after": cursor})).json()
            for event in page["events"]:
                assert event["seq"] == cursor + 1
                cursor = event["seq"]
                seen.append(event)
        bad = await http.post(f"{base}/messages/", json={"content": ""})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
        gone = await http.get(f"http://{server}/api/sessions/{uuid.uuid4()}/events/")
        assert gone.status_code == 404
    stored = await db_messages(session_id)
    assert stored[1][1:] == ("assistant", stored[1][2], "complete")


async def test_a_refused_api_key_and_an_unknown_model(owner: Any, cookie: str) -> None:
    for env, code in [
        ({"LOCAL_MODEL_API_KEY": "right-key", "OPENAI_API_KEY": "wrong-key"}, "model_auth_failed"),
        ({"CHAT_MODEL": "no-such-model"}, "model_not_found"),
    ]:
        sid = await database_sync_to_async(store.session_create)(owner_id=owner.pk)
        with daphne("daphne-misconfigured", **env) as address:
            ws = await WsClient.open(address, sid.id, cookie)
            await ws.send(send_frame("hello"))
            frames = await ws.until_type("turn_finished")
            errors = [f for f in frames if f["type"] == "error"]
            assert [e["code"] for e in errors] == [code]
            assert "wrong-key" not in errors[0]["message"]  # never a secret in a frame
            await ws.close()


async def test_the_demo_model_answers_on_whatever_port_the_server_serves(
    owner: Any, cookie: str
) -> None:
    """No LOCAL_MODEL_URL: the server calls the local model mounted in itself at the address
    it serves on (a free port here, never the default 8000)."""
    with daphne("daphne-any-port", LOCAL_MODEL_URL="") as address:
        assert not address.endswith(":8000")
        sid = await database_sync_to_async(store.session_create)(owner_id=owner.pk)
        ws = await WsClient.open(address, sid.id, cookie)
        await ws.send(send_frame("hello there"))
        frames = await ws.until_type("turn_finished")
        assert frames[-1]["status"] == "completed"
        assert "hello there" in (await db_messages(sid.id))[1][2]
        await ws.close()
