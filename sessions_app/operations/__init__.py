"""Long-running tool operations.

``service`` (the writes on their rows), ``task`` (the task that runs one, its outcome and
its recovery) and ``worker`` (the in-process worker of the embedded default).
"""

from __future__ import annotations

from sessions_app.operations.service import (
    ACTIVE,
    CRASH_ERROR,
    DUPLICATE_CONTENT,
    EXHAUSTED_ERROR,
    FINISHED,
    PENDING_CONTENT,
    SHUTDOWN_ERROR,
    Recovery,
    arguments_key,
    operation_claim,
    operation_complete,
    operation_create,
    operation_fail,
    operation_get,
    operation_heartbeat,
    operation_queue,
    operation_queued,
    operation_recover,
    operation_retry,
    operations_lost_in_queue,
    operations_of,
    operations_stale,
)
from sessions_app.operations.task import (
    PROGRESS_WRITE_SECONDS,
    FinishedHook,
    on_finished,
    operation_follow_up,
    operations_hand_back,
    operations_sweep,
    publish_outcome,
    publish_outcome_sync,
    publish_recovery,
    run_operation,
)

__all__ = [
    "ACTIVE",
    "CRASH_ERROR",
    "DUPLICATE_CONTENT",
    "EXHAUSTED_ERROR",
    "FINISHED",
    "PENDING_CONTENT",
    "PROGRESS_WRITE_SECONDS",
    "SHUTDOWN_ERROR",
    "FinishedHook",
    "Recovery",
    "arguments_key",
    "on_finished",
    "operation_claim",
    "operation_complete",
    "operation_create",
    "operation_fail",
    "operation_follow_up",
    "operation_get",
    "operation_heartbeat",
    "operation_queue",
    "operation_queued",
    "operation_recover",
    "operation_retry",
    "operations_hand_back",
    "operations_lost_in_queue",
    "operations_of",
    "operations_stale",
    "operations_sweep",
    "publish_outcome",
    "publish_outcome_sync",
    "publish_recovery",
    "run_operation",
]
