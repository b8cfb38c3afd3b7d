"""channels-redis's pub/sub layer, spoken to directly: the Redis channel of a session's group.

The event log's Lua script publishes each event to the session's group itself, as the
message ``group_send`` would send (msgpack-encoded, as channels-redis's default serializer
does), when the default channel layer is channels-redis's pub/sub layer on ``REDIS_URL``
alone. tests/events/ checks that the real layer hears exactly that, so a change of its
channel names or message format fails there.
"""

from __future__ import annotations

import uuid

from django.conf import settings


def group_name(session_id: uuid.UUID | str) -> str:
    """The channel-layer group of a session's sockets."""
    return f"chat-session.{session_id}"


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
    """The Redis channel of a session's group in channels-redis's pub/sub layer (the name
    its ``RedisPubSubLoopLayer`` gives a group)."""
    return f"{prefix}__group__{group_name(session_id)}"
