"""Tools that only tests offer to the model (through CHAT_EXTRA_TOOLS)."""

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
