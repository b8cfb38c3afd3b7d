"""Limits on what one user or one socket may do (docs/reliability.md#limits).

Every refusal is a ``LimitExceeded`` with a stable code and, where waiting helps, the
seconds to wait (``retry_after``); consumers send it as an ``error`` frame, the API as a 429.

- **Rates** (messages a minute per user, frames a second per socket) count in a moving
  window with the `limits` library: per user in Redis with ``REDIS_URL``, so every process
  shares the count, in memory otherwise; per socket always in memory (a socket lives in
  one process).
- **Sockets per user** are a presence set: each open socket holds an entry that expires
  unless the socket renews it, so a crashed process's sockets stop counting by themselves.
  Redis (a sorted set by expiry, changed by one script) or memory.
- **Concurrency** (running turns, running operations) and **sessions per user** count the
  rows themselves, under a lock of the user's row, where the work starts: ``leases``,
  ``operations``, ``store.session_create``. The checks are here, the locks there.
- **Steps and tokens per turn** are checked by the turn itself (``turn_steps``).

A limiter that cannot reach Redis lets the request through and logs a warning: the limits
guard against abuse, and an outage of Redis must not take the chat down with it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid

from django.conf import settings
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from sessions_app.errors import LimitExceeded
from sessions_app.infra.loop_local import LoopLocal
from sessions_app.infra.lua_batches import ScriptBatches
from sessions_app.infra.redis_clients import redis_client

logger = logging.getLogger(__name__)

# A socket's presence entry lives this long unless renewed (every third of it).
SOCKET_TTL_SECONDS = 60.0

# --- rates ----------------------------------------------------------------------------------

_limiters: LoopLocal[dict[bool, MovingWindowRateLimiter]] = LoopLocal()


def _limiter(*, shared: bool) -> MovingWindowRateLimiter:
    """The running loop's limiter: in Redis when ``shared`` and configured, else in memory.
    Per loop, since the storages' connections and locks belong to one loop."""
    per_loop = _limiters.get(dict)
    limiter = per_loop.get(shared)
    if limiter is None:
        storage: Storage
        if shared and settings.REDIS_URL:
            # The loop's own pool (sessions_app.infra.redis_clients): its timeouts, and callers
            # wait for a connection when all are busy. The storage's default pool raised
            # MaxConnectionsError instead (500 sessions sending at once, the stream bench).
            storage = RedisStorage(
                f"async+{settings.REDIS_URL}",
                implementation="redispy",
                key_prefix=f"{settings.CHAT_CACHE_PREFIX}:limits",
                # A documented option, though the signature types options as scalars.
                connection_pool=redis_client(settings.REDIS_URL).connection_pool,  # type: ignore[arg-type]
            )
        else:
            storage = MemoryStorage()
        limiter = per_loop[shared] = MovingWindowRateLimiter(storage)
    return limiter


async def _hit(item: RateLimitItem, *key: str, shared: bool) -> float | None:
    """Count one request; ``None`` when allowed, else the seconds until one is."""
    limiter = _limiter(shared=shared)
    try:
        if await limiter.hit(item, *key):
            return None
        stats = await limiter.get_window_stats(item, *key)
    except Exception:
        logger.warning("rate limiter unavailable; letting %s through", key[0], exc_info=True)
        return None
    return max(0.1, round(stats.reset_time - time.time(), 1))


def _seconds(retry_after: float) -> str:
    return f"{math.ceil(retry_after)} s"


async def check_message_rate(*, owner_id: int) -> None:
    """Count a message the user sends (any session, any process)."""
    limit = settings.CHAT_USER_MESSAGES_PER_MINUTE
    retry_after = await _hit(RateLimitItemPerMinute(limit), "messages", str(owner_id), shared=True)
    if retry_after is not None:
        raise LimitExceeded(
            "message_rate_limited",
            f"You can send {limit} messages a minute; try again in {_seconds(retry_after)}.",
            retry_after=retry_after,
        )


# --- failed logins ---------------------------------------------------------------------------

# Failed logins are counted over this many minutes, per username and per client address.
LOGIN_WINDOW_MINUTES = 15


def _login_counters(username: str, address: str) -> list[tuple[str, str, RateLimitItem]]:
    """The failed-login counters an attempt meets: (kind, key, window)."""
    return [
        (
            "login-user",
            username.casefold(),
            RateLimitItemPerMinute(settings.CHAT_LOGIN_FAILURES_PER_USER, LOGIN_WINDOW_MINUTES),
        ),
        (
            "login-address",
            address,
            RateLimitItemPerMinute(settings.CHAT_LOGIN_FAILURES_PER_ADDRESS, LOGIN_WINDOW_MINUTES),
        ),
    ]


async def login_refusal(*, username: str, address: str) -> LimitExceeded | None:
    """The refusal of a login attempt, when the username (whoever tries it) or the client
    address (whichever usernames it tries) has failed too often in the last
    ``LOGIN_WINDOW_MINUTES``: then even the right password is refused, or guessing would go
    on. ``None`` when the attempt may go ahead. Counted in Redis with ``REDIS_URL``."""
    limiter = _limiter(shared=True)
    for kind, key, item in _login_counters(username, address):
        try:
            if await limiter.test(item, kind, key):
                continue
            stats = await limiter.get_window_stats(item, kind, key)
        except Exception:
            logger.warning("rate limiter unavailable; letting a login through", exc_info=True)
            return None
        retry_after = max(1.0, math.ceil(stats.reset_time - time.time()))
        whom = "this username" if kind == "login-user" else "this address"
        return LimitExceeded(
            "login_rate_limited",
            f"Too many failed logins for {whom}; try again in {_seconds(retry_after)}.",
            retry_after=retry_after,
        )
    return None


