"""Capture real websocket frames of every kind: docs/protocol-examples.md is its output.

Run from the repository root:

    .venv/bin/python bench/capture_frames.py --markdown docs/protocol-examples.md
    .venv/bin/python bench/capture_frames.py                      # transcript on stdout
    .venv/bin/python bench/capture_frames.py --json /tmp/frames.json

What it does, with nothing invented:

1. makes a temporary directory under the system temp dir (removed at the end) with an SQLite
   database, migrates it and creates the demo user (``ensure_demo_user``);
2. starts ``daphne chatproject.asgi:application`` on a free port of 127.0.0.1, with
   ``LOCAL_MODEL_URL`` pointing at the local scripted model mounted in that same server and
   ``LOCAL_MODEL_WORD_DELAY_MS=20``, and ``CHAT_EXTRA_TOOLS`` offering the test-only tool
   ``slow_steps`` (``tests/tools_for_tests.py``: an ordinary tool that reports progress, as no
   built-in one does); nothing else is configured, so the embedded defaults apply (in-memory
   channel layer and replay log, 5000 events per session);
3. logs in over HTTP (the login form, its CSRF token, the ``sessionid`` cookie) and creates
   sessions with ``POST /api/sessions/``;
4. talks to ``/ws/sessions/<id>/`` with the ``websockets`` client, sending the session cookie
   and an ``Origin`` header, and records every frame sent and received, scenario by scenario
   (the ``scenario_*`` functions below);
5. stops the server (SIGTERM to the process group it started) and removes the directory.

The transcript prints each frame as JSON, prefixed ``C>`` (client to server) or ``S<``
(server to client), with long strings cut; the ``--json`` file holds every frame whole
(except raw text frames over 200 characters, recorded by their length).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
USERNAME = "demo"
PASSWORD = "capture-frames-password"
# Ordinary tools run inside the turn and report progress as tool_progress; the built-in ones
# that report progress (draft_document, timer) are long-running (operation_in_progress).
EXTRA_TOOLS = "tests.tools_for_tests.SlowSteps"
FRAME_TIMEOUT = 60.0
STARTUP_TIMEOUT = 60.0
Frame = dict[str, Any]
Transcript = list[dict[str, Any]]


def free_port() -> int:
    """A TCP port that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


# --- the server -------------------------------------------------------------------------------


def server_env(workdir: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHAT_", "REDIS_", "OPENAI_", "LOCAL_MODEL_", "DJANGO_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        DATABASE_URL=f"sqlite:///{workdir / 'db.sqlite3'}",
        LOCAL_MODEL_URL=f"http://{HOST}:{port}/local-model/v1",
        LOCAL_MODEL_WORD_DELAY_MS="20",
        CHAT_EXTRA_TOOLS=EXTRA_TOOLS,
        CHATPROJECT_DEMO_PASSWORD=PASSWORD,
        CHAT_LOG_LEVEL="WARNING",
    )
    return env


