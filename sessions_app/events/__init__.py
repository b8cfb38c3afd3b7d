"""Session events: sequence numbers, the replay log and live fan-out."""

from __future__ import annotations

from sessions_app.events.log import (
    LOG_TTL_SECONDS,
    PUBSUB_LAYER,
    SEQ_RESTART_GAP,
    Event,
    EventLog,
    MemoryEventLog,
    RedisEventLog,
    event_floor_save,
    event_head,
    event_log,
    event_publish,
    event_publish_sync,
    events_recent,
    events_since,
    group_name,
    live_channel,
    live_prefix,
    restart_floor,
)

__all__ = [
    "LOG_TTL_SECONDS",
    "PUBSUB_LAYER",
    "SEQ_RESTART_GAP",
    "Event",
    "EventLog",
    "MemoryEventLog",
    "RedisEventLog",
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
    "restart_floor",
]
