"""Soak test: hundreds of websockets chatting for minutes against the production topology.

    .venv/bin/python bench/soak.py --sockets 500 --minutes 10     # docs/reliability.md#soak
    .venv/bin/python bench/soak.py --sockets 40 --minutes 1       # a smoke run

It starts, on private resources (database ``chatproject_soak``, Redis db 11, free ports), the
local scripted model as the model server, two daphne processes and a ``db_worker``, all in the
production configuration, and plays the TLS proxy and the users: 5 tabs (sockets) per user on
3 sessions made with the JSON API; one tab per session sends a message after a think time once
the session is idle; every tab drops its socket at random times, reconnects to the other
server and resumes. Each tab keeps the view docs/protocol.md asks of a client, compared with
the database at the end. It prints memory and CPU per process over time, throughput, errors
and lost or duplicated events, and exits 1 on any of them. The client logic repeats some of
tests/servers.py (``ResumingClient``) on purpose: bench scripts stand alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import math
import os
import random
import re
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import psycopg
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DB_NAME = "chatproject_soak"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/11"
PASSWORD = "soak-password-" + secrets.token_hex(8)
PRODUCTION_ENV = f"""CHAT_PRODUCTION=1 DJANGO_DEBUG=0 DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost
    DJANGO_CSRF_TRUSTED_ORIGINS=https://127.0.0.1 DJANGO_SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/{DB_NAME} REDIS_URL={REDIS_URL}
    CHAT_TASK_WORKER=external OPENAI_API_KEY=soak-test-key CHAT_MODEL=chatproject-local
    DJANGO_SETTINGS_MODULE=chatproject.settings"""
TABS = [(0, True), (0, False), (1, True), (1, False), (2, True)]  # (session, drives) per user
Frame = dict[str, Any]
JSON = "application/json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def sample_pid(pid: int) -> tuple[float, float] | None:
    """(RSS MB, CPU seconds including exited children, i.e. a postmaster's backends)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss / 1024, sum(int(v) for v in stat[11:15]) / os.sysconf("SC_CLK_TCK")


def system_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def service_pids() -> dict[str, int]:
    """The PostgreSQL postmaster and the Redis server (shared: they serve others too)."""
    with psycopg.connect(PG_ADMIN) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    postmaster = int((Path(str(row[0] if row else "")) / "postmaster.pid").read_text().split()[0])
    return {"postgres*": postmaster, "redis*": redis.Redis.from_url(REDIS_URL).info()["process_id"]}


def pg_admin(sql: str) -> Any:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        cursor = conn.execute(sql.encode())
        return cursor.fetchall() if cursor.description else None


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, cmd: str, env: dict[str, str], logdir: Path) -> None:
        self.name, self.log = name, logdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, *cmd.split()], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_port(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                return
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM to the group (daphne drains up to 10 s), SIGKILL 20 s later; the status."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(20)
        return self.popen.wait()


def http_call(port: int, path: str, cookies: dict[str, str], body: bytes, ctype: str) -> bytes:
    """POST; ``cookies`` follows Set-Cookie (kept by hand: they are ``Secure``)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    headers = {"X-Forwarded-Proto": "https", "Origin": f"https://{HOST}:{port}", "Cookie": cookie,
               "Content-Type": ctype, "X-CSRFToken": cookies.get("csrftoken", "")}  # fmt: skip
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        data = response.read()
        for raw in response.msg.get_all("Set-Cookie") or []:
            cookies.update({k: m.value for k, m in SimpleCookie(raw).items()})
        if response.status not in (201, 302):
            raise RuntimeError(f"POST {path}: HTTP {response.status} {data[:300]!r}")
        return data
    finally:
        conn.close()


def login(port: int, username: str) -> dict[str, str]:
    # A double-submit CSRF cookie may be chosen by the client. The login page is not fetched:
    # in production it needs `collectstatic`, which would write into the tree's var/static/.
    cookies = {"csrftoken": secrets.token_hex(16)}
    form = {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": cookies["csrftoken"]}
    body = urllib.parse.urlencode(form).encode()
    http_call(port, "/accounts/login/", cookies, body, "application/x-www-form-urlencoded")
    return cookies


def session_create(port: int, cookies: dict[str, str]) -> str:
    return str(json.loads(http_call(port, "/api/sessions/", cookies, b"{}", JSON))["id"])


# --- the client ---------------------------------------------------------------------------------


@dataclass
class Session:
    id: str
    cookie: str
    finished: dict[str, str] = field(default_factory=dict)  # turn id -> status, from any tab


@dataclass
class Sample:
    t: float  # seconds since the start
    procs: dict[str, tuple[float, float]]  # name -> (RSS MB, CPU seconds)
    machine: tuple[int, int]
    sent: int
    events: int


@dataclass
class Soak:
    args: argparse.Namespace
    ports: list[int]
    pids: dict[str, int]  # sampled: the processes, the client itself, PostgreSQL and Redis
    c: Counter[str] = field(default_factory=Counter)  # counts of everything
    errors: Counter[str] = field(default_factory=Counter)
    limits: Counter[str] = field(default_factory=Counter)  # the error codes of limits
    ack_ms: list[float] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)
    phase: str = "run"  # run -> drain (no new sends, no drops) -> settle (a final ping)
    samples: list[Sample] = field(default_factory=list)

    async def sample_forever(self, t0: float) -> None:
        while True:
            procs = {n: s for n, pid in self.pids.items() if (s := sample_pid(pid)) is not None}
            c, t = self.c, time.monotonic() - t0
            sample = Sample(t, procs, system_cpu(), c["messages sent"], c["events applied"])
            self.samples.append(sample)
            await asyncio.sleep(self.args.sample_seconds)


MESSAGES = [  # (cumulative share, template); the timer's share is --timer-share, first
    (0.15, '/tool calculator {{"expression": "{r} * {n} + 7"}}'),
    (0.20, '/tool current_time {{"timezone": "UTC"}}'),
    (0.55, "/words {r}"),
    (0.65, "Write a short note about trams and rivers {n}"),
    (1.00, "Hello, this is soak message {n}; how are you today?"),
]


def message_for(rng: random.Random, n: int, timer_share: float) -> str:
    share, r = rng.random(), rng.randint(10, 80)
    if share < timer_share:
        return f'/tool timer {{"seconds": {1 + r // 20}, "label": "soak {n}"}}'
    return next(text for limit, text in MESSAGES if share < limit).format(r=r, n=n)


class Tab:
    """One socket (a browser tab) on one session, with the client's view of the session."""

    def __init__(self, soak: Soak, session: Session, index: int, driver: bool) -> None:
        self.soak, self.session, self.driver = soak, session, driver
        self.rng = random.Random(index)
        self.server = index % 2  # where the first connection goes; alternates afterwards
        self.last_seq: int | None = None
        self.messages: dict[int, Frame] = {}
        self.ops: dict[str, Frame] = {}
        self.title, self.running, self.awaiting_turn = "", False, False
        self.seen: set[tuple[str, Any]] = set()  # (event type, key) of one-off events applied
        self.gap_at: float | None = None  # a gap seen and not repaired yet
        self.pending: tuple[str, str] | None = None  # (client_message_id, content) not acked
        self.on_wire, self.final_ping = False, False
        self.retry_at = self.first_sent = 0.0
        self.next_send_at: float | None = None
        self.turn_t0: float | None = None
        self.final_target: int | None = None
        self.sent = self.failures = 0

    async def run(self) -> None:
        while True:
            port = self.soak.ports[self.server % 2]
            self.server += 1
            url = f"ws://{HOST}:{port}/ws/sessions/{self.session.id}/"
            headers = {"Cookie": self.session.cookie, "X-Forwarded-Proto": "https"}
            origin = Origin(f"https://{HOST}:{port}")
            try:
                ws = await connect(url, origin=origin, additional_headers=headers, proxy=None,
                                   open_timeout=30, max_size=None)  # fmt: skip
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.soak.errors[f"handshake: {type(exc).__name__} {exc}"[:70]] += 1
                await self.backoff()
                continue
            self.soak.c["connections"] += 1
            self.on_wire, self.final_ping, self.gap_at = False, False, None
            try:
                await self.send(ws, {"type": "resume", "last_seq": self.last_seq})
                if await self.serve(ws):
                    return await ws.close()
                await asyncio.sleep(self.rng.uniform(0.2, 2.0))  # we dropped it: back soon
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006  # 1006: no close frame
                if code not in (1000, 1001):
                    self.soak.errors[f"closed by the server: {code}"] += 1
                await self.backoff()

    async def backoff(self) -> None:
        """As the web UI does: 0.5 s, 1 s, 2 s ... 30 s with jitter; a ``hello`` resets it."""
        self.failures += 1
        await asyncio.sleep(min(30.0, 0.25 * 2**self.failures) * self.rng.uniform(0.5, 1.5))

    async def send(self, ws: ClientConnection, frame: Frame) -> None:
        await ws.send(json.dumps(frame))

    async def serve(self, ws: ClientConnection) -> bool:
        """Frames until this tab drops the socket (False) or has settled at the end (True)."""
        loop, soak = asyncio.get_running_loop(), self.soak
        drop_at = loop.time() + self.rng.expovariate(1 / soak.args.drop_mean)
        last_frame = loop.time()
        while True:
            now = loop.time()
            if soak.phase == "run" and now >= drop_at:
                ws.transport.abort()  # a network failure: no close frame
                self.soak.c["drops"] += 1
                return False
            if soak.phase == "settle" and not self.final_ping:
                self.final_ping = True
                await self.send(ws, {"type": "ping", "id": "final"})
            if self.final_target is not None and (self.last_seq or 0) >= self.final_target:
                return True
            if self.driver:
                await self.maybe_send(ws, now)
            if self.gap_at is not None and now - self.gap_at > 5:
                self.gap_at = now  # the repair did not come: ask again
                await self.send(ws, {"type": "resume", "last_seq": self.last_seq})
            if now - last_frame > 20:
                last_frame = now  # a quiet socket: is the server ahead of us?
                await self.send(ws, {"type": "ping"})
            with contextlib.suppress(TimeoutError):
                frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                last_frame = loop.time()
                await self.on_frame(ws, frame, last_frame)

    async def maybe_send(self, ws: ClientConnection, now: float) -> None:
        """Send after a think time once the session is idle; resend what was not acked."""
        if self.pending is None:
            active = any(op.get("status") in ("pending", "running") for op in self.ops.values())
            if self.soak.phase != "run" or self.running or self.awaiting_turn or active:
                self.next_send_at = None
                return
            if self.next_send_at is None:  # the first think is spread: no herd at the start
                low, high = self.soak.args.think
                self.next_send_at = now + self.rng.uniform(low if self.sent else 0, high)
            if now < self.next_send_at:
                return
            self.sent += 1
            content = message_for(self.rng, self.sent, self.soak.args.timer_share)
            self.pending, self.next_send_at = (uuid.uuid4().hex, content), None
            self.first_sent = now
        if not self.on_wire and self.soak.phase != "run":  # refused or cut off: too late now
            self.pending = None
            self.soak.c["sends given up at the end"] += 1
        elif not self.on_wire and now >= self.retry_at:
            cid, content = self.pending
            await self.send(ws, {"type": "send", "content": content, "client_message_id": cid})
            self.on_wire = True
            self.soak.c["send frames"] += 1

    async def on_frame(self, ws: ClientConnection, frame: Frame, now: float) -> None:
        c, kind, seq = self.soak.c, frame["type"], frame.get("seq")
        if kind == "snapshot":
            c["snapshots"] += 1
            c["gaps repaired"] += self.gap_at is not None
            self.last_seq, self.gap_at = seq, None
            self.messages = {m["sequence"]: m for m in frame["messages"]}
            self.ops = {op["id"]: op for op in frame["operations"]}
            self.title, self.running = frame["session"]["title"], frame["running"]
            self.awaiting_turn = self.awaiting_turn and self.running
        elif seq is None:
            await self.on_local(ws, frame, now)
        elif self.last_seq is None or seq <= self.last_seq:
            c["repeats ignored"] += 1  # crossed one of our resumes: applied already
        elif seq != self.last_seq + 1:
            c["gap frames"] += 1
            if self.gap_at is None:
                c["gaps"] += 1
                self.gap_at = now
                await self.send(ws, {"type": "resume", "last_seq": self.last_seq})
        else:
            c["gaps repaired"] += self.gap_at is not None
            self.last_seq, self.gap_at = seq, None
            self.apply(frame, now)

    async def on_local(self, ws: ClientConnection, frame: Frame, now: float) -> None:
        c, kind = self.soak.c, frame["type"]
        if kind == "hello":
            self.failures = 0
        elif kind == "ack" and self.pending and frame.get("client_message_id") == self.pending[0]:
            self.soak.ack_ms.append((now - self.first_sent) * 1000)
            c["duplicate acks" if frame["duplicate"] else "messages sent"] += 1
            self.awaiting_turn, self.turn_t0 = not frame["duplicate"], self.first_sent
            self.pending, self.on_wire = None, False
        elif kind == "pong":
            final = frame.get("id") == "final"
            self.final_target = frame["last_seq"] if final else self.final_target
            if frame["last_seq"] > (self.last_seq or 0):  # behind: events on their way, or lost
                c["final resumes" if final else "pong resumes"] += 1
                await self.send(ws, {"type": "resume", "last_seq": self.last_seq})
        elif kind == "error":
            code = frame["code"]
            limited = code.endswith("_limited") or code.startswith("too_many")
            (self.soak.limits if limited else self.soak.errors)[code] += 1
            if self.on_wire:  # the refused frame was our send: send it again later
                self.on_wire, self.retry_at = False, now + max(2.0, frame.get("retry_after") or 0)

    def apply(self, frame: Frame, now: float) -> None:
        c, kind = self.soak.c, frame["type"]
        c["events applied"] += 1
        key = (frame.get("message") or {}).get("sequence") if kind == "message_created" else None
        key = frame.get("turn_id") if kind in ("turn_started", "turn_finished") else key
        key = frame["operation"]["id"] if kind == "operation_started" else key
        if key is not None:  # these happen once per message, turn or operation
            c["duplicated events applied"] += (kind, key) in self.seen
            self.seen.add((kind, key))
        if kind.startswith("operation_"):
            self.ops[frame["operation"]["id"]] = frame["operation"]
        if frame.get("message") and kind != "error":
            self.messages[frame["message"]["sequence"]] = frame["message"]
        elif kind == "text_delta":
            message = self.messages.get(frame["message_sequence"], {})
            content, offset, text = message.get("content") or "", frame["offset"], frame["text"]
            if not message or offset > len(content):
                c["text holes"] += 1
            elif offset + len(text) > len(content):  # else already shown (by a snapshot)
                message["content"] = content + text[len(content) - offset :]
        elif kind == "title_updated":
            self.title = frame["title"]
        elif kind in ("turn_started", "turn_finished"):
            self.running = kind == "turn_started"
            self.awaiting_turn = self.awaiting_turn and self.running
        if kind == "turn_finished":
            self.session.finished[frame["turn_id"]] = frame["status"]
            if self.driver and self.turn_t0 is not None:
                self.soak.turn_ms.append((now - self.turn_t0) * 1000)
                self.turn_t0 = None
        elif kind == "error":
            self.soak.errors[f"error event: {frame.get('code')}"] += 1


def busy_in_db() -> int:
    from sessions_app.models import ChatSession, Operation

    running = ChatSession.objects.filter(turn_id__isnull=False).count()
    return running + Operation.objects.filter(status__in=["pending", "running"]).count()


async def soak_run(soak: Soak, tabs: list[Tab]) -> float:
    """Run the tabs for the soak's duration, then drain and settle; the seconds it ran."""
    t0 = time.monotonic()
    sampler = asyncio.create_task(soak.sample_forever(t0))
    tasks = []
    for tab in tabs:  # ramp up over 10 s rather than 500 handshakes at once
        tasks.append(asyncio.create_task(tab.run()))
        await asyncio.sleep(10 / len(tabs))
    await asyncio.sleep(max(0.0, soak.args.minutes * 60 - (time.monotonic() - t0)))
    elapsed, soak.phase = time.monotonic() - t0, "drain"
    quiet, deadline = 0, time.monotonic() + 300
    while quiet < 2 and time.monotonic() < deadline:  # twice in a row: no turn, no operation
        await asyncio.sleep(2)  # and no send waiting for its ack
        busy = await asyncio.to_thread(busy_in_db) + sum(t.pending is not None for t in tabs)
        quiet = quiet + 1 if busy == 0 else 0
    soak.phase = "settle"
    _, late = await asyncio.wait(tasks, timeout=60)
    soak.c["tabs not settled"] = len(late)
    for task in [*late, sampler]:
        task.cancel()
    await asyncio.gather(*late, sampler, return_exceptions=True)
    return elapsed


def compare_with_db(tabs: list[Tab]) -> Counter[str]:
    """Every stored message exactly as in every view of its session, nothing more."""
    from sessions_app.models import ChatMessage, ChatSession

    out: Counter[str] = Counter()
    titles = {str(k): v for k, v in ChatSession.objects.values_list("id", "title")}
    rows: dict[str, dict[int, tuple[str, str | None, str]]] = {}
    fields = ("session_id", "sequence", "role", "content", "status")
    for sid, seq, role, content, status in ChatMessage.objects.values_list(*fields):
        rows.setdefault(str(sid), {})[seq] = (role, content, status)
    for tab in tabs:
        db = rows.get(tab.session.id, {})
        view = {s: (m["role"], m["content"], m["status"]) for s, m in tab.messages.items()}
        lost = sum(view.get(seq) != row for seq, row in db.items())
        out["lost: a stored message missing or different in a view"] += lost
        out["extra: a message in a view, not stored"] += len(view.keys() - db.keys())
        out["title differs in a view"] += tab.title != titles[tab.session.id]
    return out


def db_totals() -> Counter[str]:
    from sessions_app.models import ChatMessage, Operation

    messages = ChatMessage.objects.values_list("role", "status")
    out = Counter(f"db: {role} messages {status}" for role, status in messages)
    out.update(f"db: operations {st}" for st in Operation.objects.values_list("status", flat=True))
    stat = "SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = "
    (out["db: PostgreSQL connections opened"], out["db: PostgreSQL commits"]), *_ = pg_admin(
        f"{stat}'{DB_NAME}'"
    )
    return out


def grep_logs(procs: list[Proc]) -> Counter[str]:
    """Traceback and ERROR lines per process; WARNING lines by message (numbers masked)."""
    out: Counter[str] = Counter()
    for p in procs:
        for line in p.log.read_text(errors="replace").splitlines():
            if "Traceback" in line or " ERROR " in line:
                out[f"{p.name} log: {'Traceback' if 'Traceback' in line else 'ERROR'}"] += 1
            elif " WARNING " in line:
                text = re.sub(r"[0-9a-f-]{8,}|\d+", "#", line.split(" WARNING ", 1)[1])
                out[f"{p.name} log: WARNING {text[:80]}"] += 1
    return out


def pct(values: list[float], q: float) -> str:
    ordered = sorted(values) or [math.nan]
    return f"{ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]:.0f}"


def report(soak: Soak, tabs: list[Tab], elapsed: float, counts: Counter[str]) -> bool:
    a, s, c, names = soak.args, soak, soak.c, list(soak.pids)
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"\n# Soak: {a.sockets} sockets, {a.minutes:g} min, think {a.think[0]:g}-"
          f"{a.think[1]:g} s, {os.cpu_count()} cores, {when}\n")  # fmt: skip
    head = [f"{n} MB" for n in names] + [f"{n} CPU%" for n in names]
    print("| t (min) | " + " | ".join(head) + " | machine CPU% | msgs/min | events/s |")
    print("|" + " --- |" * (len(head) + 4))
    minute = [math.floor(x.t / 60 + 0.05) for x in soak.samples]  # one row a minute, and the last
    last = len(minute) - 1
    shown = [x for i, x in enumerate(soak.samples) if i in (0, last) or minute[i] > minute[i - 1]]
    for prev, cur in itertools.pairwise([shown[0], *shown]):  # the first row has no rates
        dt, both = cur.t - prev.t or 1.0, cur.procs.keys() & prev.procs.keys()
        cpu = [(cur.procs[n][1] - prev.procs[n][1]) / dt * 100 if n in both else -1 for n in names]
        busy, total = (x - y for x, y in zip(cur.machine, prev.machine, strict=True))
        rates = [busy / max(total, 1) * 100, (cur.sent - prev.sent) / dt * 60]
        rates.append((cur.events - prev.events) / dt)
        rss = [f"{cur.procs[n][0]:.0f}" if n in cur.procs else "-" for n in names]
        values = [f"{r:.0f}" if cur is not prev and r >= 0 else "-" for r in cpu + rates]
        print(f"| {cur.t / 60:.1f} | " + " | ".join(rss + values) + " |")
    warm = next((x for x in soak.samples if x.t >= a.warmup_minutes * 60), soak.samples[0])
    end = soak.samples[-1]
    print(f"\nRSS from t={warm.t / 60:.1f} to t={end.t / 60:.1f} min:\n")
    print("| process | MB then | MB at the end | growth MB | growth % |\n|" + " --- |" * 5)
    for n in [n for n in names if n in warm.procs and n in end.procs]:
        w, e = warm.procs[n][0], end.procs[n][0]
        print(f"| {n} | {w:.0f} | {e:.0f} | {e - w:+.1f} | {(e - w) / w * 100:+.1f} |")
    statuses = Counter(st for tab in tabs if tab.driver for st in tab.session.finished.values())
    print(f"\nThroughput over {elapsed / 60:.1f} min: {c['messages sent']} messages sent "
          f"({c['messages sent'] / elapsed * 60:.0f}/min), turns finished {dict(statuses)}, "
          f"{c['events applied']} events applied ({c['events applied'] / elapsed:.0f}/s); "
          f"send→ack ms p50 {pct(s.ack_ms, .5)} p95 {pct(s.ack_ms, .95)}; send→turn_finished "
          f"ms p50 {pct(s.turn_ms, .5)} p95 {pct(s.turn_ms, .95)}\n")  # fmt: skip
    rows = [*sorted(c.items()), *sorted(counts.items())]
    rows += [(f"error {k}", v) for k, v in sorted(s.errors.items())]
    rows += [(f"limit error {k}", v) for k, v in sorted(s.limits.items())]
    print("| counter | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
    lost = sum(v for k, v in counts.items() if k.startswith(("lost", "extra", "title")))
    failed = lost + sum(s.errors.values()) + sum(s.limits.values()) + sum(
        v for k, v in rows if k in ("duplicated events applied", "text holes", "tabs not settled")
        or k.endswith(("log: Traceback", "log: ERROR")))  # fmt: skip
    print(f"\nlost: {lost}, duplicated: {c['duplicated events applied']}, "
          f"verdict: {'FAIL' if failed else 'PASS'}")  # fmt: skip
    return not failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--think", type=float, nargs=2, default=(60.0, 180.0), metavar="S",
                        help="seconds (min, max) before a driver's next message")  # fmt: skip
    parser.add_argument("--drop-mean", type=float, default=75, help="mean seconds between drops")
    parser.add_argument("--timer-share", type=float, default=0.02, help="share of timer messages")
    parser.add_argument("--word-delay-ms", type=int, default=30, help="the model's pace")
    parser.add_argument("--sample-seconds", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, help="RSS growth from here (default 2)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    args.warmup_minutes = args.warmup_minutes or min(2.0, args.minutes / 3)
    model_port, ports = free_port(), [free_port(), free_port()]
    ours = ("CHAT_", "REDIS_", "OPENAI_", "DJANGO_", "DATABASE_", "LOCAL_MODEL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env |= dict(kv.split("=", 1) for kv in PRODUCTION_ENV.split())
    env |= {"DJANGO_SECRET_KEY": secrets.token_urlsafe(48), "PYTHONUNBUFFERED": "1",
            "OPENAI_BASE_URL": f"http://{HOST}:{model_port}/v1"}  # fmt: skip
    logdir = Path(tempfile.mkdtemp(prefix="soak-"))
    pg_admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    pg_admin(f"CREATE DATABASE {DB_NAME}")
    redis.Redis.from_url(REDIS_URL).flushdb()
    procs: list[Proc] = []
    ok = False
    try:
        migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
        subprocess.run(migrate, cwd=ROOT, env=env, check=True)
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.hashers import make_password

        users, user, hashed = math.ceil(args.sockets / 5), get_user_model(), make_password(PASSWORD)
        user.objects.bulk_create([user(username=f"soak{u}", password=hashed) for u in range(users)])
        commands = {
            "model": f"manage.py local_model --host {HOST} --port {model_port} "
            f"--word-delay-ms {args.word_delay_ms}",
            **{f"daphne{i + 1}": f"-m daphne -b {HOST} -p {port} chatproject.asgi:application"
               for i, port in enumerate(ports)},
            "worker": "manage.py db_worker --no-reload --worker-id soak-1",
        }  # fmt: skip
        procs += [Proc(name, command, env, logdir) for name, command in commands.items()]
        for proc, port in zip(procs, [model_port, *ports], strict=False):
            proc.wait_port(port)
        t = time.monotonic()
        with ThreadPoolExecutor(4) as pool:  # logins alternate: both servers get woken up
            logins = list(pool.map(lambda u: login(ports[u % 2], f"soak{u}"), range(users)))
            ids = pool.map(lambda k: session_create(ports[k % 2], logins[k // 3]), range(users * 3))
            sessions = [Session(sid, f"sessionid={logins[k // 3]['sessionid']}")
                        for k, sid in enumerate(ids)]  # fmt: skip
        print(f"setup: {users} logins, {len(sessions)} sessions over HTTP in "
              f"{time.monotonic() - t:.0f} s")  # fmt: skip
        pids = {p.name: p.popen.pid for p in procs} | {"client": os.getpid()} | service_pids()
        soak = Soak(args, ports, pids)
        tabs = [Tab(soak, sessions[i // 5 * 3 + TABS[i % 5][0]], i, TABS[i % 5][1])
                for i in range(args.sockets)]  # fmt: skip
        elapsed = asyncio.run(soak_run(soak, tabs))
        counts = compare_with_db(tabs)
        counts.update(db_totals())
        from django.db import connections

        connections.close_all()
        for proc in procs[::-1]:  # the model last: turns still running would fail
            soak.c[f"exit status {proc.name}"] = proc.stop()
        counts.update(grep_logs(procs))
        ok = report(soak, tabs, elapsed, counts)
    finally:
        for proc in procs[::-1]:
            proc.stop()
        pg_admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        redis.Redis.from_url(REDIS_URL).flushdb()
        if ok and not args.keep_logs:
            for log in logdir.iterdir():
                log.unlink()
            logdir.rmdir()
        else:
            print(f"server logs kept in {logdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