@contextlib.contextmanager
def running_server(workdir: Path, port: int) -> Iterator[Path]:
    """Migrate, create the demo user, run daphne; yield its log file; stop it."""
    env = server_env(workdir, port)
    python = sys.executable
    for command in (["migrate", "--no-input", "-v", "0"], ["ensure_demo_user"]):
        subprocess.run(
            [python, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True
        )
    daphne = str(Path(python).with_name("daphne"))
    log_path = workdir / "daphne.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [daphne, "-b", HOST, "-p", str(port), "chatproject.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one below
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        yield log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- HTTP: log in, create sessions ------------------------------------------------------------


class Http:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        for cookie in self.jar:
            if cookie.name == name and cookie.value is not None:
                return cookie.value
        raise KeyError(name)

    def login(self) -> None:
        self.opener.open(f"{self.base}/accounts/login/").read()
        form = {
            "username": USERNAME,
            "password": PASSWORD,
            "csrfmiddlewaretoken": self.cookie("csrftoken"),
            "next": "/",
        }
        request = urllib.request.Request(
            f"{self.base}/accounts/login/",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Referer": f"{self.base}/accounts/login/"},
        )
        self.opener.open(request).read()
        self.cookie("sessionid")  # raises when the login failed

    def session_create(self) -> str:
        request = urllib.request.Request(
            f"{self.base}/api/sessions/",
            data=b"{}",
            headers={"Content-Type": "application/json", "X-CSRFToken": self.cookie("csrftoken")},
            method="POST",
        )
        with self.opener.open(request) as response:
            return str(json.loads(response.read())["id"])


# --- websockets -------------------------------------------------------------------------------


class Socket:
    """One websocket, recording every frame in ``transcript``."""

    def __init__(self, connection: ClientConnection, transcript: Transcript, name: str) -> None:
        self.connection = connection
        self.transcript = transcript
        self.name = name
        self.received: list[Frame] = []

    async def send(self, frame: Frame | str | bytes) -> None:
        entry: dict[str, Any] = {"socket": self.name, "dir": "client"}
        if isinstance(frame, bytes):
            entry["binary"] = frame.hex()
            await self.connection.send(frame)
        elif isinstance(frame, str):
            entry["raw"] = frame if len(frame) <= 200 else f"<{len(frame)} characters>"
            await self.connection.send(frame)
        else:
            entry["frame"] = frame
            await self.connection.send(json.dumps(frame))
        self.transcript.append(entry)

    async def next(self) -> Frame:
        raw = await asyncio.wait_for(self.connection.recv(), FRAME_TIMEOUT)
        frame: Frame = json.loads(raw)
        self.received.append(frame)
        self.transcript.append({"socket": self.name, "dir": "server", "frame": frame})
        return frame

    async def until(self, match: Callable[[Frame], bool]) -> list[Frame]:
        seen = []
        while True:
            frame = await self.next()
            seen.append(frame)
            if match(frame):
                return seen

    async def until_type(self, kind: str) -> list[Frame]:
        return await self.until(lambda f: f["type"] == kind)

    async def turn(self, content: str, client_message_id: str) -> list[Frame]:
        """Send a message and read every frame up to its turn's ``turn_finished``."""
        await self.send(send_frame(content, client_message_id))
        return await self.until_type("turn_finished")

    async def close(self) -> None:
        await self.connection.close()


def send_frame(content: str, client_message_id: str) -> Frame:
    return {"type": "send", "content": content, "client_message_id": client_message_id}


class Client:
    def __init__(self, port: int, cookie: str) -> None:
        self.origin = f"http://{HOST}:{port}"
        self.ws_base = f"ws://{HOST}:{port}"
        self.cookie = cookie
        self.scenarios: dict[str, Transcript] = {}

    def transcript(self, scenario: str) -> Transcript:
        return self.scenarios.setdefault(scenario, [])

    @contextlib.asynccontextmanager
    async def socket(self, scenario: str, session_id: str, name: str = "ws") -> Any:
        async with connect(
            f"{self.ws_base}/ws/sessions/{session_id}/",
            origin=self.origin,
            additional_headers={"Cookie": self.cookie},
            max_size=None,
        ) as connection:
            yield Socket(connection, self.transcript(scenario), name)

    async def close_code(
        self, scenario: str, path: str, *, cookie: bool, origin: str | None
    ) -> None:
        """Connect, read until the server closes, record the close code (or the refusal)."""
        transcript = self.transcript(scenario)
        entry: dict[str, Any] = {"dir": "handshake", "path": path, "cookie": cookie}
        entry["origin"] = origin
        try:
            async with connect(
                f"{self.ws_base}{path}",
                origin=origin,
                additional_headers={"Cookie": self.cookie} if cookie else {},
            ) as connection:
                entry["accepted"] = True
                try:
                    while True:
                        frame = json.loads(await connection.recv())
                        entry.setdefault("frames", []).append(frame)
                except ConnectionClosed as exc:
                    entry["close_code"] = exc.rcvd.code if exc.rcvd else None
                    entry["close_reason"] = exc.rcvd.reason if exc.rcvd else None
        except InvalidStatus as exc:
            entry["accepted"] = False
            entry["http_status"] = exc.response.status_code
        transcript.append(entry)


# --- the scenarios ----------------------------------------------------------------------------


async def scenario_main_session(client: Client, http: Http) -> None:
    """One session through every kind of turn, bad frames and pings, on one socket."""
    sid = http.session_create()
    async with client.socket("connect", sid) as ws:
        await ws.next()  # hello
        await ws.send({"type": "resume", "last_seq": None})
        await ws.until_type("snapshot")

        ws.transcript = client.transcript("plain_reply")
        await ws.turn("hello there", "c-plain-1")
        await ws.until_type("title_updated")

        ws.transcript = client.transcript("tool_round_trip")
        await ws.turn('/tool calculator {"expression": "6*7"}', "c-tool-1")

        ws.transcript = client.transcript("parallel_tools")
        await ws.turn(
            '/tool calculator {"expression": "1+1"}\n/tool current_time {"timezone": "UTC"}',
            "c-parallel-1",
        )

        ws.transcript = client.transcript("operation")
        await ws.send(send_frame('/tool timer {"seconds": 2, "label": "tea"}', "c-op-1"))
        await ws.until_type("operation_completed")
        await ws.until_type("turn_finished")

        ws.transcript = client.transcript("cancel_streaming")
        await ws.send(send_frame("/words 2000", "c-cancel-1"))
        deltas = 0
        while deltas < 5:
            deltas += (await ws.next())["type"] == "text_delta"
        await ws.send({"type": "cancel"})
        await ws.until_type("turn_finished")

        ws.transcript = client.transcript("model_error")
        await ws.turn("/error rate_limit", "c-error-1")

        ws.transcript = client.transcript("double_send")
        await ws.send(send_frame("/words 200", "c-busy-1"))
        await ws.until_type("text_delta")
        await ws.send(send_frame("another question", "c-busy-2"))
        await ws.until(lambda f: f["type"] == "error" and "seq" not in f)
        await ws.send(send_frame("/words 200", "c-busy-1"))
        await ws.until_type("ack")
        await ws.until_type("turn_finished")
        await ws.send(send_frame("/words 200", "c-busy-1"))
        await ws.until_type("ack")

        ws.transcript = client.transcript("step_limit")
        await ws.turn('/loop calculator {"expression": "1+1"}', "c-loop-1")

        ws.transcript = client.transcript("bad_frames")
        for raw in (
            "{nope",
            '{"type": "dance"}',
            "[1, 2]",
            '{"type": "send", "content": "x"}',
            '{"type": "resume", "last_seq": -1}',
            '{"type": "ping", "extra": 1}',
        ):
            await ws.send(raw)
            await ws.next()
        await ws.send(send_frame("x" * (256 * 1024 + 1), "c-big-1"))
        await ws.next()
        await ws.send(send_frame("x" * 32_001, "c-long-1"))
        await ws.next()
        await ws.send(b"\x00\x01")
        await ws.next()

        ws.transcript = client.transcript("ping")
        await ws.send({"type": "ping", "id": "p-1"})
        await ws.next()
        await ws.send({"type": "ping"})
        await ws.next()


async def scenario_cancel_pending_tool(client: Client, http: Http) -> None:
    """An ordinary tool reports progress; the turn is cancelled while it still runs."""
    sid = http.session_create()
    async with client.socket("cancel_pending_tool", sid) as ws:
        await ws.next()  # hello
        await ws.send({"type": "resume", "last_seq": None})
        await ws.until_type("snapshot")
        # 20 steps of half a second: the cancel comes long before the tool would finish.
        await ws.send(send_frame('/tool slow_steps {"steps": 20, "seconds": 0.5}', "c-steps-1"))
        await ws.until_type("tool_progress")
        await ws.until_type("tool_progress")
        await ws.send({"type": "cancel"})
        await ws.until_type("turn_finished")


async def scenario_resume(client: Client, http: Http) -> None:
    """Snapshots mid-stream and after, resume with a cursor, and the implied resume."""
    sid = http.session_create()
    async with client.socket("snapshot_mid_stream", sid, "A") as first:
        await first.next()
        await first.send({"type": "resume", "last_seq": None})
        await first.next()
        await first.send(send_frame("/words 300", "c-long-stream"))
        deltas = 0
        while deltas < 10:
            deltas += (await first.next())["type"] == "text_delta"
        async with client.socket("snapshot_mid_stream", sid, "B") as late:
            await late.next()
            await late.send({"type": "resume", "last_seq": None})
            await late.next()  # the snapshot, streaming message included
            for _ in range(3):
                await late.next()
            late.transcript = []  # the rest of the stream is not needed in the doc
            await late.until_type("turn_finished")
        first.transcript = []
        await first.until_type("turn_finished")
        await first.until_type("title_updated")
        events = [f for f in first.received if "seq" in f and f["type"] != "snapshot"]

    cursor = events[-5]["seq"]
    async with client.socket("resume_cursor", sid) as ws:
        await ws.next()
        await ws.send({"type": "resume", "last_seq": cursor})
        for _ in range(4):
            await ws.next()
        head = ws.received[-1]["seq"]
        # Resuming at the head sends nothing; the pong shows the socket is idle and current.
        await ws.send({"type": "resume", "last_seq": head})
        await ws.send({"type": "ping", "id": "after-resume"})
        await ws.next()

    async with client.socket("resume_other_life", sid) as ws:
        await ws.next()
        await ws.send({"type": "resume", "last_seq": 10**9})
        await ws.next()

    async with client.socket("implied_resume", sid) as ws:
        await ws.next()
        await ws.send({"type": "ping", "id": "first"})
        await ws.next()  # the snapshot a first non-resume frame implies
        await ws.next()  # then the pong


async def scenario_close_codes(client: Client, http: Http) -> None:
    sid = http.session_create()
    origin = client.origin
    # Over daphne's own message limit (1 MiB by default) the server closes the connection.
    async with client.socket("close_too_big", sid) as ws:
        await ws.next()
        await ws.send({"type": "resume", "last_seq": None})
        await ws.next()
        await ws.send(send_frame("x" * (1024 * 1024 + 1), "c-huge-1"))
        try:
            await ws.next()
        except ConnectionClosed as exc:
            ws.transcript.append(
                {
                    "dir": "closed",
                    "close_code": exc.rcvd.code if exc.rcvd else None,
                    "close_reason": exc.rcvd.reason if exc.rcvd else None,
                    "error": str(exc),
                }
            )
    await client.close_code("close_4401", f"/ws/sessions/{sid}/", cookie=False, origin=origin)
    await client.close_code(
        "close_4404", f"/ws/sessions/{uuid.uuid4()}/", cookie=True, origin=origin
    )
    await client.close_code("close_4404", "/ws/sessions/not-a-uuid/", cookie=True, origin=origin)
    await client.close_code(
        "origin_refused", f"/ws/sessions/{sid}/", cookie=True, origin="http://evil.example"
    )
    await client.close_code("origin_refused", f"/ws/sessions/{sid}/", cookie=True, origin=None)


async def capture(port: int) -> dict[str, Transcript]:
    http = Http(f"http://{HOST}:{port}")
    await asyncio.to_thread(http.login)
    client = Client(port, f"sessionid={http.cookie('sessionid')}")
    await scenario_main_session(client, http)
    await scenario_cancel_pending_tool(client, http)
    await scenario_resume(client, http)
    await scenario_close_codes(client, http)
    return client.scenarios


# --- output -----------------------------------------------------------------------------------

# What each scenario shows, in the order the examples page gives them.
DESCRIPTIONS = {
    "connect": "A socket opens: `hello`, then the client's `resume` with `null` gets a snapshot.",
    "plain_reply": "A plain reply streamed as `text_delta` events, then the generated title.",
    "tool_round_trip": "The model calls a tool that runs inside the turn; a second model call "
    "answers with its result.",
    "parallel_tools": "Two tool calls in one reply run in parallel; their results come in the "
    "order they finish.",
    "operation": "A long-running tool becomes an operation: the turn ends at once, the "
    "operation reports progress and completes, and a continuation turn tells the user.",
    "cancel_streaming": "`cancel` while the answer streams: the text so far is kept, marked "
    "`interrupted`.",
    "model_error": "The model answers with an error (a rate limit): an `error` event with its "
    "code and `retry_after`, and `turn_finished` `failed`.",
    "double_send": "A `send` while a turn runs is refused (`turn_in_progress`); the same "
    "`client_message_id` sent again, during the turn and after it, is acknowledged as a "
    "duplicate and starts nothing.",
    "step_limit": "A model that calls tools for ever is stopped after `CHAT_TURN_MAX_STEPS` "
    "model calls.",
    "bad_frames": "Frames the server refuses, each with an `error` frame; the socket stays open.",
    "ping": "`ping` with and without an id; `pong` carries the session's newest `seq`.",
    "cancel_pending_tool": "An ordinary tool reports `tool_progress` (the test-only tool "
    "`slow_steps`); the turn is cancelled while the tool runs.",
    "snapshot_mid_stream": "A second socket [B] opened while socket [A] streams gets a snapshot "
    "holding the text streamed so far, then the live deltas after it.",
    "resume_cursor": "`resume` with a cursor: exactly the events after it; at the head, nothing.",
    "resume_other_life": "`resume` with a cursor the server never handed out (from another "
    "life of its counter): a snapshot.",
    "implied_resume": "A first frame that is not `resume` implies `resume` with `null`.",
    "close_too_big": "A frame over the server's message limit closes the connection.",
    "close_4401": "No login: the socket is closed with 4401.",
    "close_4404": "A session that does not exist (or another user's), or a malformed id: 4404.",
    "origin_refused": "A foreign or missing `Origin` is refused at the handshake.",
}
# Runs of text_delta frames longer than this are shown by their first and last few.
DELTA_RUN_SHOWN = 3


def _entry_line(entry: dict[str, Any], limit: int) -> str:
    socket_name = entry.get("socket", "")
    tag = f"[{socket_name}] " if socket_name not in ("", "ws") else ""
    direction = entry["dir"]
    if direction in ("client", "server"):
        arrow = "→" if direction == "client" else "←"
        if "raw" in entry:
            body = entry["raw"]
        elif "binary" in entry:
            body = f"<binary frame {entry['binary']}>"
        else:
            body = json.dumps(abridged(entry["frame"], limit), ensure_ascii=False)
        return f"{tag}{arrow} {body}"
    if direction == "handshake":
        origin = entry["origin"] or "(none)"
        cookie = "sessionid" if entry["cookie"] else "(none)"
        head = f"# handshake {entry['path']}  cookie: {cookie}  Origin: {origin}\n#   → "
        if not entry["accepted"]:
            return head + f"refused: HTTP {entry['http_status']}"
        frames = len(entry.get("frames", []))
        return (
            head
            + f"accepted, {frames} frames, closed by the server with code "
            + str(entry.get("close_code"))
        )
    return f"# connection closed: code {entry.get('close_code')} ({entry.get('error')})"


def _lines(transcript: Transcript, limit: int) -> list[str]:
    """The transcript's lines, long runs of text_delta frames shortened."""
    lines: list[str] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) > 2 * DELTA_RUN_SHOWN + 1:
            skipped = run[DELTA_RUN_SHOWN:-DELTA_RUN_SHOWN]
            first, last = skipped[0]["frame"]["seq"], skipped[-1]["frame"]["seq"]
            lines.extend(_entry_line(e, limit) for e in run[:DELTA_RUN_SHOWN])
            lines.append(f"# … {len(skipped)} more text_delta frames (seq {first} to {last}) …")
            lines.extend(_entry_line(e, limit) for e in run[-DELTA_RUN_SHOWN:])
        else:
            lines.extend(_entry_line(e, limit) for e in run)
        run.clear()

    for entry in transcript:
        frame = entry.get("frame")
        if isinstance(frame, dict) and frame.get("type") == "text_delta":
            run.append(entry)
            continue
        flush()
        lines.append(_entry_line(entry, limit))
    flush()
    return lines


