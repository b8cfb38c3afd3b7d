"""asyncio Redis clients, one per event loop and URL (a client's pool belongs to its loop)."""

from __future__ import annotations

from redis import asyncio as aioredis

from sessions_app.loop_local import LoopLocal

_clients: LoopLocal[dict[str, aioredis.Redis]] = LoopLocal()


def redis_client(url: str) -> aioredis.Redis:
    """The running loop's client for ``url``: short timeouts, so a dead Redis fails fast."""
    per_loop = _clients.get(dict)
    client = per_loop.get(url)
    if client is None:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=1, socket_timeout=2, health_check_interval=10
        )
        per_loop[url] = client
    return client
