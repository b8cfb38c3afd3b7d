"""Real servers for end-to-end tests: daphne on the test database, and a websocket client.

The daphne process reads the database pytest-django created (``database_url``) and, on the
second pass, the same Redis; it answers with the local scripted model mounted in itself,
exactly like the one-command embedded setup.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.processes import ManagedProcess, free_port
from tests.wsclient import ClientView, FrameReader

FRAME_TIMEOUT = 30.0


def database_url() -> str:
    """A URL naming the database this test run uses (pytest-django's test database)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL or "",
        "CHAT_LOG_LEVEL": "INFO",
        "CHAT_MODEL_MAX_RETRIES": "0",
        "CHAT_MODEL_TIMEOUT": "3",
        "CHAT_CHECKPOINT_MS": "50",
        # A delta per piece: tests count them (test_consumers covers the interval).
        "CHAT_TEXT_DELTA_MS": "0",
        "LOCAL_MODEL_WORD_DELAY_MS": "5",
        "LOCAL_MODEL_API_KEY": "",
        "OPENAI_BASE_URL": "",
    }
    env.update(extra)
    return env


@contextmanager
def daphne(name: str = "daphne", **env: str) -> Iterator[str]:
    """A daphne process serving the whole app; yields its ``host:port``."""
    with daphne_process(name, **env) as (address, _process):
        yield address


@contextmanager
def daphne_process(name: str = "daphne", **env: str) -> Iterator[tuple[str, ManagedProcess]]:
    """Like ``daphne``, and the process itself (to kill it)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "chatproject.asgi:application",
    ]
    env.setdefault("LOCAL_MODEL_URL", f"http://{address}/local-model/v1")
    with ManagedProcess(command, name=name, env=server_env(**env), ready_port=port) as process:
        yield address, process


def worker_process(name: str = "worker", **env: str) -> ManagedProcess:
    """A ``manage.py db_worker`` (not started: use it as a context manager)."""
    command = [
        sys.executable,
        "manage.py",
        "db_worker",
        "--interval=0.1",
        "--no-reload",
        "--no-startup-delay",
        f"--worker-id={name}",
    ]
    return ManagedProcess(command, name=name, env=server_env(**env), ready_line="Starting worker")


def redis_process(port: int, name: str = "redis") -> ManagedProcess:
    """A private redis-server (no persistence), so a test may restart it."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no"]  # fmt: skip
    return ManagedProcess(command, name=name, ready_port=port)


def http_get(address: str, path: str, cookie: str) -> tuple[int, bytes]:
    """``GET path`` from the server at ``address`` as the cookie's user: status and body."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=FRAME_TIMEOUT)
    try:
        connection.request("GET", path, headers={"Cookie": cookie})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def session_cookie(username: str, password: str) -> str:
    """A ``Cookie`` header of a logged-in user (the session lives in the shared database)."""
    client = Client()
    assert client.login(username=username, password=password)
    return f"sessionid={client.cookies['sessionid'].value}"


class WsClient(FrameReader):
    """A real websocket client plus the client's view of the session."""

    def __init__(self, connection: ClientConnection) -> None:
        super().__init__()
        self.connection = connection

    @classmethod
    async def open(
        cls, address: str, session_id: Any, cookie: str, *, resume: bool = True
    ) -> WsClient:
        conn = await connect(
            f"ws://{address}/ws/sessions/{session_id}/",
            additional_headers={"Cookie": cookie, "Origin": f"http://{address}"},
            open_timeout=FRAME_TIMEOUT,
        )
        client = cls(conn)
        assert (await client.next())["type"] == "hello"
        if resume:
            await client.send({"type": "resume", "last_seq": None})
            assert (await client.next())["type"] == "snapshot"
        return client

    async def send_text(self, text: str) -> None:
        await self.connection.send(text)

    async def receive_text(self) -> str:
        raw = await asyncio.wait_for(self.connection.recv(), FRAME_TIMEOUT)
        return raw if isinstance(raw, str) else raw.decode()

    async def close(self) -> None:
        await self.connection.close()


