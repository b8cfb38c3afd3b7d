"""Session events: numbered, logged, sent live, read back.

``log`` (the per-session counter and replay log), ``publish`` (publishing and reading),
``frames`` (the shapes the server sends) and ``channels_redis_live`` (channels-redis's
pub/sub layer spoken to directly).
"""

from __future__ import annotations

from sessions_app.events.channels_redis_live import (
    PUBSUB_LAYER,
    group_name,
    live_channel,
    live_prefix,
)
from sessions_app.events.frames import (
    message_out,
    operation_out,
)
from sessions_app.events.log import (
    LOG_TTL_SECONDS,
    SEQ_RESTART_GAP,
    Event,
    EventLog,
    MemoryEventLog,
    RedisEventLog,
    counter_restart,
    event_log,
)
from sessions_app.events.publish import (
    event_floor_save,
    event_head,
    event_publish,
    event_publish_sync,
    events_recent,
    events_since,
)

__all__ = [
    "LOG_TTL_SECONDS",
    "PUBSUB_LAYER",
    "SEQ_RESTART_GAP",
    "Event",
    "EventLog",
    "MemoryEventLog",
    "RedisEventLog",
    "counter_restart",
    "event_floor_save",
    "event_head",
    "event_log",
    "event_publish",
    "event_publish_sync",
    "events_recent",
    "events_since",
    "group_name",
    "live_channel",
    "live_prefix",
    "message_out",
    "operation_out",
]
