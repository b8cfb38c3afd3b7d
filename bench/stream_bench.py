"""Streaming benchmark: N concurrent sessions streaming through daphne, against two baselines.

    .venv/bin/python bench/stream_bench.py                       # 10, 100, 500 sessions
    .venv/bin/python bench/stream_bench.py --sessions 10 --seconds 5    # a smoke run

It starts, on private resources (database ``chatproject_stream_bench``, Redis db 12, free
ports), the local scripted model (``manage.py local_model --word-delay-ms``), the server
(one daphne process, or ``--servers N`` with the sessions spread over them in turn, in the
production configuration: PostgreSQL, Redis, secure cookies behind a pretend TLS proxy) and
the floor (``bench/stream_floor.py``: a raw ASGI websocket app under daphne that relays the
same model with the same SDK call, no Django, no channels).
For each N it runs three paths in turn, each with N concurrent sessions for ``--seconds``:

- ``direct``: each session POSTs ``/words W`` straight to the local model (streaming, raw
  HTTP and SSE, minimal parsing) again and again;
- ``floor``: each session is a websocket to the floor, sending ``send`` frames;
- ``server``: each session is a websocket to the real server (docs/protocol.md: session
  cookie and Origin, ``resume`` with null, then ``send`` with a client message id).

A session sends its next message a think time after the previous turn finished; the first
sends are spread over one stream's nominal length, so the load is steady rather than a herd.
TTFT is send (request) to the first text piece. The server's and the floor's *added* TTFT
are their TTFT minus the direct path's at the same N (percentile minus percentile: the
requests are not paired). CPU is read from /proc/<pid>/stat before and after each path.
Turns still running ``--drain`` seconds after ``--seconds`` are cancelled (a ``cancel``
frame); a quiet server socket pings and resumes as docs/protocol.md asks of clients.
Sessions are spread over users (``--sessions-per-user``) and the server's per-user limits on
running turns and messages a minute are raised for the run.

Every ``seq`` must follow the previous one; every ``text_delta`` must start where the text
so far ends; the assembled text, the ``message_updated`` text and (server) the stored
message read back over the JSON API must equal the model's text (a cancelled answer: a
prefix of it). Any loss or duplicate, error, or traceback in a process's log makes the exit
status 1. Figures, their reading and the options: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DB_NAME = "chatproject_stream_bench"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"
PASSWORD = "stream-bench-" + secrets.token_hex(8)
MESSAGES_PER_MINUTE = 100_000  # the per-user message rate is not what is measured here
PRODUCTION_ENV = f"""CHAT_PRODUCTION=1 DJANGO_DEBUG=0 DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost
    DJANGO_CSRF_TRUSTED_ORIGINS=https://127.0.0.1 DJANGO_SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/{DB_NAME} REDIS_URL={REDIS_URL}
    CHAT_TASK_WORKER=external OPENAI_API_KEY=stream-bench-key CHAT_MODEL=chatproject-local
    CHAT_USER_MESSAGES_PER_MINUTE={MESSAGES_PER_MINUTE}
    DJANGO_SETTINGS_MODULE=chatproject.settings"""
TURN_TIMEOUT = 120.0  # seconds without a frame before a turn counts as stuck
PATHS = ("direct", "floor", "server")
Frame = dict[str, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of every thread. With ``children`` (the postmaster): plus its reaped
    children (backends that closed) and its live ones (backends still connected)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    total = sum(int(v) for v in stat[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")
    if children:
        with contextlib.suppress(OSError):
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            total += sum(v for kid in kids if not math.isnan(v := cpu_seconds(int(kid))))
    return total


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def pg_admin(sql: str) -> Any:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        cursor = conn.execute(sql.encode())
        return cursor.fetchall() if cursor.description else None


def postmaster_pid() -> int:
    [(data_dir,)] = pg_admin("SELECT current_setting('data_directory')")
    return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path, *,
                 port: int, label: str = "") -> None:  # fmt: skip
        """``name``: what its CPU counts as; ``label`` (default ``name``): its log's name."""
        self.name, self.port = name, port
        self.label = label or name
        self.log = logdir / f"{self.label}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_port(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(20)
        return self.popen.wait()