def markdown(scenarios: dict[str, Transcript], limit: int) -> str:
    """docs/protocol-examples.md: every scenario's frames, as captured."""
    out = [
        "# The websocket protocol: captured examples",
        "",
        "Every frame on this page was sent or received by a real server in one run of",
        "`bench/capture_frames.py`, which wrote this page:",
        "",
        "```console",
        "$ .venv/bin/python bench/capture_frames.py --markdown docs/protocol-examples.md",
        "```",
        "",
        "The run: `daphne chatproject.asgi:application` on a free port with the embedded",
        "defaults (an SQLite file, the in-memory channel layer and replay log, the in-process",
        "worker) and the local scripted model (`docs/local-model.md`) at a 20 ms word delay,",
        "plus the test-only tool `slow_steps` (`tests/tools_for_tests.py`, through",
        "`CHAT_EXTRA_TOOLS`). The client logs in over HTTP, creates sessions with",
        "`POST /api/sessions/` and records every frame. The reference is `docs/protocol.md`.",
        "",
        "How to read them: `→` is a frame the client sent, `←` one the server sent; `[A]` and",
        "`[B]` name the socket when there are several (each socket's frames in the order it",
        f"received them); `#` lines are notes. Strings longer than {limit} characters are cut",
        "(`…(+N chars)`), and a long run of `text_delta` frames is shortened to its first and",
        "last few. Ids, timestamps and token counts differ from run to run; the shapes and the",
        "order do not.",
        "",
    ]
    for name, transcript in scenarios.items():
        out += [f"## {name}", "", DESCRIPTIONS.get(name, ""), "", "```"]
        out += _lines(transcript, limit)
        out += ["```", ""]
    return "\n".join(out)


