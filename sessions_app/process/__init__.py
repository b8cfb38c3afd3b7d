"""What a server process runs besides requests: its identity, its own tasks, its life.

``tasks`` (who this process is, the tasks it spawns) and ``lifecycle`` (start, sweep, drain,
and the hooks that upper layers register from ``SessionsAppConfig.ready``).
"""

from __future__ import annotations

from sessions_app.process.lifecycle import (
    DRAIN_TIMEOUT_SECONDS,
    background_wait,
    drain,
    ensure_started,
    on_close,
    on_drain,
    on_start,
    on_sweep,
    stop,
    sweep_once,
)
from sessions_app.process.tasks import (
    draining,
    home_loop,
    keep_renewing,
    process_id,
    spawn,
    spawn_service,
    spawn_threadsafe,
)

__all__ = [
    "DRAIN_TIMEOUT_SECONDS",
    "background_wait",
    "drain",
    "draining",
    "ensure_started",
    "home_loop",
    "keep_renewing",
    "on_close",
    "on_drain",
    "on_start",
    "on_sweep",
    "process_id",
    "spawn",
    "spawn_service",
    "spawn_threadsafe",
    "stop",
    "sweep_once",
]