# --- HTTP setup: logins and sessions, as a client does it ------------------------------------


def http_call(port: int, method: str, path: str, cookies: dict[str, str], body: bytes = b"",
              ctype: str = "application/json") -> bytes:  # fmt: skip
    """One request through the pretend TLS proxy; ``cookies`` follows Set-Cookie."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    headers = {"X-Forwarded-Proto": "https", "Origin": f"https://{HOST}:{port}",
               "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
               "Content-Type": ctype, "X-CSRFToken": cookies.get("csrftoken", "")}  # fmt: skip
    try:
        conn.request(method, path, body if method != "GET" else None, headers)
        response = conn.getresponse()
        data = response.read()
        for raw in response.msg.get_all("Set-Cookie") or []:
            cookies.update({k: m.value for k, m in SimpleCookie(raw).items()})
        if response.status not in (200, 201, 302):
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {data[:300]!r}")
        return data
    finally:
        conn.close()


def login(port: int, username: str) -> dict[str, str]:
    cookies = {"csrftoken": secrets.token_hex(16)}  # a double-submit cookie the client picks
    form = {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": cookies["csrftoken"]}
    body = urllib.parse.urlencode(form).encode()
    http_call(port, "POST", "/accounts/login/", cookies, body, "application/x-www-form-urlencoded")
    return cookies


# --- measurement ---------------------------------------------------------------------------


@dataclass
class Run:
    """One path at one N."""

    n: int
    path: str
    seconds: float  # new turns start until then
    ttft: list[float] = field(default_factory=list)  # ms, send -> first text piece
    censored: int = 0  # turns cut before their first piece: their ttft is a lower bound
    ack: list[float] = field(default_factory=list)  # ms, send -> ack
    created: list[float] = field(default_factory=list)  # ms, send -> assistant message_created
    pace: list[float] = field(default_factory=list)  # pieces a second within one stream
    tokens: int = 0
    frames: int = 0  # that carried text (text_delta, or SSE chunks on the direct path)
    turns: int = 0
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds, by process
    machine: float = 0.0  # busy share of all cores
    c: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few integrity failures

    def example(self, what: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(what)


@dataclass
class Bench:
    args: argparse.Namespace
    content: str  # the message every turn sends
    expected: str  # the model's text for it
    pieces: int  # the pieces it streams in
    model_url: str
    ports: dict[str, list[int]]  # by path: one port, or one per server process
    pids: dict[str, list[int]]  # the processes whose CPU is read, summed by name
    cookies: list[dict[str, str]] = field(default_factory=list)  # one per user
    runs: list[Run] = field(default_factory=list)
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)


class Stream:
    """One turn as a client sees it: timings, the text assembled, the checks."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first = self.last = 0.0
        self.text = ""
        self.pieces = 0  # frames (server, floor) or chunks (direct) that carried text
        self.first_tokens = 0  # tokens in the first of them

    def piece(self, text: str) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now
        self.text += text
        self.pieces += 1
        if self.pieces == 1:
            self.first_tokens = self.tokens()

    def tokens(self) -> int:
        """The model's pieces in the text so far: one word each (a server may send several
        in one ``text_delta`` when they arrived while the previous one was on its way)."""
        return len(self.text.split())

    def record(self, bench: Bench, run: Run, final: str | None, complete: bool) -> None:
        """Count the turn; a complete one must have the model's whole text, a cancelled one a
        prefix of it. ``final``: the text of the message's last ``message_updated``."""
        if self.pieces:
            run.ttft.append((self.first - self.t0) * 1000)
        elif not complete:
            run.ttft.append((time.perf_counter() - self.t0) * 1000)
            run.censored += 1
        tokens = self.tokens()
        if self.last > self.first:
            run.pace.append((tokens - self.first_tokens) / (self.last - self.first))
        run.tokens += tokens
        run.frames += self.pieces
        run.turns += 1
        right = bench.expected if complete else bench.expected[: len(self.text)]
        run.c["tokens lost"] += max(0, bench.pieces - tokens) if complete else 0
        run.c["streamed text differs from the model's"] += self.text != right
        run.c["message_updated text differs"] += final is not None and final != self.text
        if self.text != right or (final is not None and final != self.text):
            run.example(f"{'complete' if complete else 'cancelled'} turn: {self.pieces} pieces "
                        f"streamed ({len(self.text)} chars), message_updated "
                        f"{len(final or '')} chars, ends {(final or '')[-30:]!r}; streamed text "
                        f"ends {self.text[-30:]!r}")  # fmt: skip


