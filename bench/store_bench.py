"""Session store benchmark: append cost and load time against history length.

Run from the repository root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatproject_bench \\
    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/store_bench.py

    .venv/bin/python bench/store_bench.py --embedded      # SQLite + local memory

Only the public store services are called (``store.session_create``,
``store.messages_append``, ``store.session_get``, ``store.session_cache_invalidate``,
``store.session_delete``). Measurements for different history lengths are interleaved in
rounds, so a burst of noise on a shared machine hits every length alike.

Isolation, so the app's data is never touched:

- PostgreSQL: the server and credentials of ``DATABASE_URL`` but always the database
  ``--bench-db`` (default ``chatproject_bench``, whatever ``DATABASE_URL`` names). It is
  created and migrated when missing and dropped at the end if this run created it (kept with
  ``--keep-db``); an existing one is reused and kept. Either way the run deletes its own
  sessions and user.
- Redis: the server and db number of ``REDIS_URL``, under a key prefix of this run only
  (``chatproject-bench-<pid>``); every key under it is deleted at the end.
- ``--embedded``: an SQLite file in a fresh directory under ``var/`` (removed at the end) and
  the process-local memory cache; ``DATABASE_URL`` and ``REDIS_URL`` are ignored.

Django runs with ``DEBUG`` off, as in production, so timed calls do not log their SQL;
queries and cache calls are counted in separate, untimed calls.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
# As given, for the command line shown in the report (``configure`` rewrites them).
ORIGINAL_ENV = {k: os.environ[k] for k in ("DATABASE_URL", "REDIS_URL") if k in os.environ}
POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql"}
INSTRUMENTED_CALLS = 5  # untimed calls per length that count SQL queries and cache traffic
FILLER = (
    "The quick brown fox jumps over the lazy dog while the assistant explains the answer "
    "step by step, citing the tool output and keeping every figure it was given. "
)


def fail(message: str) -> None:
    print(f"store_bench: {message}", file=sys.stderr)
    raise SystemExit(2)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


# --- configuration, before Django starts ---------------------------------------------------


@dataclass
class Target:
    embedded: bool
    description: list[str]
    bench_db: str = ""
    admin_url: str = ""  # maintenance database of the PostgreSQL server
    created_db: bool = False
    sqlite_dir: Path | None = None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="10,100,1000,5000", help="history lengths")
    parser.add_argument("--appends", type=int, default=200, help="timed appends per length")
    parser.add_argument("--loads", type=int, default=30, help="timed loads per length and kind")
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    parser.add_argument("--batch", type=int, default=500, help="messages per building append")
    parser.add_argument("--embedded", action="store_true", help="SQLite + local-memory cache")
    parser.add_argument("--bench-db", default="chatproject_bench", help="PostgreSQL database")
    parser.add_argument("--keep-db", action="store_true", help="do not drop what this run made")
    args = parser.parse_args()
    try:
        args.length_list = sorted({int(item) for item in args.lengths.split(",") if item.strip()})
    except ValueError:
        fail(f"--lengths must be a comma-separated list of integers; got {args.lengths!r}")
    if not args.length_list or min(args.length_list) < 1:
        fail("--lengths needs at least one length, each at least 1")
    for name in ("appends", "loads", "rounds", "batch"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be at least 1")
    if "bench" not in args.bench_db:
        fail(f"--bench-db must contain 'bench' so it cannot be an app database: {args.bench_db!r}")
    return args


def configure(args: argparse.Namespace) -> Target:
    """Point the environment at the bench's own database and cache namespace."""
    prefix = f"chatproject-bench-{os.getpid()}"
    os.environ["CHAT_CACHE_PREFIX"] = prefix
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"
    if args.embedded:
        (ROOT / "var").mkdir(exist_ok=True)
        sqlite_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / "var"))
        fate = "kept (--keep-db)" if args.keep_db else "removed at the end"
        os.environ["DATABASE_URL"] = f"sqlite:///{sqlite_dir / 'bench.sqlite3'}"
        os.environ.pop("REDIS_URL", None)
        return Target(
            embedded=True,
            sqlite_dir=sqlite_dir,
            description=[
                f"database  SQLite file {sqlite_dir / 'bench.sqlite3'} ({fate})",
                f"cache     local memory, key prefix {prefix}",
            ],
        )
    db_url = os.environ.get("DATABASE_URL", "").strip()
    redis_url = os.environ.get("REDIS_URL", "").strip()
    if not db_url or not redis_url:
        fail(
            "this benchmark measures PostgreSQL + Redis: set DATABASE_URL=postgres://… and "
            "REDIS_URL=redis://…, or pass --embedded to measure SQLite + local memory"
        )
    parts = urlsplit(db_url)
    if parts.scheme.lower() not in POSTGRES_SCHEMES:
        fail(f"DATABASE_URL must be a postgres:// URL (or use --embedded); got {redact(db_url)}")
    named = parts.path.lstrip("/")
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{args.bench_db}"))
    admin_url = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    note = "" if named == args.bench_db else f"; {named or '(none)'!r} is not touched"
    return Target(
        embedded=False,
        bench_db=args.bench_db,
        admin_url=admin_url,
        description=[
            f"database  PostgreSQL {parts.hostname}:{parts.port or 5432}/{args.bench_db}{note}",
            f"cache     Redis {redact(redis_url)}, key prefix {prefix} (deleted at the end)",
        ],
    )


