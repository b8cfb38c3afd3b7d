"""Session events: per-session sequence numbers, the bounded replay log, and live fan-out.

Every output of a turn or an operation is an event ``{"type": ..., "seq": N, ...}``. ``seq``
is strictly increasing per session across all processes. ``event_publish`` allocates it and
appends the event to the replay log in one atomic step (a Lua script over a Redis Stream
with ``REDIS_URL``; a lock-guarded deque in the embedded single-process default), then sends
it to the session's channel-layer group. So the log holds every seq up to the newest one,
and a consumer that sees ``seq`` jump (the layer reordered or dropped a message) repairs the
gap from the log.

With channels-redis's pub/sub layer on the log's Redis (the production configuration), the
log's script also makes the group send itself: one ``PUBLISH``, in the same round trip, of
the message the layer's subscribers expect (``live_channel``). The layer's own
``group_send`` holds one lock per process around every ``PUBLISH``, so every event of every
session waited for the previous one's round trip: under load an event took hundreds of
milliseconds to go out (docs/performance.md). Any other layer gets ``group_send``.

Events describe state, not increments, so applying one twice is harmless: a text delta names
its message and its character ``offset``; everything else carries the whole object.

Counter loss (Redis restarted, the embedded process restarted): the counter is re-created
from ``ChatSession.last_event_seq`` (written at the start and end of every turn) plus
``SEQ_RESTART_GAP``, so it still only grows; clients see the jump, resume, and get a
snapshot, since the log went with the counter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import uuid
from collections import deque
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.signals import setting_changed
from redis import asyncio as aioredis

from sessions_app import process, store
from sessions_app.infra.db import db_sync_to_async
from sessions_app.infra.lua_batches import ScriptBatches
from sessions_app.infra.redis_clients import redis_client

logger = logging.getLogger(__name__)

# Larger than the number of events a session can emit between two writes of its floor.
SEQ_RESTART_GAP = 1_000_000
# Seconds the log and counter of an idle session are kept in Redis.
LOG_TTL_SECONDS = 7 * 24 * 3600

Event = dict[str, Any]


def group_name(session_id: uuid.UUID | str) -> str:
    return f"chat-session.{session_id}"


def restart_floor(last_event_seq: int) -> int:
    """Where a lost counter restarts: past every seq that may have been handed out."""
    return last_event_seq + SEQ_RESTART_GAP if last_event_seq else 0


class EventLog(Protocol):
    # Whether ``append`` also sends the event to the session's group (else the caller does).
    publishes_live: bool

    async def append(self, session_id: uuid.UUID, event: Event) -> int: ...

    async def since(self, session_id: uuid.UUID, after: int) -> list[Event] | None: ...

    async def head(self, session_id: uuid.UUID) -> int | None: ...

    async def recent(self, session_id: uuid.UUID) -> list[Event]: ...


async def _floor(session_id: uuid.UUID) -> int:
    last = await db_sync_to_async(store.session_event_seq)(session_id=session_id)
    return restart_floor(last)


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
            floor = await _floor(session_id)
            with self._lock:
                self._counters.setdefault(session_id, floor)

    async def append(self, session_id: uuid.UUID, event: Event) -> int:
        payload = json.dumps(event)
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
# with ``"seq"`` added last, as ``json.dumps`` writes it.
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
  local frame = string.sub(ARGV[1], 1, -2) .. ', "seq": ' .. string.format('%d', seq) .. '}'
  redis.call('PUBLISH', ARGV[5],
    cmsgpack.pack({type = 'session.event', seq = seq, frame = frame}))
end
return seq
"""


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

    async def append(self, session_id: uuid.UUID, event: Event) -> int:
        payload = json.dumps(event)
        keys = self._keys(session_id)
        live = "" if self.live_prefix is None else live_channel(self.live_prefix, session_id)
        run = self._appends.run
        seq = int(await run(keys, [payload, self.size, LOG_TTL_SECONDS, "", live]))
        if seq == -1:
            floor = await _floor(session_id)
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
            await self._redis().set(counter, await _floor(session_id), nx=True, ex=LOG_TTL_SECONDS)
            raw = await self._redis().get(counter)
        return int(raw) if raw is not None else None

    async def recent(self, session_id: uuid.UUID) -> list[Event]:
        entries: Any = await self._redis().xrange(self._keys(session_id)[1], "-", "+")
        return [
            {**json.loads(fields[b"e"]), "seq": _entry_seq(entry_id)}
            for entry_id, fields in entries
        ]


PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"


def live_prefix() -> str | None:
    """The channel prefix of the default channel layer when the event log can publish to it
    itself: channels-redis's pub/sub layer on ``REDIS_URL`` alone, with its default
    serializer (msgpack, no encryption). ``None`` for any other layer or configuration."""
    layer = settings.CHANNEL_LAYERS.get("default", {})
    config = layer.get("CONFIG", {})
    hosts = config.get("hosts", [])
    if layer.get("BACKEND") != PUBSUB_LAYER or not settings.REDIS_URL or len(hosts) != 1:
        return None
    address = hosts[0].get("address") if isinstance(hosts[0], dict) else hosts[0]
    if address != settings.REDIS_URL or set(config) - {"hosts", "prefix"}:
        return None  # another Redis, encryption, another serializer, ...: the layer's own way
    return str(config.get("prefix", "asgi"))


def live_channel(prefix: str, session_id: uuid.UUID) -> str:
    """The Redis channel of a session's group in channels-redis's pub/sub layer
    (``RedisPubSubLoopLayer._get_group_channel_name``; tests/test_events.py checks that the
    layer hears it)."""
    return f"{prefix}__group__{group_name(session_id)}"


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


async def event_publish(session_id: uuid.UUID, event_type: str, **fields: Any) -> Event | None:
    """Number an event, log it, and send it to every socket of the session.

    Call after the database change it describes has committed. Never raises for a log or
    layer failure: the database holds the truth, and clients repair what they missed with
    ``resume``. Returns the event as published, or ``None`` when it could not be logged.
    """
    event: Event = {"type": event_type, **fields}
    log = event_log()
    try:
        seq = await log.append(session_id, event)
    except Exception:
        logger.warning(
            "could not log %s event of session %s", event_type, session_id, exc_info=True
        )
        return None
    event["seq"] = seq
    layer = get_channel_layer()
    if layer is not None and not log.publishes_live:
        try:
            # The frame's text is made once here, not once per socket that relays it.
            message = {"type": "session.event", "seq": seq, "frame": json.dumps(event)}
            await layer.group_send(group_name(session_id), message)
        except Exception:
            logger.warning(
                "could not send event %s of session %s live", seq, session_id, exc_info=True
            )
    return event


def event_publish_sync(session_id: uuid.UUID, event_type: str, **fields: Any) -> Event | None:
    """``event_publish`` for synchronous code (the admin, management commands).

    The event goes out from the process's home loop when it has one, so the in-memory layer
    of the embedded default (bound to that loop) delivers it; otherwise from a loop of its
    own in a helper thread, so no database connection of the caller's thread is touched.
    """
    coro = event_publish(session_id, event_type, **fields)
    home = process.home_loop()
    if home is not None and home.is_running():
        return asyncio.run_coroutine_threadsafe(coro, home).result(timeout=30)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


async def events_since(session_id: uuid.UUID, after: int) -> list[Event] | None:
    """The events after ``after`` in order, or ``None`` when only a snapshot can help."""
    try:
        return await event_log().since(session_id, after)
    except Exception:
        logger.warning("could not read the event log of %s", session_id, exc_info=True)
        return None


async def events_recent(session_id: uuid.UUID) -> list[Event]:
    """Whatever the log still holds of a session, oldest first (empty when unreadable)."""
    try:
        return await event_log().recent(session_id)
    except Exception:
        logger.warning("could not read the event log of %s", session_id, exc_info=True)
        return []


async def event_head(session_id: uuid.UUID) -> int:
    """The newest seq of a session (0 when it never had an event in this log's life)."""
    try:
        head = await event_log().head(session_id)
    except Exception:
        logger.warning("could not read the event head of %s", session_id, exc_info=True)
        return 0
    return head or 0


async def event_floor_save(session_id: uuid.UUID, seq: int | None) -> None:
    """Remember ``seq`` in the database, where a lost counter restarts from."""
    if seq is None:
        return
    try:
        await db_sync_to_async(store.session_event_seq_raise)(session_id=session_id, seq=seq)
    except Exception:
        logger.warning("could not save event seq of %s", session_id, exc_info=True)
