"""The configured channel layer, on real Redis: Redis pub/sub (channels-redis)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

pytestmark = pytest.mark.redis

# Longer than redis-py 8's default socket timeout (5 s): the redis-py 8 trap.
QUIET_SECONDS = 6.5


async def test_a_receiver_idle_longer_than_redis_socket_timeout_still_receives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket with nothing to hear for over 5 s gets the next message. (channels-redis's
    default layer reads with a blocking BZPOPMIN that redis-py 8 kills after 5 s.)"""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    # A first message proves the pub/sub layer's reader is reading: it always is from then on.
    first = {"type": "chat.event", "seq": 0}
    await layer.send(channel, first)
    assert await asyncio.wait_for(layer.receive(channel), timeout=5) == first
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.wait_for(until_listening(channel), timeout=5)
    # The quiet period, on the loop's clock: what ends after 5 s is a deadline there (redis-py's
    # socket timeout on a pending read). Moved past the quiet period, the clock fires every
    # such deadline at the loop's next turn, before a reply to the send below can be read.
    now = asyncio.get_running_loop().time
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now() + QUIET_SECONDS)
    await layer.send(channel, {"type": "chat.event", "seq": 1})
    assert await asyncio.wait_for(waiting, timeout=5) == {"type": "chat.event", "seq": 1}
    await layer.flush()


async def until_listening(channel: str) -> None:
    """Until Redis holds the request of a receiver of ``channel``, whose read is then in flight:
    the subscription (the pub/sub layer) or a blocked pop (channels-redis's default layer)."""
    probe = redis.asyncio.from_url(settings.REDIS_URL)
    db = str(probe.connection_pool.connection_kwargs.get("db", 0))
    try:
        while True:
            subscribers = dict(await probe.pubsub_numsub(channel)).get(channel.encode(), 0)
            popping = [
                c for c in await probe.client_list() if c["cmd"] == "bzpopmin" and c["db"] == db
            ]
            if subscribers or popping:
                return
            await asyncio.sleep(0.01)
    finally:
        await probe.aclose()


async def test_group_send_reaches_every_member_and_only_them() -> None:
    layer = get_channel_layer()
    first, second, other = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("session-x", first)
    await layer.group_add("session-x", second)
    await layer.group_add("session-y", other)
    await layer.group_send("session-x", {"type": "chat.event", "seq": 7})
    received = await asyncio.gather(
        asyncio.wait_for(layer.receive(first), 5), asyncio.wait_for(layer.receive(second), 5)
    )
    assert received == [{"type": "chat.event", "seq": 7}] * 2
    await layer.group_discard("session-x", second)
    await layer.group_send("session-x", {"type": "chat.event", "seq": 8})
    assert await asyncio.wait_for(layer.receive(first), 5) == {"type": "chat.event", "seq": 8}
    # Pub/sub delivers a process's messages in the order they were published: if seq 8 had
    # reached ``second`` or ``other``, it would come before these markers.
    await layer.group_add("probe", second)
    await layer.group_send("probe", {"type": "chat.event", "seq": 9})
    await layer.group_send("session-y", {"type": "chat.event", "seq": 10})
    assert await asyncio.wait_for(layer.receive(second), 5) == {"type": "chat.event", "seq": 9}
    assert await asyncio.wait_for(layer.receive(other), 5) == {"type": "chat.event", "seq": 10}
    await layer.flush()


def test_layer_uses_the_configured_redis() -> None:
    layer = settings.CHANNEL_LAYERS["default"]
    assert layer["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert isinstance(get_channel_layer(), RedisPubSubChannelLayer)
    assert layer["CONFIG"]["hosts"] == [{"address": settings.REDIS_URL}]