def create_database(target: Target, *, keep: bool) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(target.admin_url, autocommit=True, connect_timeout=5) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [target.bench_db]
            ).fetchone()
            if found is None:
                try:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.bench_db))
                    )
                    target.created_db = True
                except psycopg.errors.DuplicateDatabase:
                    pass  # another run created it meanwhile: reuse it
    except psycopg.OperationalError as exc:
        fail(f"cannot reach PostgreSQL to create {target.bench_db!r}: {exc}")
    if not target.created_db:
        fate = "existed: reused and kept"
    else:
        fate = "created: kept (--keep-db)" if keep else "created: dropped at the end"
    target.description[0] += f" ({fate})"


def drop_database(target: Target) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(target.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(target.bench_db)))
    except psycopg.Error as exc:
        print(f"warning: could not drop {target.bench_db!r}: {exc}", file=sys.stderr)


# --- measuring tools ----------------------------------------------------------------------


@dataclass
class CacheTraffic:
    calls: int = 0
    keys_written: int = 0
    bytes_written: int = 0


def _size(value: Any) -> int:
    if isinstance(value, bytes):
        return len(value)
    return len(str(value).encode())


CACHE_METHODS = ("get", "get_many", "set", "set_many", "add", "incr", "delete", "delete_many")


@contextmanager
def cache_spy() -> Iterator[CacheTraffic]:
    """Count calls on the cache backend and the value bytes handed to set/add/set_many.

    Bytes are those of the values as the store passes them (JSON text), before the
    backend's own serialisation. Calls one backend method makes to another are not counted.
    """
    from django.core.cache import caches

    backend = caches["default"]
    traffic = CacheTraffic()
    depth = 0

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any, **kwargs: Any) -> Any:
            nonlocal depth
            if depth == 0:
                traffic.calls += 1
                if name in ("set", "add"):
                    traffic.keys_written += 1
                    traffic.bytes_written += _size(args[1] if len(args) > 1 else kwargs["value"])
                elif name == "set_many":
                    data = args[0] if args else kwargs["data"]
                    traffic.keys_written += len(data)
                    traffic.bytes_written += sum(_size(v) for v in data.values())
            depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth -= 1

        return spy

    for name in CACHE_METHODS:
        setattr(backend, name, wrap(name, getattr(backend, name)))
    # django-redis: the store's writes after a commit (the generation's incr and the
    # messages' set) go on one pipeline past the backend (session_cache.messages_written);
    # counted here as the two calls they are.
    from sessions_app.store import cache as session_cache

    written = session_cache.messages_written

    def written_spy(session_id: Any, messages: Any) -> None:
        messages = list(messages)
        traffic.calls += 2
        traffic.keys_written += len(messages)
        traffic.bytes_written += sum(_size(m.model_dump_json()) for m in messages)
        written(session_id, messages)

    pipelined = hasattr(backend, "_client")
    if pipelined:
        session_cache.messages_written = written_spy  # type: ignore[assignment]
    try:
        yield traffic
    finally:
        for name in CACHE_METHODS:
            delattr(backend, name)  # the class's method shows through again
        session_cache.messages_written = written  # type: ignore[assignment]


@dataclass
class Counted:
    queries: float
    cache_calls: float
    cache_bytes: float


def counted(call: Callable[[], Any], times: int) -> Counted:
    """SQL statements, cache calls and cache bytes per call, averaged over ``times`` calls."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    queries = calls = written = 0
    for _ in range(times):
        with CaptureQueriesContext(connection) as captured, cache_spy() as traffic:
            call()
        queries += len(captured.captured_queries)
        calls += traffic.calls
        written += traffic.bytes_written
    return Counted(queries / times, calls / times, written / times)


def timed_ns(call: Callable[[], Any]) -> int:
    start = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - start


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def split(total: int, rounds: int) -> list[int]:
    """``total`` spread over ``rounds`` as evenly as possible."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def rotated(items: list[int], by: int) -> list[int]:
    by %= len(items)
    return items[by:] + items[:by]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


# --- the workload -------------------------------------------------------------------------


