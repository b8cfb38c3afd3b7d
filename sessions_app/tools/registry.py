"""The configured tools (``settings.CHAT_TOOLS``) and the one way to call one.

``tool_execute`` is the boundary between the model and tool code: whatever the model sends
and whatever a tool does wrong, it returns a ``ToolOutcome`` whose text the model can read
and act on, so one bad call never ends a turn. Only cancellation passes through.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string
from pydantic import BaseModel, ValidationError

from sessions_app.schemas import storable_text
from sessions_app.tools.base import BaseTool, ToolContext, ToolError

logger = logging.getLogger(__name__)

# An error text is for the model to correct its call, not a log: keep it short.
ERROR_MAX_CHARS = 500
# Validation problems listed one by one before "and N more".
MAX_LISTED_ERRORS = 5


class ToolArgumentsError(ValueError):
    """The model's arguments are not valid JSON or do not fit the tool's ``Arguments``."""


@dataclass(frozen=True)
class ToolOutcome:
    """The result of one tool call. ``content`` is what goes into the tool message."""

    ok: bool
    content: str


# --- the registry -----------------------------------------------------------------------


@functools.cache
def _tools_loaded() -> dict[str, BaseTool]:
    entries = settings.CHAT_TOOLS
    if not isinstance(entries, list | tuple):
        raise ImproperlyConfigured(
            f"CHAT_TOOLS must be a list of dotted class paths; got {type(entries).__name__}"
        )
    tools: dict[str, BaseTool] = {}
    origins: dict[str, str] = {}
    for entry in entries:
        tool = _tool_from_entry(entry)
        if tool.name in tools:
            raise ImproperlyConfigured(
                f"CHAT_TOOLS entry {entry!r} has the tool name {tool.name!r}, "
                f"already used by {origins[tool.name]!r}"
            )
        tools[tool.name] = tool
        origins[tool.name] = entry
    return tools


def _tool_from_entry(entry: object) -> BaseTool:
    if not isinstance(entry, str):
        raise ImproperlyConfigured(f"CHAT_TOOLS entry {entry!r} must be a dotted class path")
    try:
        cls = import_string(entry)
    except ImportError as exc:
        raise ImproperlyConfigured(f"CHAT_TOOLS entry {entry!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseTool)):
        raise ImproperlyConfigured(
            f"CHAT_TOOLS entry {entry!r} is not a subclass of sessions_app.tools.BaseTool"
        )
    if not hasattr(cls, "name"):
        raise ImproperlyConfigured(f"CHAT_TOOLS entry {entry!r} has no tool name")
    try:
        return cls()
    except Exception as exc:
        raise ImproperlyConfigured(
            f"CHAT_TOOLS entry {entry!r} could not be instantiated: {exc}"
        ) from exc


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    # ``override_settings(CHAT_TOOLS=...)`` in tests must see its own tools.
    if setting == "CHAT_TOOLS":
        _tools_loaded.cache_clear()


def tools_all() -> dict[str, BaseTool]:
    """The configured tools by name, in ``CHAT_TOOLS`` order; instantiated once per process.

    Raises ``ImproperlyConfigured`` naming the bad ``CHAT_TOOLS`` entry.
    """
    return dict(_tools_loaded())


def tool_get(name: str) -> BaseTool | None:
    return _tools_loaded().get(name)


def tools_openai_schemas() -> list[dict[str, Any]]:
    """The ``tools`` parameter of a chat-completions request."""
    return [tool.openai_schema() for tool in _tools_loaded().values()]


def tools_check_configured() -> None:
    """Load ``CHAT_TOOLS`` now, so a bad entry stops start-up rather than the first turn."""
    _tools_loaded()


# --- calling a tool ---------------------------------------------------------------------


def tool_arguments_parse(tool: BaseTool, raw: str) -> BaseModel:
    """The model's JSON ``arguments`` string as the tool's ``Arguments`` instance.

    An empty string counts as ``{}``: several OpenAI-compatible servers send it for tools
    without parameters. Raises ``ToolArgumentsError`` with a message meant for the model.
    """
    text = (raw or "").strip() or "{}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolArgumentsError(
            f"the arguments for tool {tool.name} are not valid JSON ({exc}); "
            "send one JSON object matching the tool's parameters"
        ) from None
    if not isinstance(data, dict):
        raise ToolArgumentsError(
            f"the arguments for tool {tool.name} must be a JSON object, not {type(data).__name__}"
        )
    try:
        return tool.Arguments.model_validate(data)
    except ValidationError as exc:
        raise ToolArgumentsError(
            f"invalid arguments for tool {tool.name}: {_validation_summary(exc)}"
        ) from None


def _validation_summary(exc: ValidationError) -> str:
    """``field: why`` per problem, e.g. ``limit: Input should be less than or equal to 20``."""
    problems = []
    errors = exc.errors(include_url=False, include_input=False)
    for error in errors[:MAX_LISTED_ERRORS]:
        where = ".".join(str(part) for part in error["loc"]) or "(arguments)"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    if len(errors) > MAX_LISTED_ERRORS:
        problems.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return "; ".join(problems)


def _clip(text: str, limit: int) -> str:
    text = storable_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _truncate_result(content: str) -> str:
    """Keep the first part of an oversized result, marked, within the configured maximum."""
    limit: int = settings.CHAT_TOOL_RESULT_MAX_CHARS
    content = storable_text(content)
    if len(content) <= limit:
        return content
    marker = f"\n\n[truncated: the tool returned {len(content)} characters, shown up to {limit}]"
    return content[: max(limit - len(marker), 0)] + marker


async def tool_execute(*, name: str, raw_arguments: str, context: ToolContext) -> ToolOutcome:
    """Run one tool call; never raises for a tool problem (see the module docstring).

    ``asyncio.CancelledError`` (a cancelled turn) propagates: it is not an ``Exception``.
    """
    tool = tool_get(name)
    if tool is None:
        available = ", ".join(_tools_loaded()) or "none"
        return ToolOutcome(
            ok=False,
            content=_clip(f"Error: unknown tool {name!r}. Available tools: {available}.", 1000),
        )
    try:
        arguments = tool_arguments_parse(tool, raw_arguments)
    except ToolArgumentsError as exc:
        return ToolOutcome(ok=False, content=_clip(f"Error: {exc}", ERROR_MAX_CHARS))
    try:
        result = await tool.run(arguments, context)
        if not isinstance(result, str):
            raise TypeError(f"run() returned {type(result).__name__}, not str")
    except ToolError as exc:
        logger.info("tool %s refused call %s: %s", name, context.tool_call_id, exc)
        return ToolOutcome(ok=False, content=_clip(f"Error: {exc}", ERROR_MAX_CHARS))
    except Exception as exc:
        logger.exception(
            "tool %s failed (session %s, call %s)", name, context.session_id, context.tool_call_id
        )
        message = f"Error: the tool {name} failed: {type(exc).__name__}: {exc}"
        return ToolOutcome(ok=False, content=_clip(message, ERROR_MAX_CHARS))
    return ToolOutcome(ok=True, content=_truncate_result(result))
