"""sessions_app.events.log: numbering, the replay log, and live fan-out through the layer."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.test import override_settings

from sessions_app import events, store
from sessions_app.events import frames
from sessions_app.events.log import frame_text

pytestmark = pytest.mark.django_db(transaction=True)

PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"


@pytest.fixture
async def session_id(owner: Any) -> uuid.UUID:
    state = await database_sync_to_async(store.session_create)(owner_id=owner.pk, title="t")
    return state.id


@pytest.mark.redis
async def test_the_logs_script_publishes_what_group_send_would_and_the_layer_hears_it(
    session_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production path: one script appends and publishes; channels-redis's subscriber
    delivers exactly the message ``group_send`` would have (a channels-redis upgrade that
    renamed its group channels or changed its wire format fails here)."""
    layer = get_channel_layer()
    assert events.event_log().publishes_live

    async def not_used(group: str, message: dict[str, Any]) -> None:
        raise AssertionError("group_send called")

    monkeypatch.setattr(layer, "group_send", not_used)
    channel = await layer.new_channel()
    await layer.group_add(events.group_name(session_id), channel)
    text = 'ünïcode "quoted" \\ {braces} ' + "x" * 300  # escapes, multi-byte, > 255 bytes
    delta = frames.TextDelta(message_sequence=2, offset=0, text=text)
    seq = await events.event_publish(session_id, delta)
    assert seq is not None
    received = await asyncio.wait_for(layer.receive(channel), 5)
    frame = frame_text(delta.encode(), seq)
    assert received == {"type": "session.event", "seq": seq, "frame": frame}
    expected = {"type": "text_delta", "message_sequence": 2, "offset": 0, "text": text, "seq": seq}
    assert json.loads(received["frame"]) == expected
    assert await events.events_since(session_id, seq - 1) == [expected]
    await layer.flush()


@pytest.mark.redis
async def test_concurrent_events_arrive_in_seq_order_without_waiting_for_each_other(
    session_id: uuid.UUID,
) -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.group_name(session_id), channel)
    published = await asyncio.gather(
        *(
            events.event_publish(session_id, frames.TitleUpdated(title=f"title {n}"))
            for n in range(100)
        )
    )
    seqs = sorted(seq for seq in published if seq is not None)
    received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(100)]
    # Redis runs the scripts one at a time, so their PUBLISHes reach the subscriber in order.
    assert [m["seq"] for m in received] == seqs == list(range(seqs[0], seqs[0] + 100))
    await layer.flush()


def redis_layer(url: str, **config: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": PUBSUB, "CONFIG": {"hosts": [{"address": url}], **config}}}


@pytest.mark.parametrize(
    ("redis_url", "layers", "expected"),
    [
        ("redis://r:6379/1", redis_layer("redis://r:6379/1"), "asgi"),
        ("redis://r:6379/1", redis_layer("redis://r:6379/1", prefix="p:"), "p:"),
        (
            "redis://r:6379/1",
            {"default": {"BACKEND": PUBSUB, "CONFIG": {"hosts": ["redis://r:6379/1"]}}},
            "asgi",
        ),
        # Anything the script cannot speak for: the layer's own group_send.
        ("redis://r:6379/1", redis_layer("redis://other:6379/1"), None),
        (
            "redis://r:6379/1",
            redis_layer("redis://r:6379/1", symmetric_encryption_keys=["k"]),
            None,
        ),
        ("redis://r:6379/1", redis_layer("redis://r:6379/1", serializer_format="json"), None),
        (
            "redis://r:6379/1",
            {
                "default": {
                    "BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": ["redis://r:6379/1"]},
                }
            },
            None,
        ),
        ("", {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}, None),
    ],
)
def test_live_prefix_only_for_the_pubsub_layer_on_the_logs_redis(
    redis_url: str, layers: dict[str, Any], expected: str | None
) -> None:
    with override_settings(REDIS_URL=redis_url, CHANNEL_LAYERS=layers):
        assert events.live_prefix() == expected


def test_the_embedded_log_leaves_the_group_send_to_the_caller() -> None:
    assert not events.MemoryEventLog(10).publishes_live
