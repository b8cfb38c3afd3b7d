"""``current_time``: the current date and time in a given IANA time zone.

Models do not know the date; without this tool they guess from their training data.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sessions_app.tools.base import BaseTool, ToolContext


class CurrentTimeArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(
        default="UTC",
        max_length=64,
        description="IANA time zone name, e.g. 'UTC', 'Europe/Paris', 'America/New_York'.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        name = value.strip()
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            # ValueError: names that are not zone keys at all ("", "../x", "/etc/x").
            raise ValueError(
                f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'"
            ) from None
        return name


class CurrentTime(BaseTool):
    name = "current_time"
    description = (
        "Get the current date and time (ISO 8601) in an IANA time zone. "
        "Use it whenever the answer depends on today's date or the time of day."
    )
    Arguments = CurrentTimeArguments

    async def run(self, arguments: CurrentTimeArguments, context: ToolContext) -> str:
        now = datetime.now(zoneinfo.ZoneInfo(arguments.timezone))
        return f"{now.isoformat(timespec='seconds')} ({arguments.timezone}, {now:%A})"
