"""Tools that only tests (and bench/capture_frames.py) offer to the model, through
CHAT_EXTRA_TOOLS."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from sessions_app.tools.base import BaseTool, ToolContext


class SideEffectArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(gt=0, le=600)


class SlowSideEffect(BaseTool):
    """Long-running and NOT retry-safe, like sending an e-mail: never run twice."""

    name = "slow_side_effect"
    description = "Does something that must not happen twice, slowly."
    Arguments = SideEffectArguments
    is_long_running = True
    retry_safe = False

    async def run(self, arguments: SideEffectArguments, context: ToolContext) -> str:
        await context.progress(0.0, "started")
        await asyncio.sleep(arguments.seconds)
        return "done once"


class StepsArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, le=100)
    seconds: float = Field(default=0.5, gt=0, le=10, description="The length of each step.")


class SlowSteps(BaseTool):
    """Ordinary (runs inside the turn, not as an operation), reporting progress at each step:
    its progress arrives as ``tool_progress`` events, which no built-in tool sends."""

    name = "slow_steps"
    description = "Works through a number of steps slowly, reporting progress at each."
    Arguments = StepsArguments

    async def run(self, arguments: StepsArguments, context: ToolContext) -> str:
        for done in range(arguments.steps):
            await context.progress(done / arguments.steps, f"Step {done + 1} of {arguments.steps}")
            await asyncio.sleep(arguments.seconds)
        return f"Finished {arguments.steps} step(s)"


class NoArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NulText(BaseTool):
    """Returns text holding U+0000, as a tool reading binary data might."""

    name = "nul_text"
    description = "Returns a text with a NUL character in it."
    Arguments = NoArguments

    async def run(self, arguments: NoArguments, context: ToolContext) -> str:
        return "before\x00after"