async def direct_turn(bench: Bench, run: Run, client: httpx2.AsyncClient) -> bool:
    body = {"model": "chatproject-local", "messages": [{"role": "user", "content": bench.content}],
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    stream = Stream()
    try:
        url = f"{bench.model_url}/chat/completions"
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                run.c[f"error HTTP {response.status_code}"] += 1
                return False
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:])["choices"]:
                    if choice["delta"].get("content"):
                        stream.piece(choice["delta"]["content"])
    except asyncio.CancelledError:  # cut at the drain limit
        stream.record(bench, run, None, complete=False)
        raise
    stream.record(bench, run, None, complete=True)
    return True


class Socket:
    """One websocket on one session (server or floor), checking seq and offsets."""

    def __init__(self, bench: Bench, run: Run, ws: ClientConnection) -> None:
        self.bench, self.run, self.ws = bench, run, ws
        self.last_seq: int | None = None
        self.texts: list[str] = []  # each turn's answer as assembled from text_delta
        self.pings = run.path == "server"  # the floor has no ping
        self.behind = False  # the last pong was ahead of the events seen since
        self.resumed = False  # this socket sent a resume after its snapshot

    async def recv(self) -> Frame | None:
        """The next frame; ``None`` for an event already seen (counted).

        As docs/protocol.md asks of clients, a socket quiet for ``--quiet-ping`` seconds is
        pinged (server only); when a ``pong`` said the server is ahead and nothing came for
        another quiet period, the socket sends ``resume``: the live path lost events.
        """
        quiet = self.bench.args.quiet_ping if self.pings else TURN_TIMEOUT
        waited = 0.0
        while True:
            try:
                frame: Frame = json.loads(await asyncio.wait_for(self.ws.recv(), quiet))
                break
            except TimeoutError:
                waited += quiet
                if waited >= TURN_TIMEOUT:
                    raise
                if self.behind:
                    self.behind, self.resumed = False, True
                    self.run.c["resumes: a pong was ahead, then nothing came"] += 1
                    await self.ws.send(json.dumps({"type": "resume", "last_seq": self.last_seq}))
                else:
                    await self.ws.send(json.dumps({"type": "ping"}))
        seq = frame.get("seq")
        if frame["type"] == "pong":
            self.behind = frame["last_seq"] > (self.last_seq or 0)
        elif seq is not None:
            self.behind = False
        if seq is None or frame["type"] == "snapshot":
            self.last_seq = seq if seq is not None else self.last_seq
            return frame
        if self.last_seq is not None and seq <= self.last_seq:
            # After a resume, the events it re-sent and the late live ones overlap.
            self.run.c[
                "events re-sent after a resume" if self.resumed else "events repeated (seq)"
            ] += 1
            return None
        if self.last_seq is not None and seq != self.last_seq + 1:
            self.run.c["events missing (seq gap)"] += seq - self.last_seq - 1
        self.last_seq = seq
        return frame

    async def resume(self) -> None:
        await self.ws.send(json.dumps({"type": "resume", "last_seq": None}))
        while (frame := await self.recv()) is None or frame["type"] != "snapshot":
            pass

    async def cancel(self) -> None:
        await self.ws.send(json.dumps({"type": "cancel"}))

    async def turn(self) -> bool:
        run, cmid = self.run, uuid.uuid4().hex
        send = json.dumps(
            {"type": "send", "content": self.bench.content, "client_message_id": cmid}
        )
        stream, sequence, final, status = Stream(), None, None, ""
        await self.ws.send(send)
        try:
            while not status:
                frame = await self.recv()
                if frame is None:
                    continue
                now, kind = time.perf_counter(), frame["type"]
                if kind == "ack" and frame.get("client_message_id") == cmid:
                    run.ack.append((now - stream.t0) * 1000)
                elif kind == "error" and "seq" not in frame:
                    if (
                        frame["code"] != "turn_in_progress"
                    ):  # the previous turn's lease, not yet freed
                        run.c[f"error frame {frame['code']}"] += 1
                        return False
                    run.c["sends retried (turn_in_progress)"] += 1
                    await asyncio.sleep(0.05)
                    stream.t0 = time.perf_counter()
                    await self.ws.send(send)
                elif kind == "message_created" and frame["message"]["role"] == "assistant":
                    sequence = frame["message"]["sequence"]
                    run.created.append((now - stream.t0) * 1000)
                elif kind == "text_delta" and frame["message_sequence"] == sequence:
                    offset, text = frame["offset"], frame["text"]
                    if offset == len(stream.text):
                        stream.piece(text)
                    elif offset < len(stream.text):
                        run.c["tokens duplicated"] += 1
                    else:
                        run.c["text_delta holes (offset past the text)"] += 1
                elif kind == "message_updated" and frame["message"]["sequence"] == sequence:
                    final = frame["message"]["content"]
                elif kind == "error":
                    run.c[f"error event {frame.get('code')}"] += 1
                elif kind == "turn_finished":
                    status = frame["status"]
                elif kind == "snapshot":  # the log could not serve a resume: rare, counted
                    run.c["snapshots during a turn"] += 1
        except (asyncio.CancelledError, TimeoutError):  # given up on: TTFT a lower bound
            stream.record(self.bench, run, None, complete=False)
            raise

        if sequence is not None:
            self.texts.append(stream.text)
        stream.record(self.bench, run, final, complete=status == "completed")
        run.c[f"turns {status}"] += 1
        return status == "completed"


