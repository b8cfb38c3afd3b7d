"""What a server process runs besides requests."""

from __future__ import annotations

from sessions_app.process.lifecycle import (
    DRAIN_TIMEOUT_SECONDS,
    background,
    detached,
    drain,
    draining,
    ensure_started,
    home_loop,
    operation_finished,
    operation_started,
    process_id,
    stop,
    sweep_once,
    worker_wake,
)

__all__ = [
    "DRAIN_TIMEOUT_SECONDS",
    "background",
    "detached",
    "drain",
    "draining",
    "ensure_started",
    "home_loop",
    "operation_finished",
    "operation_started",
    "process_id",
    "stop",
    "sweep_once",
    "worker_wake",
]
