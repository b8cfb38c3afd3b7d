"""Turns: one user message answered by the model, tool rounds included."""

from __future__ import annotations

from sessions_app.turns.start import (
    CONTINUE_WAIT_SECONDS,
    INTERRUPTED_TOOL_RESULT,
    TITLE_PROMPT,
    ServerDraining,
    TurnInProgress,
    TurnStart,
    background_wait,
    control_group,
    turn_cancel,
    turn_cancel_anywhere,
    turn_continue,
    turn_running,
    turn_start,
    turn_wait,
    turns_interrupt_all,
    turns_sweep,
)

__all__ = [
    "CONTINUE_WAIT_SECONDS",
    "INTERRUPTED_TOOL_RESULT",
    "TITLE_PROMPT",
    "ServerDraining",
    "TurnInProgress",
    "TurnStart",
    "background_wait",
    "control_group",
    "turn_cancel",
    "turn_cancel_anywhere",
    "turn_continue",
    "turn_running",
    "turn_start",
    "turn_wait",
    "turns_interrupt_all",
    "turns_sweep",
]
