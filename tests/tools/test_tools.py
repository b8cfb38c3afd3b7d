"""sessions_app.tools: schemas, the registry, the error contract, and the four built-ins."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from pydantic import BaseModel, ConfigDict, Field

from sessions_app import store
from sessions_app.schemas import ChatMessageData, MessageSearchHit
from sessions_app.tools import (
    BaseTool,
    ToolArgumentsError,
    ToolContext,
    ToolError,
    ToolOutcome,
    tool_arguments_parse,
    tool_execute,
    tool_get,
    tools_all,
    tools_openai_schemas,
)
from sessions_app.tools.builtin.calculator import MAX_DEPTH, calculate
from sessions_app.tools.builtin.draft_document import SECTION_SYSTEM_PROMPT, section_titles
from sessions_app.tools.registry import ERROR_MAX_CHARS

BUILTIN_NAMES = ["current_time", "calculator", "search_history", "draft_document", "timer"]


# --- the example of docs/tools.md, word for word -----------------------------------------


class RollDiceArguments(BaseModel):
    sides: int = Field(default=6, ge=2, le=100, description="Faces of each die.")
    count: int = Field(default=1, ge=1, le=10, description="How many dice to roll.")


class RollDice(BaseTool):
    name = "roll_dice"
    description = "Roll dice and return each face and the total."
    Arguments = RollDiceArguments

    async def run(self, arguments: RollDiceArguments, context: ToolContext) -> str:
        faces = [random.randint(1, arguments.sides) for _ in range(arguments.count)]
        return f"Rolled {faces}, total {sum(faces)}"


# --- tools that misbehave, for the error contract ----------------------------------------


class Boom(BaseTool):
    name = "boom"
    description = "Always fails."

    async def run(self, arguments: Any, context: ToolContext) -> str:
        raise RuntimeError("kaput")


class LongBoom(BaseTool):
    name = "long_boom"
    description = "Fails with a very long message."

    async def run(self, arguments: Any, context: ToolContext) -> str:
        raise ValueError("x" * 5000)


class Refuses(BaseTool):
    name = "refuses"
    description = "Fails the expected way."

    async def run(self, arguments: Any, context: ToolContext) -> str:
        raise ToolError("the moon is not available today")


class NotText(BaseTool):
    name = "not_text"
    description = "Returns a number, against the contract."

    async def run(self, arguments: Any, context: ToolContext) -> str:
        return 42  # type: ignore[return-value]


class Chatty(BaseTool):
    name = "chatty"
    description = "Returns far too much text."

    async def run(self, arguments: Any, context: ToolContext) -> str:
        return "y" * 50_000


class Waits(BaseTool):
    name = "waits"
    description = "Waits until cancelled."
    started: asyncio.Event | None = None

    async def run(self, arguments: Any, context: ToolContext) -> str:
        assert Waits.started is not None
        Waits.started.set()
        await asyncio.Event().wait()
        return "never"


class Dup(BaseTool):
    name = "calculator"  # clashes with the built-in
    description = "A second calculator."


class Abstract(BaseTool):
    """No name: a helper base, which the registry must refuse."""


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(description="A property called 'title', not pydantic's keyword.")
    city: str


class Nested(BaseTool):
    name = "nested"
    description = "Takes a nested model."

    class Arguments(BaseModel):
        address: Address
        tags: dict[str, int] = Field(default_factory=dict)
        backup: Address | None = None

    async def run(self, arguments: Any, context: ToolContext) -> str:
        return arguments.address.city  # type: ignore[no-any-return]


class TreeNode(BaseModel):
    label: str
    children: list[TreeNode] = Field(default_factory=list)


class Recursive(BaseTool):
    name = "recursive"
    description = "Takes a recursive model."

    class Arguments(BaseModel):
        root: TreeNode

    async def run(self, arguments: Any, context: ToolContext) -> str:
        return arguments.root.label  # type: ignore[no-any-return]


TEST_TOOLS = [
    f"tests.tools.test_tools.{cls.__name__}"
    for cls in (RollDice, Boom, LongBoom, Refuses, NotText, Chatty, Waits, Nested, Recursive)
]


@pytest.fixture
def test_tools() -> Iterator[None]:
    with override_settings(CHAT_TOOLS=TEST_TOOLS):
        yield


# --- contexts ---------------------------------------------------------------------------


async def _no_progress(fraction: float | None, message: str) -> None:
    return None


async def _no_model(messages: list[dict[str, Any]]) -> str:
    raise AssertionError("this tool must not call the model")


def make_context(
    owner_id: int = 1,
    *,
    progress: Callable[[float | None, str], Awaitable[None]] = _no_progress,
    complete: Callable[[list[dict[str, Any]]], Awaitable[str]] = _no_model,
) -> ToolContext:
    return ToolContext(
        session_id=uuid.uuid4(),
        owner_id=owner_id,
        tool_call_id="call_1",
        progress=progress,
        complete=complete,
    )


async def call(name: str, arguments: dict[str, Any] | str, owner_id: int = 1) -> ToolOutcome:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return await tool_execute(name=name, raw_arguments=raw, context=make_context(owner_id))


# --- schemas ----------------------------------------------------------------------------

# Keywords OpenAI's function parameters understand (its structured-outputs subset plus the
# validation keywords it tolerates). Anything else is pydantic leaking through.
SCHEMA_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "description",
    "default",
    "enum",
    "const",
    "items",
    "anyOf",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
    "$defs",
    "$ref",
}


def schema_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for key in ("properties", "$defs"):
        for sub in node.get(key, {}).values():
            yield from schema_nodes(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schema_nodes(node[key])
    for sub in node.get("anyOf", []):
        yield from schema_nodes(sub)


def assert_openai_function(schema: dict[str, Any]) -> None:
    assert set(schema) == {"type", "function"}
    assert schema["type"] == "function"
    function = schema["function"]
    assert set(function) == {"name", "description", "parameters"}
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", function["name"])
    assert function["description"].strip()
    parameters = function["parameters"]
    assert parameters["type"] == "object"
    assert parameters["additionalProperties"] is False
    assert isinstance(parameters["properties"], dict)
    assert set(parameters.get("required", [])) <= set(parameters["properties"])
    json.dumps(parameters)  # plain JSON, nothing pydantic-specific
    for node in schema_nodes(parameters):
        assert set(node) <= SCHEMA_KEYWORDS, set(node) - SCHEMA_KEYWORDS
        if "properties" in node:
            assert node["additionalProperties"] is False
            assert set(node.get("required", [])) <= set(node["properties"])
        ref = node.get("$ref")
        if ref is not None:
            assert ref.startswith("#/$defs/")
            assert ref.removeprefix("#/$defs/") in parameters["$defs"]


def test_default_settings_offer_the_builtins() -> None:
    assert list(tools_all()) == BUILTIN_NAMES
    schemas = tools_openai_schemas()
    assert [s["function"]["name"] for s in schemas] == BUILTIN_NAMES
    for schema in schemas:
        assert_openai_function(schema)
        # Built-ins are flat: no references a weak server could trip on.
        assert "$ref" not in json.dumps(schema)


def test_builtin_flags() -> None:
    tools = tools_all()
    assert [n for n, t in tools.items() if t.is_long_running] == ["draft_document", "timer"]
    assert [n for n, t in tools.items() if t.retry_safe] == ["draft_document", "timer"]


def test_nested_models_are_inlined_and_closed() -> None:
    schema = Nested.openai_schema()
    assert_openai_function(schema)
    parameters = schema["function"]["parameters"]
    assert "$defs" not in parameters and "$ref" not in json.dumps(parameters)
    address = parameters["properties"]["address"]
    assert address["type"] == "object"
    assert address["additionalProperties"] is False
    # A property named "title" survives the removal of pydantic's title keyword.
    assert set(address["properties"]) == {"title", "city"}
    assert "title" not in address["properties"]["city"]
    # A dict field keeps its value schema as additionalProperties.
    assert parameters["properties"]["tags"]["additionalProperties"] == {"type": "integer"}
    assert parameters["required"] == ["address"]


def test_recursive_models_keep_consistent_references() -> None:
    schema = Recursive.openai_schema()
    assert_openai_function(schema)
    parameters = schema["function"]["parameters"]
    assert parameters["properties"]["root"] == {"$ref": "#/$defs/TreeNode"}
    assert parameters["$defs"]["TreeNode"]["additionalProperties"] is False


def test_schema_is_a_copy() -> None:
    RollDice.openai_schema()["function"]["name"] = "changed"
    assert RollDice.openai_schema()["function"]["name"] == "roll_dice"


@pytest.mark.parametrize("name", ["", "has space", "dots.not.allowed", "x" * 65, "ünï"])
def test_bad_tool_names_fail_at_class_definition(name: str) -> None:
    with pytest.raises(TypeError, match=r"\.name must match"):
        type("Bad", (BaseTool,), {"name": name, "description": "d"})


def test_tool_classes_are_validated_when_defined() -> None:
    with pytest.raises(TypeError, match="description"):
        type("NoDescription", (BaseTool,), {"name": "ok"})
    with pytest.raises(TypeError, match="Arguments"):
        type("BadArgs", (BaseTool,), {"name": "ok", "description": "d", "Arguments": dict})

    def sync_run(self: Any, arguments: Any, context: Any) -> str:
        return ""

    with pytest.raises(TypeError, match="async"):
        type("SyncRun", (BaseTool,), {"name": "ok", "description": "d", "run": sync_run})


# --- the registry -----------------------------------------------------------------------


def test_registry_follows_override_settings(test_tools: None) -> None:
    assert list(tools_all()) == [
        "roll_dice",
        "boom",
        "long_boom",
        "refuses",
        "not_text",
        "chatty",
        "waits",
        "nested",
        "recursive",
    ]
    assert tool_get("calculator") is None
    assert tool_get("roll_dice") is tool_get("roll_dice")  # instantiated once


def test_registry_returns_to_defaults_after_override() -> None:
    with override_settings(CHAT_TOOLS=TEST_TOOLS[:1]):
        assert list(tools_all()) == ["roll_dice"]
    assert list(tools_all()) == BUILTIN_NAMES


def test_tools_all_returns_a_copy() -> None:
    tools_all().clear()
    assert list(tools_all()) == BUILTIN_NAMES


CALCULATOR = "sessions_app.tools.builtin.calculator.Calculator"


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        (["no_such_module.Tool"], "no_such_module.Tool"),
        (["sessions_app.tools.builtin.calculator.Nope"], "calculator.Nope"),
        (["notadottedpath"], "notadottedpath"),
        (
            ["sessions_app.store.messages.messages_search"],
            "sessions_app.store.messages.messages_search",
        ),
        (["builtins.dict"], "builtins.dict"),
        (["sessions_app.tools.base.BaseTool"], "sessions_app.tools.base.BaseTool"),
        (["tests.tools.test_tools.Abstract"], "tests.tools.test_tools.Abstract"),
        ([CALCULATOR, CALCULATOR], CALCULATOR),
        ([CALCULATOR, "tests.tools.test_tools.Dup"], "tests.tools.test_tools.Dup"),
        ([42], "42"),
    ],
)
def test_bad_entries_are_improperly_configured(entries: list[Any], named: str) -> None:
    with override_settings(CHAT_TOOLS=entries):
        with pytest.raises(ImproperlyConfigured) as caught:
            tools_all()
        message = str(caught.value)
        assert "CHAT_TOOLS" in message
        assert named in message
        # Every path into the registry fails the same way, not only tools_all().
        with pytest.raises(ImproperlyConfigured):
            tool_get("calculator")


def test_setting_that_is_not_a_list_is_improperly_configured() -> None:
    with (
        override_settings(CHAT_TOOLS="sessions_app.tools.builtin.calculator.Calculator"),
        pytest.raises(ImproperlyConfigured, match="CHAT_TOOLS must be a list"),
    ):
        tools_all()


def test_app_ready_checks_the_tools_at_startup() -> None:
    config = apps.get_app_config("sessions_app")
    with (
        override_settings(CHAT_TOOLS=["no_such_module.Tool"]),
        pytest.raises(ImproperlyConfigured, match=r"no_such_module\.Tool"),
    ):
        config.ready()
    config.ready()  # the defaults load


# --- the error contract -----------------------------------------------------------------


async def test_unknown_tool(test_tools: None) -> None:
    outcome = await call("nope", {})
    assert not outcome.ok
    assert outcome.content.startswith("Error: unknown tool 'nope'.")
    assert "roll_dice" in outcome.content  # tells the model what exists


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{not json", "are not valid JSON"),
        ('{"sides": 6', "are not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('"six"', "must be a JSON object, not str"),
    ],
)
async def test_unparsable_arguments(test_tools: None, raw: str, expected: str) -> None:
    outcome = await call("roll_dice", raw)
    assert not outcome.ok
    assert outcome.content.startswith("Error: the arguments for tool roll_dice")
    assert expected in outcome.content


async def test_empty_arguments_mean_no_arguments(test_tools: None) -> None:
    outcome = await call("roll_dice", "")
    assert outcome.ok, outcome.content
    assert outcome.content.startswith("Rolled [")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"sides": 1}, "sides: Input should be greater than or equal to 2"),
        (
            {"sides": "many"},
            "sides: Input should be a valid integer, unable to parse string as an integer",
        ),
        ({"count": 11}, "count: Input should be less than or equal to 10"),
    ],
)
async def test_validation_failure_names_field_and_reason(
    test_tools: None, arguments: dict[str, Any], expected: str
) -> None:
    outcome = await call("roll_dice", arguments)
    assert not outcome.ok
    assert outcome.content == f"Error: invalid arguments for tool roll_dice: {expected}"


async def test_validation_lists_every_problem_compactly() -> None:
    outcome = await call("search_history", {"limit": 0, "extra": True})
    assert outcome.content == (
        "Error: invalid arguments for tool search_history: query: Field required; "
        "limit: Input should be greater than or equal to 1; extra: Extra inputs are not permitted"
    )


async def test_nested_validation_paths(test_tools: None) -> None:
    outcome = await call("nested", {"address": {"title": "home"}})
    assert (
        outcome.content == "Error: invalid arguments for tool nested: address.city: Field required"
    )
    outcome = await call("nested", {"address": {"title": "home", "city": "Lyon"}})
    assert outcome == ToolOutcome(ok=True, content="Lyon")


def test_tool_arguments_parse_returns_the_model_or_raises() -> None:
    tool = RollDice()
    parsed = tool_arguments_parse(tool, '{"sides": 20}')
    assert isinstance(parsed, RollDiceArguments)
    assert (parsed.sides, parsed.count) == (20, 1)
    with pytest.raises(ToolArgumentsError, match="sides: Input should be"):
        tool_arguments_parse(tool, '{"sides": 0}')


async def test_tool_exception_is_reported_and_logged(
    test_tools: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="sessions_app.tools.registry"):
        outcome = await call("boom", {})
    assert outcome == ToolOutcome(
        ok=False, content="Error: the tool boom failed: RuntimeError: kaput"
    )
    [record] = caplog.records
    assert record.exc_info is not None  # the traceback is in the log, not in the content
    assert "call_1" in record.getMessage()


async def test_long_exception_message_is_truncated(test_tools: None) -> None:
    outcome = await call("long_boom", {})
    assert not outcome.ok
    assert outcome.content.startswith("Error: the tool long_boom failed: ValueError: xxx")
    assert len(outcome.content) <= ERROR_MAX_CHARS
    assert outcome.content.endswith("…")


async def test_tool_error_is_told_plainly_without_traceback(
    test_tools: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sessions_app.tools.registry"):
        outcome = await call("refuses", {})
    assert outcome == ToolOutcome(ok=False, content="Error: the moon is not available today")
    assert all(r.exc_info is None for r in caplog.records)


async def test_non_text_result_is_a_tool_failure(test_tools: None) -> None:
    outcome = await call("not_text", {})
    assert outcome == ToolOutcome(
        ok=False, content="Error: the tool not_text failed: TypeError: run() returned int, not str"
    )


@override_settings(CHAT_TOOL_RESULT_MAX_CHARS=1000)
async def test_long_output_is_truncated_with_a_marker(test_tools: None) -> None:
    outcome = await call("chatty", {})
    assert outcome.ok
    assert len(outcome.content) <= 1000
    assert outcome.content.startswith("yyyy")
    assert outcome.content.endswith(
        "[truncated: the tool returned 50000 characters, shown up to 1000]"
    )


async def test_output_within_the_limit_is_untouched(test_tools: None) -> None:
    # The default limit is 20,000: the 50,000 characters are cut, a short result is not.
    outcome = await call("chatty", {})
    assert len(outcome.content) <= 20_000
    assert (await call("nested", {"address": {"title": "t", "city": "Oslo"}})).content == "Oslo"


async def test_cancellation_propagates(test_tools: None) -> None:
    Waits.started = asyncio.Event()
    task = asyncio.create_task(call("waits", {}))
    await Waits.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


# --- current_time -----------------------------------------------------------------------

ISO_8601 = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}"


async def test_current_time_defaults_to_utc() -> None:
    outcome = await call("current_time", {})
    assert outcome.ok
    assert re.fullmatch(rf"{ISO_8601} \(UTC, [A-Z][a-z]+day\)", outcome.content), outcome.content
    assert "+00:00" in outcome.content


@pytest.mark.parametrize(
    ("zone", "offsets"),
    [("Asia/Kolkata", {"+05:30"}), ("America/New_York", {"-05:00", "-04:00"})],
)
async def test_current_time_in_a_zone(zone: str, offsets: set[str]) -> None:
    outcome = await call("current_time", {"timezone": zone})
    assert outcome.ok
    stamp = outcome.content.split(" ")[0]
    assert stamp[-6:] in offsets
    assert f"({zone}, " in outcome.content


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd", "/etc/localtime"])
async def test_current_time_unknown_zone_is_a_validation_error(zone: str) -> None:
    outcome = await call("current_time", {"timezone": zone})
    assert not outcome.ok
    assert outcome.content.startswith(
        "Error: invalid arguments for tool current_time: timezone: unknown time zone"
    )


# --- calculator -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("2 + 3 * 4", "14"),
        ("(1 + 2) ** 3", "27"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
        ("1 / 4", "0.25"),
        ("0.1 + 0.2", "0.3"),
        ("-3 + +2", "-1"),
        ("2 ** -1", "0.5"),
        ("sqrt(16)", "4"),
        ("abs(-2.5)", "2.5"),
        ("round(pi, 3)", "3.142"),
        ("round(2.7)", "3"),
        ("min(3, 1, 2)", "1"),
        ("max(2, 5.5)", "5.5"),
        ("e", "2.71828182845905"),
        ("10 ** 30", "1" + "0" * 30),
        ("2 ** 4000 // 2 ** 3999", "2"),
        ("1+" * 99 + "1", "100"),
        ("(" * 99 + "1" + ")" * 99, "1"),  # 199 characters, 100 levels deep
    ],
)
async def test_calculator_computes(expression: str, result: str) -> None:
    outcome = await call("calculator", {"expression": expression})
    assert outcome == ToolOutcome(ok=True, content=f"{expression} = {result}")


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "only the functions"),
        ("(1).real", "attribute access"),
        ("().__class__", "attribute access"),
        ("x + 1", "unknown name 'x'"),
        ("open", "unknown name 'open'"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("1j * 2", "only numbers are allowed"),
        ("2**10**10", "too large"),
        ("9**9**9", "too large"),
        ("(10**100) ** 100", "too large"),
        ("2.0 ** 5000", "too large"),
        ("1e308 * 10", "too large"),
        ("(2 ** 4000) * (2 ** 4000)", "too large"),
        ("sqrt(2 ** 4000)", "too large"),
        ("-" * 150 + "1", f"nested more than {MAX_DEPTH} levels"),
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0.0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("sqrt(-1)", "not a real number"),
        ("(-8) ** 0.5", "not a real number"),
        ("2 ^ 3", "use ** for powers"),
        ("1 << 2", "operator LShift"),
        ("not 1", "operator Not"),
        ("1 < 2", "comparisons"),
        ("[1, 2]", "List syntax"),
        ("lambda: 1", "lambda"),
        ("max(*[1, 2])", "star arguments"),
        ("1 +", "not a valid arithmetic expression"),
        ("1; 2", "not a valid arithmetic expression"),
        ("sqrt(1, 2)", "sqrt() takes 1 argument(s), got 2"),
        ("min()", "min() takes 1 to any number of argument(s), got 0"),
        ("round(1.5, ndigits=1)", "takes no keyword arguments"),
        ("round(1, 10 ** 9)", "needs |n| <= 100"),
        ("round(1, 0.5)", "needs a whole number"),
        ("abs.__call__(1)", "only the functions"),
    ],
)
async def test_calculator_refuses(expression: str, reason: str) -> None:
    outcome = await call("calculator", {"expression": expression})
    assert not outcome.ok
    assert outcome.content.startswith("Error: "), outcome.content
    assert "failed" not in outcome.content  # a refusal, not a crash
    assert reason in outcome.content, outcome.content


@pytest.mark.parametrize("expression", ["", "1+" * 100 + "1"])
async def test_calculator_argument_length(expression: str) -> None:
    outcome = await call("calculator", {"expression": expression})
    assert outcome.content.startswith(
        "Error: invalid arguments for tool calculator: expression: String should have"
    )


def test_calculate_guards_length_and_depth_itself() -> None:
    # Defence in depth for callers that bypass the Arguments model.
    with pytest.raises(ToolError, match="longer than"):
        calculate("(" * 500 + "1" + ")" * 500)
    with pytest.raises(ToolError, match="nested"):
        calculate("-" * (MAX_DEPTH + 1) + "1")
    assert calculate("-" * (MAX_DEPTH - 1) + "1") == (-1) ** (MAX_DEPTH - 1)


# --- search_history ---------------------------------------------------------------------


def make_history(owner: Any, stranger: Any) -> None:
    store.session_create(
        owner_id=owner.pk,
        title="Trip planning",
        messages=[
            ChatMessageData(role="user", content="Should we visit ROME in May?"),
            ChatMessageData(role="assistant", content="Rome in May is lovely."),
        ],
    )
    store.session_create(
        owner_id=owner.pk,
        title="",
        messages=[
            ChatMessageData(role="system", content="be brief"),
            ChatMessageData(role="user", content="Recipe for pasta, then more on rome?"),
            ChatMessageData(role="assistant", content=None, tool_calls=[]),
        ],
    )
    store.session_create(
        owner_id=stranger.pk,
        title="Stranger secrets",
        messages=[ChatMessageData(role="user", content="My secret Rome password is hunter2")],
    )


@pytest.mark.django_db(transaction=True)
async def test_search_history_sees_only_the_callers_sessions(owner: Any, stranger: Any) -> None:
    await database_sync_to_async(make_history)(owner, stranger)
    outcome = await call("search_history", {"query": "rome"}, owner_id=owner.pk)
    assert outcome.ok
    lines = outcome.content.splitlines()
    assert lines[0] == '3 messages match "rome" (newest first):'
    assert len(lines) == 4
    assert "secret" not in outcome.content and "hunter2" not in outcome.content
    # Newest first: the untitled session was created last.
    assert re.fullmatch(
        r"- \d{4}-\d\d-\d\d \d\d:\d\d UTC · \(untitled session\) · user: "
        r"Recipe for pasta, then more on rome\?",
        lines[1],
    )
    assert lines[2].endswith('· "Trip planning" · assistant: Rome in May is lovely.')
    assert lines[3].endswith('· "Trip planning" · user: Should we visit ROME in May?')

    theirs = await call("search_history", {"query": "ROME"}, owner_id=stranger.pk)
    [header, line] = theirs.content.splitlines()
    assert header == '1 message matches "ROME" (newest first):'
    assert line.endswith(' · "Stranger secrets" · user: My secret Rome password is hunter2')


@pytest.mark.django_db(transaction=True)
async def test_search_history_limit_and_no_matches(owner: Any, stranger: Any) -> None:
    await database_sync_to_async(make_history)(owner, stranger)
    outcome = await call("search_history", {"query": "  rome ", "limit": 1}, owner_id=owner.pk)
    assert outcome.content.splitlines()[0] == '1 message matches "rome" (newest first):'
    assert len(outcome.content.splitlines()) == 2
    none = await call("search_history", {"query": "hunter2"}, owner_id=owner.pk)
    assert none == ToolOutcome(ok=True, content='No matches for "hunter2" in your chat history.')


@pytest.mark.django_db(transaction=True)
def test_messages_search_is_ownership_safe_and_reads_one_query(owner: Any, stranger: Any) -> None:
    make_history(owner, stranger)
    with CaptureQueriesContext(connection) as queries:
        hits = store.messages_search(owner_id=owner.pk, query="rome", limit=20)
    assert len(queries.captured_queries) == 1
    assert all(isinstance(hit, MessageSearchHit) for hit in hits)
    assert [(h.session_title, h.role, h.sequence) for h in hits] == [
        ("", "user", 2),
        ("Trip planning", "assistant", 2),
        ("Trip planning", "user", 1),
    ]
    assert store.messages_search(owner_id=stranger.pk, query="pasta", limit=5) == []
    assert store.messages_search(owner_id=owner.pk, query="   ", limit=5) == []
    assert store.messages_search(owner_id=owner.pk, query="rome", limit=0) == []


@pytest.mark.django_db(transaction=True)
def test_messages_search_treats_wildcards_literally_and_snips(owner: Any) -> None:
    long_text = "a" * 1000 + " the needle_% is here " + "b" * 1000
    store.session_create(
        owner_id=owner.pk,
        title="Long",
        messages=[
            ChatMessageData(role="tool", content=long_text, tool_call_id="c1"),
            ChatMessageData(role="user", content="needleX"),
        ],
    )
    [hit] = store.messages_search(owner_id=owner.pk, query="NEEDLE_%", limit=5)
    assert hit.role == "tool"
    assert "the needle_% is here" in hit.snippet
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    assert len(hit.snippet) <= 162
    [short] = store.messages_search(owner_id=owner.pk, query="needlex", limit=5)
    assert short.snippet == "needleX"


# --- draft_document ---------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.progress: list[tuple[float | None, str]] = []
        self.prompts: list[list[dict[str, Any]]] = []

    async def on_progress(self, fraction: float | None, message: str) -> None:
        self.progress.append((fraction, message))

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        self.prompts.append(messages)
        return f"  Paragraph {len(self.prompts)}.\n"


async def test_draft_document_writes_each_section_through_the_model() -> None:
    recorder = Recorder()
    context = make_context(progress=recorder.on_progress, complete=recorder.complete)
    outcome = await tool_execute(
        name="draft_document",
        raw_arguments=json.dumps({"topic": "tide pools", "sections": 3}),
        context=context,
    )
    assert outcome == ToolOutcome(
        ok=True,
        content=(
            "# Tide pools\n\n"
            "## Introduction\n\nParagraph 1.\n\n"
            "## Background\n\nParagraph 2.\n\n"
            "## Conclusion\n\nParagraph 3.\n"
        ),
    )
    assert recorder.prompts[1] == [
        {"role": "system", "content": SECTION_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": 'Write the section 2 of 3, titled "Background", '
            "of a document about tide pools.",
        },
    ]
    assert all(p[1]["content"].startswith("Write") for p in recorder.prompts)
    assert recorder.progress == [
        (0.0, "Planning 3 section(s) about tide pools"),
        (1 / 3, "Writing section 1 of 3"),
        (2 / 3, "Writing section 2 of 3"),
        (1.0, "Writing section 3 of 3"),
    ]


def test_section_titles_are_deterministic() -> None:
    assert section_titles(1) == ["Overview"]
    assert section_titles(2) == ["Introduction", "Conclusion"]
    assert len(section_titles(8)) == len(set(section_titles(8))) == 8


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"topic": "x", "sections": 9}, "sections: Input should be less than or equal to 8"),
        ({"topic": "x", "sections": 0}, "sections: Input should be greater than or equal to 1"),
        ({"topic": "   "}, "topic: String should have at least 1 character"),
        ({"topic": "x" * 301}, "topic: String should have at most 300 characters"),
    ],
)
async def test_draft_document_bad_arguments(arguments: dict[str, Any], expected: str) -> None:
    outcome = await call("draft_document", arguments)
    assert outcome.content == f"Error: invalid arguments for tool draft_document: {expected}"


async def test_draft_document_model_failure_is_a_tool_failure() -> None:
    async def broken(messages: list[dict[str, Any]]) -> str:
        raise ConnectionError("model unreachable")

    outcome = await tool_execute(
        name="draft_document",
        raw_arguments='{"topic": "x", "sections": 1}',
        context=make_context(complete=broken),
    )
    assert outcome == ToolOutcome(
        ok=False,
        content="Error: the tool draft_document failed: ConnectionError: model unreachable",
    )


async def test_draft_document_against_the_local_model(settings: Any, local_model_url: str) -> None:
    """The real path: the section prompts reach the local scripted model over HTTP."""
    from sessions_app.model import client as llm

    settings.CHAT_MODEL_BASE_URL = local_model_url

    async def complete(messages: list[dict[str, Any]]) -> str:
        text, _usage = await llm.complete_text(messages=messages)
        return text

    recorder = Recorder()
    context = make_context(progress=recorder.on_progress, complete=complete)
    raw = json.dumps({"topic": "coral reefs", "sections": 2})
    try:
        first = await tool_execute(name="draft_document", raw_arguments=raw, context=context)
        again = await tool_execute(name="draft_document", raw_arguments=raw, context=context)
    finally:
        await llm.clients_close()
    assert first.ok, first.content
    assert first == again  # deterministic, which is what makes a retry after a crash sane
    head, intro, conclusion = first.content.split("\n\n## ")
    assert head == "# Coral reefs"
    assert intro.startswith("Introduction\n\n") and len(intro) > len("Introduction\n\n") + 20
    assert conclusion.startswith("Conclusion\n\n")
    assert [f for f, _ in recorder.progress] == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]


# --- the custom tool of docs/tools.md ---------------------------------------------------


@override_settings(CHAT_TOOLS=["tests.tools.test_tools.RollDice"])
async def test_custom_tool_from_the_docs_works() -> None:
    assert [s["function"]["name"] for s in tools_openai_schemas()] == ["roll_dice"]
    assert_openai_function(RollDice.openai_schema())
    outcome = await call("roll_dice", {"sides": 6, "count": 3})
    assert outcome.ok
    match = re.fullmatch(r"Rolled \[(\d), (\d), (\d)\], total (\d+)", outcome.content)
    assert match is not None
    faces = [int(f) for f in match.groups()[:3]]
    assert all(1 <= f <= 6 for f in faces)
    assert sum(faces) == int(match.group(4))
    refused = await call("roll_dice", {"sides": 1000})
    assert refused.content == (
        "Error: invalid arguments for tool roll_dice: "
        "sides: Input should be less than or equal to 100"
    )


async def test_timer_reports_progress_and_finishes() -> None:
    from sessions_app.tools.builtin.timer import Timer, TimerArguments

    reports: list[tuple[float | None, str]] = []

    async def progress(fraction: float | None, text: str) -> None:
        reports.append((fraction, text))

    async def complete(messages: list[dict[str, Any]]) -> str:
        raise AssertionError("the timer asks no model")

    context = ToolContext(
        session_id=uuid.uuid4(),
        owner_id=1,
        tool_call_id="call_t",
        progress=progress,
        complete=complete,
    )
    result = await Timer().run(TimerArguments(seconds=0.3, label="tea"), context)
    assert result == "The timer 'tea' finished after 0.3 s."
    assert reports and reports[0][0] == 0.0 and "tea" in reports[0][1]
