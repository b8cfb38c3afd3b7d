"""The per-session event counter and bounded replay log.

``EventLog.append`` gives an event the next ``seq`` of its session and appends it to the
log in one atomic step: a Lua script over a Redis Stream with ``REDIS_URL`` (``seq`` strictly
increasing per session across all processes), a lock-guarded deque in the embedded
single-process default. So the log holds every seq up to the newest one, and a reader that
sees ``seq`` jump can repair the gap from it.

With channels-redis's pub/sub layer on the log's Redis, the script also makes the group send
itself (``channels_redis_live``): one ``PUBLISH`` of the message the layer's subscribers
expect, in the same round trip, instead of the layer's own ``group_send`` (which holds one
lock per process around every ``PUBLISH``).

Counter loss (Redis restarted, the embedded process restarted): the counter is re-created at
the session's *event floor* (``store.event_floor_get``: saved after the first event of a
session, and as each turn ends) plus ``SEQ_RESTART_GAP``, so it still only grows; clients
see the jump, resume, and get a snapshot, since the log went with the counter.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import deque
from typing import Any, Protocol

from django.conf import settings
from django.core.signals import setting_changed
from redis import asyncio as aioredis

from sessions_app import store
from sessions_app.events.channels_redis_live import live_channel, live_prefix
from sessions_app.infra.db import db_sync_to_async
from sessions_app.infra.lua_batches import ScriptBatches
from sessions_app.infra.redis_clients import redis_client

logger = logging.getLogger(__name__)

# Larger than the number of events a session can emit between two writes of its floor.
SEQ_RESTART_GAP = 1_000_000
# Seconds the log and counter of an idle session are kept in Redis.
LOG_TTL_SECONDS = 7 * 24 * 3600

Event = dict[str, Any]


def counter_restart(floor: int) -> int:
    """Where a lost counter restarts: past every seq that may have been handed out since the
    session's event floor was last saved."""
    return floor + SEQ_RESTART_GAP if floor else 0


class EventLog(Protocol):
    # Whether ``append`` also sends the event to the session's group (else the caller does).
    publishes_live: bool

    async def append(self, session_id: uuid.UUID, payload: str) -> int:
        """Log ``payload`` (an event's JSON text, without ``seq``); return its ``seq``."""
        ...

    async def since(self, session_id: uuid.UUID, after: int) -> list[Event] | None: ...

    async def head(self, session_id: uuid.UUID) -> int | None: ...

    async def recent(self, session_id: uuid.UUID) -> list[Event]: ...


async def _restart_at(session_id: uuid.UUID) -> int:
    floor = await db_sync_to_async(store.event_floor_get)(session_id=session_id)
    return counter_restart(floor)


class MemoryEventLog:
    """The embedded default: one process, so a dict of deques under a lock is the log."""

    publishes_live = False

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._counters: dict[uuid.UUID, int] = {}
        self._logs: dict[uuid.UUID, deque[tuple[int, str]]] = {}

    async def _counter_ready(self, session_id: uuid.UUID) -> None:
        """Create the session's counter at its restart floor the first time it is needed."""
        if session_id not in self._counters:
            floor = await _restart_at(session_id)
            with self._lock:
                self._counters.setdefault(session_id, floor)

    async def append(self, session_id: uuid.UUID, payload: str) -> int:
        await self._counter_ready(session_id)
        with self._lock:
            seq = self._counters[session_id] + 1
            self._counters[session_id] = seq
            log = self._logs.setdefault(session_id, deque(maxlen=self.size))
            log.append((seq, payload))
        return seq

    async def since(self, session_id: uuid.UUID, after: int) -> list[Event] | None:
        with self._lock:
            head = self._counters.get(session_id)
            entries = list(self._logs.get(session_id, ()))
        first = entries[0][0] if entries else None
        return _select(after, head, first, entries)

    async def head(self, session_id: uuid.UUID) -> int | None:
        await self._counter_ready(session_id)
        with self._lock:
            return self._counters.get(session_id)

    async def recent(self, session_id: uuid.UUID) -> list[Event]:
        with self._lock:
            entries = list(self._logs.get(session_id, ()))
        return [{**json.loads(payload), "seq": seq} for seq, payload in entries]


def _select(
    after: int, head: int | None, first: int | None, entries: list[tuple[int, str]]
) -> list[Event] | None:
    """The events of ``entries`` after ``after``, or ``None`` when the log cannot say: no
    counter, a cursor from another life of it, or one older than the log's ``first`` seq."""
    if head is None or after > head or after < 0:
        return None
    if after == head:
        return []
    if first is None or first > after + 1:
        return None
    return [{**json.loads(payload), "seq": seq} for seq, payload in entries if seq > after]