async def open_socket(bench: Bench, run: Run, url: str, port: int, cookie: str) -> Socket:
    headers = {"Cookie": cookie, "X-Forwarded-Proto": "https"} if cookie else {}
    ws = await connect(url, origin=Origin(f"https://{HOST}:{port}"), additional_headers=headers,
                       proxy=None, open_timeout=120, max_size=None, compression=None)  # fmt: skip
    sock = Socket(bench, run, ws)
    await sock.resume()
    return sock


Turn = Callable[[], Awaitable[bool]]
Cancel = Callable[[], Awaitable[None]] | None


async def drive(bench: Bench, run: Run, sessions: list[tuple[Turn, Cancel]]) -> None:
    """Run every session's turns until the deadline, and let them finish for up to
    ``--drain`` seconds more; then cancel what still runs. Time and CPU of the whole."""
    args, loop = bench.args, asyncio.get_running_loop()
    ramp = min(run.seconds, args.words * args.word_delay_ms / 1000)
    deadline = loop.time() + run.seconds

    async def session(turn: Turn, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0, ramp))
        try:
            while loop.time() < deadline and await turn():
                await asyncio.sleep(rng.uniform(*args.think))
        except (TimeoutError, OSError, httpx2.HTTPError, ConnectionClosed) as exc:
            run.c[f"error {type(exc).__name__}"] += 1

    cpu0 = {name: processes_cpu(bench, name) for name in bench.pids}
    machine0, t0 = machine_cpu(), time.monotonic()
    profiler = start_py_spy(bench, run)
    tasks = {
        asyncio.create_task(session(turn, random.Random(i))): cancel
        for i, (turn, cancel) in enumerate(sessions)
    }
    _, late = await asyncio.wait(tasks, timeout=run.seconds + args.drain)
    if late:  # the server did not keep up: stop the turns still running, as a user would
        run.c["turns cancelled at the drain limit"] += len(late)
        for task in late:
            cancel = tasks[task]
            if cancel is None:
                task.cancel()
            else:
                with contextlib.suppress(OSError, ConnectionClosed):
                    await cancel()
        _, stuck = await asyncio.wait(late, timeout=args.drain)
        run.c["turns given up on (no turn_finished --drain s after cancel)"] += len(stuck)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    run.elapsed = time.monotonic() - t0
    busy, total = (a - b for a, b in zip(machine_cpu(), machine0, strict=True))
    run.machine = busy / max(total, 1)
    for name in bench.pids:
        run.cpu[name] = processes_cpu(bench, name) - cpu0[name]
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)


