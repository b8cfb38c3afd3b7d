"""What a tool is: its name, description, argument model, ``run``, and the context it runs in.

A tool is a small class. Its ``Arguments`` pydantic model is the single source of truth for
what the model may send: the JSON schema offered to the model is generated from it, and the
registry validates every call against it before ``run`` sees anything.
"""

from __future__ import annotations

import copy
import inspect
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

# What OpenAI accepts as a function name.
TOOL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Everything a running tool may know about its call, beyond its arguments.

    Deliberately no request, socket or session object: a long-running tool runs in a task
    worker long after the socket that started it is gone, so it gets ids and callables only.
    """

    session_id: uuid.UUID
    owner_id: int
    tool_call_id: str
    # Report progress of a long-running tool: a fraction in [0, 1] or None, plus a short
    # human message.
    progress: Callable[[float | None, str], Awaitable[None]]
    # Ask the configured chat model for a (non-streamed) text completion of OpenAI-format
    # messages.
    complete: Callable[[list[dict[str, Any]]], Awaitable[str]]


class ToolError(Exception):
    """An expected failure the model should read as is ("division by zero").

    Raise it from ``run`` for problems of the input or the world, not of the code: the
    registry reports ``Error: <message>`` to the model and logs no traceback. Any other
    exception is treated as a bug (logged with its traceback).
    """


class NoArguments(BaseModel):
    """The argument model of a tool that takes none."""

    model_config = ConfigDict(extra="forbid")


class BaseTool:
    """Subclass this, set the class attributes, and write ``run``.

    ``run`` receives an instance of ``Arguments``, already validated. It is typed ``Any`` in
    this base so a subclass may annotate its own argument model without breaking the override
    rules of type checkers; the registry guarantees the instance type.

    A class without a ``name`` (anywhere in its bases) is an abstract helper base: it is not
    validated here, and the registry refuses to load it.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Arguments: ClassVar[type[BaseModel]] = NoArguments
    # Runs as a durable operation (a task), not inline in the turn: see docs/tools.md.
    is_long_running: ClassVar[bool] = False
    # May be re-run from scratch after a crash: no side effects that must not happen twice.
    retry_safe: ClassVar[bool] = False

    _openai_schema: ClassVar[dict[str, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "name"):
            return
        # Fail at import time, with the class named, rather than at the first call.
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(cls.name, str) or not TOOL_NAME_PATTERN.fullmatch(cls.name):
            raise TypeError(
                f"{where}.name must match {TOOL_NAME_PATTERN.pattern} "
                f"(letters, digits, _ and -, at most 64); got {cls.name!r}"
            )
        description = getattr(cls, "description", None)
        if not isinstance(description, str) or not description.strip():
            raise TypeError(f"{where}.description must be a non-empty string")
        if not (isinstance(cls.Arguments, type) and issubclass(cls.Arguments, BaseModel)):
            raise TypeError(f"{where}.Arguments must be a pydantic BaseModel subclass")
        if not inspect.iscoroutinefunction(cls.run):
            raise TypeError(f"{where}.run must be an async method")
        cls._openai_schema = _function_schema(cls.name, description, cls.Arguments)

    async def run(self, arguments: Any, context: ToolContext) -> str:
        """Do the work and return the text the model reads as the tool's result."""
        raise NotImplementedError

    @classmethod
    def openai_schema(cls) -> dict[str, Any]:
        """``{"type": "function", "function": {"name", "description", "parameters"}}``."""
        return copy.deepcopy(cls._openai_schema)


# --- JSON schema for OpenAI --------------------------------------------------------------

# Keywords whose value is a map of names to schemas, a schema, or a list of schemas. Walking
# only these keeps a property that happens to be called "title" from being mistaken for
# pydantic's title keyword.
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
)
_SCHEMA_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")


def _function_schema(name: str, description: str, arguments: type[BaseModel]) -> dict[str, Any]:
    parameters = arguments.model_json_schema()
    definitions = parameters.pop("$defs", {})
    try:
        parameters = _inline(parameters, definitions, ())
    except _RecursiveSchema:
        # A recursive model cannot be inlined; keep pydantic's ``#/$defs/...`` references,
        # which resolve against ``parameters`` itself.
        parameters = arguments.model_json_schema()
    tidy = _tidy(parameters)
    # The usual reading order: type, properties, required, then the rest.
    parameters = {"type": "object", "properties": tidy.pop("properties", {})}
    if "required" in tidy:
        parameters["required"] = tidy.pop("required")
    parameters.update(tidy)
    parameters["type"] = "object"
    parameters["additionalProperties"] = False
    return {
        "type": "function",
        "function": {"name": name, "description": description.strip(), "parameters": parameters},
    }


class _RecursiveSchema(Exception):
    pass


def _inline(node: Any, definitions: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """Replace every ``{"$ref": "#/$defs/X"}`` by X: some OpenAI-compatible servers
    (llama.cpp, older vLLM) cannot follow references."""
    if isinstance(node, list):
        return [_inline(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        key = ref.removeprefix("#/$defs/")
        if key in seen:
            raise _RecursiveSchema(key)
        target = _inline(definitions[key], definitions, (*seen, key))
        # Siblings of $ref (a field's description, default) win over the definition's.
        rest = {k: _inline(v, definitions, seen) for k, v in node.items() if k != "$ref"}
        return {**target, **rest}
    return {key: _inline(value, definitions, seen) for key, value in node.items()}


def _tidy(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's ``title`` noise and close every model object to unknown keys."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _tidy(sub) if isinstance(sub, dict) else sub for k, sub in value.items()}
        elif key in _SCHEMA_ONE and isinstance(value, dict):
            out[key] = _tidy(value)
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [_tidy(sub) if isinstance(sub, dict) else sub for sub in value]
        else:
            out[key] = value
    # Only model objects (those with "properties"): a ``dict[str, X]`` field's
    # additionalProperties is its value schema and must stay.
    if "properties" in out:
        out.setdefault("additionalProperties", False)
    return out
