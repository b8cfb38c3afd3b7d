"""Tools the model may call (OpenAI function calling): the base class, registry and built-ins.

Write a tool by subclassing ``BaseTool`` and list its dotted path in ``settings.CHAT_TOOLS``;
see docs/tools.md.
"""

from sessions_app.tools.base import BaseTool, NoArguments, ToolContext, ToolError
from sessions_app.tools.registry import (
    ToolArgumentsError,
    ToolOutcome,
    tool_arguments_parse,
    tool_execute,
    tool_get,
    tools_all,
    tools_openai_schemas,
)

__all__ = [
    "BaseTool",
    "NoArguments",
    "ToolArgumentsError",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
    "tool_arguments_parse",
    "tool_execute",
    "tool_get",
    "tools_all",
    "tools_openai_schemas",
]