def processes_cpu(bench: Bench, name: str) -> float:
    return sum(cpu_seconds(pid, children=name == "postgres") for pid in bench.pids[name])


def start_py_spy(bench: Bench, run: Run) -> subprocess.Popen[bytes] | None:
    if not bench.args.py_spy or run.path == "direct" or run.seconds != bench.args.seconds:
        return None
    out = Path(bench.args.py_spy) / f"{run.path}-{run.n}.txt"
    pid = bench.pids[run.path][0]  # the first server process
    spy = str(Path(sys.executable).parent / "py-spy")
    cmd = [spy, *f"record -p {pid} -r 200 -f raw -o {out}".split()]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_path(bench: Bench, n: int, path: str, seconds: float) -> Run:
    run = Run(n, path, seconds)
    if path == "direct":
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx2.Timeout(TURN_TIMEOUT)
        async with httpx2.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
            await drive(bench, run, [(lambda: direct_turn(bench, run, client), None)] * n)
        return run
    ports = bench.ports[path]
    port = ports[0]
    if path == "server":  # fresh sessions, spread over the users
        per_user = bench.args.sessions_per_user
        with ThreadPoolExecutor(4) as pool:
            made = pool.map(
                lambda k: http_call(port, "POST", "/api/sessions/", bench.cookies[k // per_user],
                                    b"{}"), range(n))  # fmt: skip
            ids = [json.loads(body)["id"] for body in made]
        cookies = [f"sessionid={bench.cookies[k // per_user]['sessionid']}" for k in range(n)]
        targets = [(f"/ws/sessions/{sid}/", cookies[k]) for k, sid in enumerate(ids)]
    else:
        targets = [(f"/ws/floor/{k}/", "") for k in range(n)]
    gate = asyncio.Semaphore(50)

    async def opened(k: int, target: tuple[str, str]) -> Socket:
        at = ports[k % len(ports)]  # sessions in turn over the server processes
        async with gate:
            return await open_socket(bench, run, f"ws://{HOST}:{at}{target[0]}", at, target[1])

    sockets = await asyncio.gather(*(opened(k, t) for k, t in enumerate(targets)))
    await drive(bench, run, [(s.turn, s.cancel) for s in sockets])
    await asyncio.gather(*(s.ws.close() for s in sockets), return_exceptions=True)
    if path == "server":  # the stored answers, read back over the JSON API
        cookies = [bench.cookies[k // bench.args.sessions_per_user] for k in range(n)]
        stored = await asyncio.to_thread(stored_answers, port, ids, cookies)
        for sock, answers in zip(sockets, stored, strict=True):
            run.c["stored answers differ from the streamed ones"] += sum(
                a != b for a, b in zip(answers, sock.texts, strict=False)
            )
            run.c["stored answers missing"] += max(0, len(sock.texts) - len(answers))
            for a, b in zip(answers, sock.texts, strict=False):
                if a != b:
                    run.example(f"stored {len(a)} chars ending {a[-30:]!r}, streamed {len(b)} "
                                f"chars ending {b[-30:]!r}")  # fmt: skip
    return run


def stored_answers(port: int, ids: list[str], cookies: list[dict[str, str]]) -> list[list[str]]:
    def answers(k: int) -> list[str]:
        body = json.loads(http_call(port, "GET", f"/api/sessions/{ids[k]}/", dict(cookies[k])))
        return [m["content"] for m in body["messages"] if m["role"] == "assistant"]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(answers, range(len(ids))))


# --- report --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Linear interpolation between the nearest ranks (NaN when empty)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


INTEGRITY = ("tokens lost", "tokens duplicated", "text_delta holes (offset past the text)",
             "events missing (seq gap)", "events repeated (seq)",
             "streamed text differs from the model's", "message_updated text differs",
             "stored answers differ from the streamed ones", "stored answers missing")  # fmt: skip


def report(bench: Bench, log_problems: int) -> bool:
    a = bench.args
    print(f"\n# Streaming: {a.words} words a turn at {a.word_delay_ms} ms a word, "
          f"{a.seconds:g} s per path, think {a.think[0]:g}-{a.think[1]:g} s, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}\n")  # fmt: skip
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() or "unknown"
    print(f"Code: {commit} (`git describe --always --dirty`).\n")
    load = ", ".join(f"{x:.2f}" for x in bench.load)
    print(
        f"Load average at the start: {load}; PostgreSQL and Redis are shared with whatever "
        "else runs on the machine.\n"
    )
    if a.server_env:
        print(f"Server environment added for this run: `{' '.join(a.server_env)}`\n")
    if a.servers > 1:
        print(f"Server processes: {a.servers} (sessions spread over them in turn; the server's "
              "CPU is their sum).\n")  # fmt: skip
    direct = {r.n: r for r in bench.runs if r.path == "direct"}
    print("| sessions | path | turns | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms "
          "| send→ack p50 ms | send→message_created p50 ms |\n|" + " --- |" * 9)  # fmt: skip
    for r in bench.runs:
        base = direct.get(r.n)
        p50, p99 = pct(r.ttft, 0.5), pct(r.ttft, 0.99)
        add50 = p50 - pct(base.ttft, 0.5) if base and r is not base else math.nan
        add99 = p99 - pct(base.ttft, 0.99) if base and r is not base else math.nan
        cells = [fmt(v) for v in (p50, p99, add50, add99, pct(r.ack, 0.5), pct(r.created, 0.5))]
        if r.censored:  # turns cancelled before their first piece: lower bounds
            cells[:4] = [f"≥ {v}" for v in cells[:4]]
        print(f"| {r.n} | {r.path} | {r.turns} | " + " | ".join(cells) + " |")
    names = list(bench.pids)
    print("\n| sessions | path | tokens | tokens/s | tokens per frame | stream pace p50 tok/s | "
          + " | ".join(f"{n} µs/token" for n in names) + " | machine CPU % |\n|"
          + " --- |" * (7 + len(names)))  # fmt: skip
    for r in bench.runs:
        per_token = [r.cpu[n] / r.tokens * 1e6 if r.tokens else math.nan for n in names]
        shown = [fmt(v, 0) if n in (r.path, "model", "redis", "postgres", "client") else "-"
                 for n, v in zip(names, per_token, strict=True)]  # fmt: skip
        per_frame = r.tokens / r.frames if r.frames else math.nan
        print(
            f"| {r.n} | {r.path} | {r.tokens:,} | {fmt(r.tokens / r.elapsed, 0)} | "
            f"{fmt(per_frame, 2)} | {fmt(pct(r.pace, 0.5))} | "
            + " | ".join(shown)
            + f" | {r.machine * 100:.0f} |"
        )
    print("\n| sessions | path | " + " | ".join(INTEGRITY) + " | other |\n|"
          + " --- |" * (3 + len(INTEGRITY)))  # fmt: skip
    bad = 0
    for r in bench.runs:
        other = {k: v for k, v in r.c.items() if k not in INTEGRITY and v}
        bad += sum(r.c[k] for k in INTEGRITY) + sum(
            v for k, v in other.items() if k.startswith("error")
        )
        extra = ", ".join(f"{k}: {v}" for k, v in sorted(other.items())) or "-"
        print(f"| {r.n} | {r.path} | " + " | ".join(str(r.c[k]) for k in INTEGRITY)
              + f" | {extra} |")  # fmt: skip
    print()
    for r in bench.runs:
        for example in r.examples:
            print(f"- {r.n} {r.path}: {example}")
    for r in bench.runs:
        if r.path == "server" and r.n in direct:
            added = pct(r.ttft, 0.5) - pct(direct[r.n].ttft, 0.5)
            bound = "at least " if r.censored else ""
            print(f"- server adds {bound}{added:.1f} ms to TTFT at p50 with {r.n} sessions")
    bad += log_problems
    print(f"\nlost or duplicated tokens and events, errors: {bad - log_problems}; tracebacks and "
          f"ERROR lines in the logs: {log_problems} -> {'FAIL' if bad else 'PASS'}")  # fmt: skip
    return not bad


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="10,100,500", help="N, comma-separated")
    parser.add_argument("--words", type=int, default=50, help="words per turn (/words W)")
    parser.add_argument("--word-delay-ms", type=int, default=30, help="the model's pace")
    parser.add_argument("--seconds", type=float, default=12, help="new turns start until then")
    parser.add_argument("--think", type=float, nargs=2, default=(0.2, 0.5), metavar="S",
                        help="seconds (min, max) from a turn's end to the next send")  # fmt: skip
    parser.add_argument(
        "--drain",
        type=float,
        default=60,
        help="seconds after --seconds before running turns are cancelled, then for them to end",
    )
    parser.add_argument(
        "--server-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the server process only (experiments)",
    )
    parser.add_argument(
        "--quiet-ping",
        type=float,
        default=20,
        help="seconds without a frame before the client pings (server)",
    )
    parser.add_argument("--warmup", type=float, default=3, help="seconds per path, not shown")
    parser.add_argument("--paths", default=",".join(PATHS), help="of direct,floor,server")
    parser.add_argument("--sessions-per-user", type=int, default=20,
                        help="and CHAT_USER_MAX_RUNNING_TURNS, CHAT_USER_MAX_SOCKETS")  # fmt: skip
    parser.add_argument("--servers", type=int, default=1, help="server processes (scale-out)")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="record the (first) server and the floor (py-spy)")  # fmt: skip
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    args.ns = [int(x) for x in args.sessions.split(",")]
    args.path_list = [p for p in PATHS if p in args.paths.split(",")]
    return args


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that ``finally`` stops the processes


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    ports = {"model": [free_port()], "floor": [free_port()]}
    ports["server"] = [free_port() for _ in range(args.servers)]
    model_url = f"http://{HOST}:{ports['model'][0]}/v1"
    ours = ("CHAT_", "REDIS_", "OPENAI_", "DJANGO_", "DATABASE_", "LOCAL_MODEL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env |= dict(kv.split("=", 1) for kv in PRODUCTION_ENV.split())
    per_user = str(args.sessions_per_user)
    env |= {"DJANGO_SECRET_KEY": secrets.token_urlsafe(48), "PYTHONUNBUFFERED": "1",
            "OPENAI_BASE_URL": model_url, "CHAT_USER_MAX_RUNNING_TURNS": per_user,
            "CHAT_USER_MAX_SOCKETS": str(max(30, args.sessions_per_user))}  # fmt: skip
    logdir = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    pg_admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    pg_admin(f"CREATE DATABASE {DB_NAME}")
    redis.Redis.from_url(REDIS_URL).flushdb()
    procs: list[Proc] = []
    ok = False
    try:
        python = sys.executable
        subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                       env=env, check=True)  # fmt: skip
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.hashers import make_password

        users, user = math.ceil(max(args.ns) / args.sessions_per_user), get_user_model()
        hashed = make_password(PASSWORD)
        user.objects.bulk_create(
            [user(username=f"bench{u}", password=hashed) for u in range(users)]
        )
        from django.db import connections

        connections.close_all()
        floor_env = env | {"STREAM_FLOOR_MODEL_URL": model_url, "PYTHONPATH": str(ROOT / "bench")}
        daphne = [python, "-m", "daphne", "-b", HOST, "-p"]
        server_env = env | dict(kv.split("=", 1) for kv in args.server_env)
        procs += [
            Proc("model", [python, "manage.py", "local_model", "--host", HOST, "--port",
                           str(ports["model"][0]), "--word-delay-ms", str(args.word_delay_ms)],
                 env, logdir, port=ports["model"][0]),
            Proc("floor", [*daphne, str(ports["floor"][0]), "stream_floor:application"],
                 floor_env, logdir, port=ports["floor"][0]),
        ] + [
            Proc("server", [*daphne, str(port), "chatproject.asgi:application"], server_env,
                 logdir, port=port, label=f"server{k + 1}" if args.servers > 1 else "")
            for k, port in enumerate(ports["server"])
        ]  # fmt: skip
        for proc in procs:
            proc.wait_port()
        content = f"/words {args.words}"
        body = {"model": "chatproject-local", "messages": [{"role": "user", "content": content}]}
        answer = httpx2.post(f"{model_url}/chat/completions", json=body, trust_env=False).json()
        expected = answer["choices"][0]["message"]["content"]
        pids: dict[str, list[int]] = {}
        for proc in procs:
            pids.setdefault(proc.name, []).append(proc.popen.pid)
        pids |= {"client": [os.getpid()],
                 "redis": [redis.Redis.from_url(REDIS_URL).info()["process_id"]],
                 "postgres": [postmaster_pid()]}  # fmt: skip
        bench = Bench(args, content, expected, len(expected.split()), model_url, ports, pids)
        t = time.monotonic()
        if "server" in args.path_list:
            with ThreadPoolExecutor(4) as pool:
                bench.cookies = list(pool.map(lambda u: login(ports["server"][0], f"bench{u}"),
                                              range(users)))  # fmt: skip
        print(f"setup: {users} users logged in over HTTP in {time.monotonic() - t:.0f} s; "
              f"logs in {logdir}", file=sys.stderr)  # fmt: skip
        for path in args.path_list if args.warmup else ():  # first requests, imports, pools
            asyncio.run(run_path(bench, min(args.ns), path, args.warmup))
        for n in args.ns:
            for path in args.path_list:
                run = asyncio.run(run_path(bench, n, path, args.seconds))
                bench.runs.append(run)
                print(f"{n:>4} {path:<6} {run.turns:>6} turns {run.tokens:>8} tokens "
                      f"{run.elapsed:5.1f} s  TTFT p50 {pct(run.ttft, 0.5):7.1f} ms",
                      file=sys.stderr)  # fmt: skip
        problems = 0
        for proc in procs[::-1]:
            status = proc.stop()
            log = proc.log.read_text(errors="replace")
            found = log.count("Traceback") + log.count(" ERROR ")
            problems += found
            if found or status not in (0, -signal.SIGTERM):
                print(f"{proc.name}: exit status {status}, {found} tracebacks/errors in its log",
                      file=sys.stderr)  # fmt: skip
        ok = report(bench, problems)
    finally:
        for proc in procs[::-1]:
            proc.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        pg_admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        redis.Redis.from_url(REDIS_URL).flushdb()
        if ok and not args.keep_logs:
            for log in logdir.iterdir():
                log.unlink()
            logdir.rmdir()
        else:
            print(f"server logs kept in {logdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
