"""The configured channel layer, on real Redis: blocking reads survive redis-py's timeout."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeoutError

pytestmark = pytest.mark.redis

# Longer than both redis-py 8's default socket timeout and channels-redis's 5 s BZPOPMIN.
QUIET_SECONDS = 6.5


async def receive_after_quiet_period(layer: RedisChannelLayer) -> object:
    """Wait on an empty channel for longer than 5 s, then send; return what arrives."""
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    # The quiet period is the condition under test, so it has to be real time.
    done, _ = await asyncio.wait({waiting}, timeout=QUIET_SECONDS)
    if done:
        return waiting.exception() or waiting.result()
    await layer.send(channel, {"type": "chat.event", "seq": 1})
    return await asyncio.wait_for(waiting, timeout=5)


async def test_receive_waits_longer_than_redis_socket_timeout() -> None:
    """A consumer idle for over 5 s still gets the next message (the redis-py 8 trap).

    The same wait on a layer with default host options, run alongside, dies with redis-py's
    timeout: proof that this test can fail.
    """
    configured = get_channel_layer()
    assert isinstance(configured, RedisChannelLayer)
    default = RedisChannelLayer(hosts=[settings.REDIS_URL], prefix="trap-check")
    ours, theirs = await asyncio.gather(
        receive_after_quiet_period(configured), receive_after_quiet_period(default)
    )
    assert ours == {"type": "chat.event", "seq": 1}
    assert isinstance(theirs, RedisTimeoutError)
    await configured.flush()
    await default.flush()


async def test_group_send_reaches_every_member() -> None:
    layer = get_channel_layer()
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("session-x", first)
    await layer.group_add("session-x", second)
    await layer.group_send("session-x", {"type": "chat.event", "seq": 7})
    received = await asyncio.gather(
        asyncio.wait_for(layer.receive(first), 5), asyncio.wait_for(layer.receive(second), 5)
    )
    assert received == [{"type": "chat.event", "seq": 7}] * 2
    await layer.flush()


def test_layer_uses_the_configured_redis() -> None:
    [host] = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]
    assert host == {"address": settings.REDIS_URL, "socket_timeout": None}