class ResumingClient:
    """A client that behaves like the web UI: it reconnects when the socket drops, resumes
    from its last ``seq``, pings when the socket is quiet and resumes when the server is
    ahead. Its ``view`` spans all its connections."""

    def __init__(self, address: str, session_id: Any, cookie: str) -> None:
        self.address = address
        self.session_id = session_id
        self.cookie = cookie
        self.view = ClientView()
        self.connections = 0
        # Frames seen again: after a resume of ours crossed frames on the way (allowed), or
        # on a connection where we asked only once (a duplicate the server must never send).
        self.repeats = 0
        self.unasked_repeats = 0
        self.gaps_repaired = 0  # a seq that skipped ahead, asked again with resume
        self.snapshots = 0
        self._asked_again = False  # this connection got a resume after its first one
        self.ws: WsClient | None = None

    def move_to(self, address: str) -> None:
        """Reconnect to another server process from now on (a load balancer's choice)."""
        self.address = address

    async def connect(self) -> WsClient:
        while True:
            try:
                ws = await WsClient.open(self.address, self.session_id, self.cookie, resume=False)
            except (OSError, InvalidStatus, ConnectionClosed, TimeoutError):
                await asyncio.sleep(0.1)  # the server is restarting: back off and retry
                continue
            break
        ws.view = self.view
        self.connections += 1
        self._asked_again = False
        await ws.send({"type": "resume", "last_seq": self.view.last_seq})
        self.ws = ws
        return ws

    async def _resume_again(self, ws: WsClient) -> None:
        self._asked_again = True
        await ws.send({"type": "resume", "last_seq": self.view.last_seq})

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    def drop(self) -> None:
        """Lose the connection abruptly, as a network failure or a closed laptop does."""
        if self.ws is not None:
            self.ws.connection.transport.abort()
            self.ws = None

    async def until(
        self,
        match: Callable[[dict[str, Any]], bool],
        *,
        disconnect_after: Callable[[], int] | None = None,
        deadline: float = 120.0,
    ) -> None:
        """Read until a frame matches; ``disconnect_after`` drops the socket every so many
        frames (a random number each time) to test resuming."""
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + deadline
        budget = disconnect_after() if disconnect_after else None
        while loop.time() < stop_at:
            ws = self.ws or await self.connect()
            try:
                raw = await asyncio.wait_for(ws.connection.recv(), 1.0)
            except TimeoutError:
                await ws.send({"type": "ping"})  # quiet: is the server ahead of us?
                continue
            except ConnectionClosed:
                self.ws = None
                continue
            frame = json.loads(raw)
            if frame["type"] == "pong":
                if self.view.last_seq is not None and frame["last_seq"] > self.view.last_seq:
                    await self._resume_again(ws)
                continue
            ws.frames.append(frame)
            self.snapshots += frame["type"] == "snapshot"
            if "seq" in frame and frame["type"] != "snapshot" and self.view.last_seq is not None:
                if frame["seq"] <= self.view.last_seq:
                    # Sent again after one of our resumes crossed frames already on the
                    # way: a client ignores what it has applied, as the protocol says.
                    self.repeats += 1
                    self.unasked_repeats += not self._asked_again
                    continue
                if frame["seq"] != self.view.last_seq + 1:
                    # A gap (the server lost its log): ask again, as a real client does.
                    self.gaps_repaired += 1
                    await self._resume_again(ws)
                    continue
            self.view.apply(frame)
            if match(frame):
                return
            if budget is not None and disconnect_after is not None:
                budget -= 1
                if budget <= 0:
                    self.drop()
                    budget = disconnect_after()
        recent = [(e["seq"], e["type"]) for e in self.view.events[-8:]]
        raise AssertionError(
            f"no matching frame before the deadline; last seq {self.view.last_seq}, "
            f"{self.connections} connections, recent events {recent}"
        )