def abridged(frame: Any, limit: int) -> Any:
    """``frame`` with every string over ``limit`` characters cut (for the transcript only)."""
    if isinstance(frame, str) and len(frame) > limit:
        return frame[:limit] + f"…(+{len(frame) - limit} chars)"
    if isinstance(frame, dict):
        return {k: abridged(v, limit) for k, v in frame.items()}
    if isinstance(frame, list):
        return [abridged(v, limit) for v in frame]
    return frame


def print_transcript(scenarios: dict[str, Transcript], limit: int) -> None:
    for name, transcript in scenarios.items():
        print(f"\n## {name}")
        for entry in transcript:
            arrow = {"client": "C>", "server": "S<"}.get(entry["dir"], "--")
            body = entry.get("frame", entry)
            if "raw" in entry:
                body = entry["raw"]
            elif "binary" in entry:
                body = f"<binary frame {entry['binary']}>"
            text = body if isinstance(body, str) else json.dumps(abridged(body, limit))
            socket_name = entry.get("socket", "")
            print(f"{arrow} {socket_name:2} {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write every frame, unabridged, here")
    parser.add_argument(
        "--markdown", type=Path, help="write the examples page (docs/protocol-examples.md) here"
    )
    parser.add_argument(
        "--limit", type=int, default=160, help="cut strings longer than this in the transcript"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="capture-frames-"))
    port = free_port()
    try:
        with running_server(workdir, port) as log_path:
            try:
                scenarios = asyncio.run(capture(port))
            except BaseException:
                print(log_path.read_text()[-5000:], file=sys.stderr)
                raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(scenarios, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(scenarios, args.limit))
    else:
        print_transcript(scenarios, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
