"""``timer``: waits a given time, reporting progress each second. A long-running tool with no
model calls, handy to try closing the tab while something runs (and for crash tests)."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field

from sessions_app.tools.base import BaseTool, ToolContext


class TimerArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    seconds: float = Field(gt=0, le=3600, description="How long to wait, in seconds.")
    label: str = Field(default="timer", max_length=100, description="What the timer is for.")


class Timer(BaseTool):
    name = "timer"
    description = "Wait the given number of seconds in the background, then report back."
    Arguments = TimerArguments
    is_long_running = True
    # Waiting again from the start after a crash harms nobody.
    retry_safe = True

    async def run(self, arguments: TimerArguments, context: ToolContext) -> str:
        started = time.monotonic()
        elapsed = 0.0
        while elapsed < arguments.seconds:
            await context.progress(
                elapsed / arguments.seconds, f"{arguments.label}: {elapsed:.0f} s elapsed"
            )
            await asyncio.sleep(min(1.0, arguments.seconds - elapsed))
            elapsed = time.monotonic() - started
        return f"The timer {arguments.label!r} finished after {arguments.seconds:g} s."