# KEYS: counter, stream. ARGV: payload, maxlen, ttl, floor ("" = ask the caller for one),
# live channel ("" = none). Returns the new seq, or -1 when the counter is missing and no
# floor was given. The live message is what ``event_publish`` would hand ``group_send``,
# msgpack-encoded as channels-redis's default serializer does; its frame is the payload
# with ``"seq"`` added last (``frame_text``).
_APPEND_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[4] == '' then return -1 end
  local start = tonumber(ARGV[4])
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if last[1] then
    local top = tonumber(string.match(last[1][1], '^(%d+)'))
    if top > start then start = top end
  end
  redis.call('SET', KEYS[1], start)
end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-1', 'e', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[5] ~= '' then
  local frame = string.sub(ARGV[1], 1, -2) .. ',"seq":' .. string.format('%d', seq) .. '}'
  redis.call('PUBLISH', ARGV[5],
    cmsgpack.pack({type = 'session.event', seq = seq, frame = frame}))
end
return seq
"""


def frame_text(payload: str, seq: int) -> str:
    """The frame of a logged event: its payload with ``"seq"`` added last (what the append
    script publishes, too)."""
    return f'{payload[:-1]},"seq":{seq}}}'


def _entry_seq(entry_id: bytes) -> int:
    """The seq of a Stream entry: its id is ``<seq>-1``."""
    return int(entry_id.split(b"-")[0])


class RedisEventLog:
    """Production: a Redis Stream per session whose entry ids are ``<seq>-1``. With
    ``live_prefix`` (``live_prefix()``), ``append`` publishes each event to its session's
    group of channels-redis's pub/sub layer as well."""

    def __init__(self, url: str, size: int, live_prefix: str | None = None) -> None:
        self.url = url
        self.size = size
        self.live_prefix = live_prefix
        self.publishes_live = live_prefix is not None
        # Called with EVALSHA (the text travels again only after Redis forgot it), the
        # concurrent appends of a loop in one round trip.
        self._appends = ScriptBatches(url, _APPEND_SCRIPT)

    def _redis(self) -> aioredis.Redis:
        return redis_client(self.url)

    def _keys(self, session_id: uuid.UUID) -> list[str]:
        base = f"{settings.CHAT_CACHE_PREFIX}:events:v1:{session_id}"
        return [f"{base}:seq", f"{base}:log"]

    async def append(self, session_id: uuid.UUID, payload: str) -> int:
        keys = self._keys(session_id)
        live = "" if self.live_prefix is None else live_channel(self.live_prefix, session_id)
        run = self._appends.run
        seq = int(await run(keys, [payload, self.size, LOG_TTL_SECONDS, "", live]))
        if seq == -1:
            floor = await _restart_at(session_id)
            seq = int(await run(keys, [payload, self.size, LOG_TTL_SECONDS, floor, live]))
        return seq

    async def since(self, session_id: uuid.UUID, after: int) -> list[Event] | None:
        counter, stream = self._keys(session_id)
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.get(counter)
            pipe.xrange(stream, f"{after + 1}-0", "+")
            # The log's first entry, so ``_select`` can tell "too old" from "nothing".
            pipe.xrange(stream, "-", "+", count=1)
            raw_head, raw_entries, raw_first = await pipe.execute()
        head = int(raw_head) if raw_head is not None else None
        first = _entry_seq(raw_first[0][0]) if raw_first else None
        entries = [(_entry_seq(entry_id), fields[b"e"]) for entry_id, fields in raw_entries]
        return _select(after, head, first, entries)

    async def head(self, session_id: uuid.UUID) -> int | None:
        counter = self._keys(session_id)[0]
        raw = await self._redis().get(counter)
        if raw is None:
            # A counter lost with Redis restarts past every seq it may have handed out, so
            # a snapshot stated at the head never goes back behind a client's cursor.
            await self._redis().set(
                counter, await _restart_at(session_id), nx=True, ex=LOG_TTL_SECONDS
            )
            raw = await self._redis().get(counter)
        return int(raw) if raw is not None else None

    async def recent(self, session_id: uuid.UUID) -> list[Event]:
        entries: Any = await self._redis().xrange(self._keys(session_id)[1], "-", "+")
        return [
            {**json.loads(fields[b"e"]), "seq": _entry_seq(entry_id)}
            for entry_id, fields in entries
        ]


_log: EventLog | None = None


def event_log() -> EventLog:
    global _log
    if _log is None:
        size = settings.CHAT_EVENT_LOG_SIZE
        _log = (
            RedisEventLog(settings.REDIS_URL, size, live_prefix())
            if settings.REDIS_URL
            else MemoryEventLog(size)
        )
    return _log


def _reset_log(*, setting: str, **kwargs: Any) -> None:
    global _log
    if setting in ("REDIS_URL", "CHAT_EVENT_LOG_SIZE", "CHAT_CACHE_PREFIX", "CHANNEL_LAYERS"):
        _log = None


setting_changed.connect(_reset_log)