def history_message(index: int) -> Any:
    """Message ``index`` of a built history: user, tool call, tool result, answer, ..."""
    from sessions_app.schemas import ChatMessageData

    kind = index % 4
    if kind == 0:
        return ChatMessageData(role="user", content=f"Question {index}: " + FILLER[:180])
    if kind == 1:
        arguments = json.dumps({"query": f"topic {index}", "limit": 5})
        call = {"id": f"call_{index}", "type": "function"}
        call["function"] = {"name": "search", "arguments": arguments}  # type: ignore[assignment]
        return ChatMessageData(role="assistant", content=None, tool_calls=[call])
    if kind == 2:
        return ChatMessageData(
            role="tool", tool_call_id=f"call_{index - 1}", content=(FILLER * 3)[:400]
        )
    return ChatMessageData(role="assistant", content=f"Answer {index}: " + (FILLER * 3)[:380])


def appended_message() -> Any:
    from sessions_app.schemas import ChatMessageData

    return ChatMessageData(role="user", content="Follow-up: " + FILLER[:190])


def build_session(owner_id: int, length: int, batch: int) -> uuid.UUID:
    from sessions_app import store

    state = store.session_create(owner_id=owner_id, title=f"bench {length}")
    for start in range(0, length, batch):
        messages = [history_message(i) for i in range(start, min(length, start + batch))]
        store.messages_append(session_id=state.id, messages=messages)
    return state.id


@dataclass
class LoadResult:
    length: int
    warm_ms: list[float]
    cold_ms: list[float]
    warm: Counted
    cold: Counted


@dataclass
class AppendResult:
    length: int
    us: list[float]
    counted: Counted


def measure_loads(sessions: dict[int, uuid.UUID], loads: int, rounds: int) -> dict[int, LoadResult]:
    """session_get from a warm cache, and after session_cache_invalidate (untimed)."""
    from sessions_app import store

    def get(sid: uuid.UUID) -> Callable[[], Any]:
        return lambda: store.session_get(session_id=sid)

    results: dict[int, LoadResult] = {}
    for length, sid in sessions.items():
        got = store.session_get(session_id=sid)
        if len(got.messages) != length:
            raise RuntimeError(f"session of {length} loaded {len(got.messages)} messages")
        store.session_cache_invalidate(session_id=sid)
        cold_counts = counted(get(sid), 1)
        warm_counts = counted(get(sid), 1)
        results[length] = LoadResult(length, [], [], warm_counts, cold_counts)
    lengths = list(sessions)
    for number, chunk in enumerate(split(loads, min(rounds, loads))):
        for length in rotated(lengths, number):
            sid, result = sessions[length], results[length]
            store.session_get(session_id=sid)
            gc.collect()
            for _ in range(chunk):
                result.warm_ms.append(timed_ns(get(sid)) / 1e6)
            for _ in range(chunk):
                store.session_cache_invalidate(session_id=sid)
                result.cold_ms.append(timed_ns(get(sid)) / 1e6)
    return results


def measure_appends(
    sessions: dict[int, uuid.UUID], appends: int, rounds: int
) -> dict[int, AppendResult]:
    """Single-message messages_append on a session whose cache is warm."""
    from sessions_app import store

    def append(sid: uuid.UUID) -> Callable[[], Any]:
        return lambda: store.messages_append(session_id=sid, messages=[appended_message()])

    results: dict[int, AppendResult] = {}
    for length, sid in sessions.items():
        store.session_get(session_id=sid)
        results[length] = AppendResult(length, [], counted(append(sid), INSTRUMENTED_CALLS))
    lengths = list(sessions)
    for number, chunk in enumerate(split(appends, min(rounds, appends))):
        for length in rotated(lengths, number):
            sid, result = sessions[length], results[length]
            store.session_get(session_id=sid)  # warm: the appends below start from it
            gc.collect()
            for _ in range(chunk):
                result.us.append(timed_ns(append(sid)) / 1e3)
    return results


# --- report -------------------------------------------------------------------------------


def environment(target: Target) -> list[str]:
    import django
    from django.conf import settings
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            database = f"PostgreSQL {cursor.fetchone()[0]}"
    else:
        import sqlite3

        database = f"SQLite {sqlite3.sqlite_version}"
    if settings.REDIS_URL:
        from django_redis import get_redis_connection

        cache = f"Redis {get_redis_connection('default').info('server')['redis_version']}"
    else:
        cache = "Django local-memory cache"
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    shown_env = [f"{name}={shlex.quote(redact(value))}" for name, value in ORIGINAL_ENV.items()]
    command = " ".join([*shown_env, shlex.join(getattr(sys, "orig_argv", sys.argv))])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"command   {command}",
        f"python    {platform.python_implementation()} {platform.python_version()}",
        f"django    {django.get_version()} (DEBUG={settings.DEBUG})",
        f"server    {database}; {cache}",
        *target.description,
        f"machine   {platform.machine()}, {cpus} CPUs ({usable} usable), {platform.platform()}",
        f"load avg  {load} at start",
    ]