async def login_failed(*, username: str, address: str) -> None:
    """Count a failed login against the username and the client address."""
    for kind, key, item in _login_counters(username, address):
        await _hit(item, kind, key, shared=True)


class FrameRate:
    """The frames-a-second limit of one socket. The first frame refused in a window gets an
    error; the rest of that window's excess is dropped without one (no amplification)."""

    def __init__(self) -> None:
        self.key = uuid.uuid4().hex
        self.item = RateLimitItemPerSecond(settings.CHAT_WS_FRAMES_PER_SECOND)
        self.quiet_until = 0.0
        self.dropped = 0

    async def check(self) -> bool:
        """Count a frame: ``True`` to handle it, ``False`` to drop it silently;
        raises ``LimitExceeded`` for the first refused frame of a window."""
        retry_after = await _hit(self.item, "frames", self.key, shared=False)
        if retry_after is None:
            return True
        now = time.monotonic()
        if now < self.quiet_until:
            self.dropped += 1
            return False
        self.quiet_until = now + retry_after
        limit = settings.CHAT_WS_FRAMES_PER_SECOND
        raise LimitExceeded(
            "frame_rate_limited",
            f"At most {limit} frames a second per socket; this one and any more in the next "
            f"{retry_after:g} s are ignored.",
            retry_after=retry_after,
        )


# --- sockets per user -----------------------------------------------------------------------

# KEYS[1] the user's set; ARGV: now, expiry of the entry, member, limit, ttl in ms.
# Drops expired entries, then adds (or renews) the member unless the set is full.
_SOCKET_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local known = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not known and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

_SOCKET_DROP_SCRIPT = "return redis.call('ZREM', KEYS[1], ARGV[1])"

# The embedded default: user id -> socket id -> expiry (time.time()).
_sockets: dict[int, dict[str, float]] = {}


@functools.cache
def _socket_scripts(url: str) -> tuple[ScriptBatches, ScriptBatches]:
    """The registry's scripts (claim, drop), batched: many sockets opening or closing at once
    share round trips instead of waiting for the loop's pooled connections."""
    return ScriptBatches(url, _SOCKET_SCRIPT), ScriptBatches(url, _SOCKET_DROP_SCRIPT)


def _sockets_key(owner_id: int) -> str:
    return f"{settings.CHAT_CACHE_PREFIX}:sockets:v1:{owner_id}"


async def _socket_claim(owner_id: int, socket_id: str, *, limit: int) -> bool:
    now = time.time()
    expires = now + SOCKET_TTL_SECONDS
    if not settings.REDIS_URL:
        mine = {k: v for k, v in _sockets.get(owner_id, {}).items() if v > now}
        if socket_id not in mine and len(mine) >= limit:
            return False
        mine[socket_id] = expires
        _sockets[owner_id] = mine
        return True
    claim, _drop = _socket_scripts(settings.REDIS_URL)
    try:
        claimed = await claim.run(
            [_sockets_key(owner_id)],
            [now, expires, socket_id, limit, int(SOCKET_TTL_SECONDS * 1000)],
        )
    except Exception:
        logger.warning("socket registry unavailable; letting a socket in", exc_info=True)
        return True
    return bool(claimed)


async def socket_open(*, owner_id: int, socket_id: str) -> None:
    """Count a new socket of the user; refuse it past ``CHAT_USER_MAX_SOCKETS``."""
    limit = settings.CHAT_USER_MAX_SOCKETS
    if not await _socket_claim(owner_id, socket_id, limit=limit):
        raise LimitExceeded(
            "too_many_sockets",
            f"You have {limit} connections open already; close a tab or window and reconnect.",
            retry_after=SOCKET_TTL_SECONDS / 3,
        )


async def socket_renew(*, owner_id: int, socket_id: str) -> None:
    """Keep an open socket counted (it was counted at open, so never refused here)."""
    await _socket_claim(owner_id, socket_id, limit=2**31)


async def socket_close(*, owner_id: int, socket_id: str) -> None:
    if not settings.REDIS_URL:
        mine = _sockets.get(owner_id, {})
        mine.pop(socket_id, None)
        if not mine:
            _sockets.pop(owner_id, None)  # no entry per user who ever connected
        return
    _claim, drop = _socket_scripts(settings.REDIS_URL)
    try:
        await drop.run([_sockets_key(owner_id)], [socket_id])
    except Exception:
        logger.warning("socket registry unavailable; the entry expires by itself", exc_info=True)


# --- counts that the services check under their locks ----------------------------------------


def running_turns_refusal(*, running: int) -> LimitExceeded | None:
    limit = settings.CHAT_USER_MAX_RUNNING_TURNS
    if running < limit:
        return None
    return LimitExceeded(
        "too_many_turns",
        f"You have {running} replies being written in other sessions (the limit is {limit}); "
        "send again when one has finished.",
    )


def operations_refusal(*, in_session: int, of_user: int) -> LimitExceeded | None:
    if in_session >= settings.CHAT_SESSION_MAX_OPERATIONS:
        where, count, limit = "this session", in_session, settings.CHAT_SESSION_MAX_OPERATIONS
    elif of_user >= settings.CHAT_USER_MAX_OPERATIONS:
        where, count, limit = "your sessions", of_user, settings.CHAT_USER_MAX_OPERATIONS
    else:
        return None
    return LimitExceeded(
        "too_many_operations",
        f"{count} background operations are running in {where} (the limit is {limit}); "
        "this one was not started. Ask again when one has finished.",
    )


def sessions_refusal(*, count: int) -> LimitExceeded | None:
    limit = settings.CHAT_USER_MAX_SESSIONS
    if count < limit:
        return None
    return LimitExceeded(
        "too_many_sessions",
        f"You have {count} chats (the limit is {limit}); delete some to start new ones.",
    )
