"""Turns: one user message (or a finished operation) answered by the model, tool rounds included.

``start`` (store the message, take the lease, start), ``runner`` (run it to its end),
``text_stream`` (a model call streamed into a message), ``cancel`` (from any process),
``registry`` (the turns of this process), ``recovery`` (turns whose process died),
``titles`` and ``followups`` (work a turn leaves behind).
"""

from __future__ import annotations

from sessions_app.turns.cancel import control_group, turn_cancel_anywhere
from sessions_app.turns.followups import operation_follow_up_turn, turn_continue
from sessions_app.turns.recovery import turns_sweep
from sessions_app.turns.registry import turn_cancel, turn_running, turn_wait, turns_interrupt_all
from sessions_app.turns.start import ServerDraining, TurnInProgress, TurnStart, turn_start

__all__ = [
    "ServerDraining",
    "TurnInProgress",
    "TurnStart",
    "control_group",
    "operation_follow_up_turn",
    "turn_cancel",
    "turn_cancel_anywhere",
    "turn_continue",
    "turn_running",
    "turn_start",
    "turn_wait",
    "turns_interrupt_all",
    "turns_sweep",
]