def report(
    loads: dict[int, LoadResult], appends: dict[int, AppendResult], args: argparse.Namespace
) -> None:
    first = min(appends)
    base = statistics.median(appends[first].us)
    heads = "history|n|median us|p90 us|mean us|ratio|SQL/append|cache calls|cache bytes"
    rows = [
        [f"{length:,}", f"{len(r.us)}"]
        + [f"{v:,.0f}" for v in (statistics.median(r.us), percentile(r.us, 90), fmean(r.us))]
        + [f"{statistics.median(r.us) / base:.2f}"]
        + [f"{r.counted.queries:g}", f"{r.counted.cache_calls:g}", f"{r.counted.cache_bytes:,.0f}"]
        for length, r in appends.items()
    ]
    print(f"\nAppend: one message per messages_append call, cache warm ({args.appends} per length)")
    print(table(heads.split("|"), rows))
    print(
        f"history: messages the session was built with; {INSTRUMENTED_CALLS} untimed appends, "
        f"then the timed ones, add one each. ratio: median / median at {first:,}. SQL "
        f"statements, cache backend calls and bytes (JSON values written) per append: mean of "
        f"the {INSTRUMENTED_CALLS} untimed appends."
    )
    heads = "history|n|cache med ms|cache p90|db med ms|db p90|speed-up|SQL c/db|calls c/db"
    rows = []
    for length, r in loads.items():
        warm, cold = statistics.median(r.warm_ms), statistics.median(r.cold_ms)
        rows.append(
            [f"{length:,}", f"{len(r.warm_ms)}"]
            + [f"{v:,.2f}" for v in (warm, percentile(r.warm_ms, 90), cold)]
            + [f"{percentile(r.cold_ms, 90):,.2f}", f"{cold / warm:.1f}"]
            + [f"{r.warm.queries:g}/{r.cold.queries:g}"]
            + [f"{r.warm.cache_calls:g}/{r.cold.cache_calls:g}"]
        )
    print(f"\nLoad: session_get of the whole session ({args.loads} per length and kind)")
    print(table(heads.split("|"), rows))
    print(
        "cache: every entry warm. db: session_cache_invalidate (untimed) before each read, so "
        "the read loads the database and back-fills the cache. speed-up: db median / cache "
        "median. SQL and cache backend calls: cache read / db read (on Redis the back-fill "
        "is one pipelined round trip of SET NX that bypasses the backend and is not counted; "
        "an append's two calls go in one pipelined round trip)."
    )
    top = max(appends)
    ratio = statistics.median(appends[top].us) / base
    verdict = "within" if ratio <= 1.5 else "NOT within"
    print(f"\nappend median at {top:,} / at {first:,}: {ratio:.2f} ({verdict} 1.5x)")


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    started = time.monotonic()
    args = parse_args()
    target = configure(args)
    sys.path.insert(0, str(ROOT))
    if not target.embedded:
        create_database(target, keep=args.keep_db)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection, connections

    from sessions_app import store

    owner: Any = None
    sessions: dict[int, uuid.UUID] = {}
    try:
        call_command("migrate", verbosity=0, interactive=False)
        for line in environment(target):
            print(line)
        print(
            f"options   lengths={','.join(map(str, args.length_list))} appends={args.appends} "
            f"loads={args.loads} rounds={args.rounds} batch={args.batch}",
            flush=True,
        )
        owner = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:12]}")
        building = time.monotonic()
        for length in args.length_list:
            sessions[length] = build_session(owner.pk, length, args.batch)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # planner statistics, as autovacuum would have them
        print(
            f"built     {len(sessions)} sessions in {time.monotonic() - building:.1f} s", flush=True
        )
        loads = measure_loads(sessions, args.loads, args.rounds)
        appends = measure_appends(sessions, args.appends, args.rounds)
        report(loads, appends, args)
    finally:
        try:
            for sid in sessions.values():
                store.session_delete(session_id=sid, owner_id=owner.pk)
            if owner is not None:
                owner.delete()
            if hasattr(cache, "delete_pattern"):
                cache.delete_pattern("*")  # only the keys under this run's prefix
            else:
                cache.clear()  # local memory: private to this process
        finally:
            connections.close_all()
            if target.created_db and not args.keep_db:
                drop_database(target)
            if target.sqlite_dir is not None and not args.keep_db:
                shutil.rmtree(target.sqlite_dir, ignore_errors=True)
    print(f"total     {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
