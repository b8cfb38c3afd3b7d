"""asyncio Redis clients, one per event loop and URL (a client's pool belongs to its loop)."""

from __future__ import annotations

from redis import asyncio as aioredis

from sessions_app.infra.loop_local import LoopLocal

# Connections a loop's client opens to one Redis at most. More callers than this wait (up
# to POOL_WAIT_SECONDS) for one to come back: redis-py's default pool raised
# MaxConnectionsError instead, which 500 sockets closing at once reached (the stream bench).
POOL_MAX_CONNECTIONS = 100
POOL_WAIT_SECONDS = 2

_clients: LoopLocal[dict[str, aioredis.Redis]] = LoopLocal()


def redis_client(url: str) -> aioredis.Redis:
    """The running loop's client for ``url``: short timeouts, so a dead Redis fails fast."""
    per_loop = _clients.get(dict)
    client = per_loop.get(url)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_MAX_CONNECTIONS,
            timeout=POOL_WAIT_SECONDS,
            socket_connect_timeout=1,
            socket_timeout=2,
            health_check_interval=10,
        )
        client = per_loop[url] = aioredis.Redis(connection_pool=pool)
    return client
