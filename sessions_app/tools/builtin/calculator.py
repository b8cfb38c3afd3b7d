"""``calculator``: exact arithmetic for the model, without ``eval``.

Models are unreliable at arithmetic. The expression is parsed with ``ast`` and only numeric
literals, ``+ - * / // % **``, unary signs, parentheses, a handful of functions and ``pi``/``e``
are evaluated; anything else (names, attributes, calls of anything else, strings) is refused
before it runs. Sizes are bounded before they are computed: ``2**10**10`` is refused without
being attempted, since big-integer powers can take minutes and gigabytes.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from sessions_app.tools.base import BaseTool, ToolContext, ToolError

Number = int | float

MAX_EXPRESSION_CHARS = 200
# Nesting bound on the syntax tree; Python's own recursion limit is far above it.
MAX_DEPTH = 100
# Largest integer result, in bits (about 1,230 decimal digits).
MAX_INT_BITS = 4096
MAX_ROUND_DIGITS = 100

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
# What an unsupported node is called in the refusal, when its class name would not say.
_NODE_WORDS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Compare: "comparisons",
    ast.BoolOp: "boolean operators",
    ast.Lambda: "lambda",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignment",
    ast.Starred: "star arguments",
}


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise ToolError("sqrt of a negative number is not a real number")
    return math.sqrt(x)


def _round(x: Number, digits: Number | None = None) -> Number:
    if digits is None:
        return round(x)
    if not isinstance(digits, int):
        raise ToolError("round(x, n) needs a whole number n")
    if abs(digits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round(x, n) needs |n| <= {MAX_ROUND_DIGITS}")
    return round(x, digits)


@dataclass(frozen=True)
class _Function:
    fn: Callable[..., Number]
    min_args: int
    max_args: int | None


FUNCTIONS: dict[str, _Function] = {
    "sqrt": _Function(_sqrt, 1, 1),
    "abs": _Function(abs, 1, 1),
    "round": _Function(_round, 1, 2),
    "min": _Function(lambda *xs: min(xs), 1, None),
    "max": _Function(lambda *xs: max(xs), 1, None),
}


def calculate(expression: str) -> Number:
    """Evaluate ``expression``; raises ``ToolError`` saying what is wrong with it."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not a valid arithmetic expression ({exc.msg})") from None
    except ValueError as exc:  # e.g. null bytes, on older Pythons
        raise ToolError(f"not a valid arithmetic expression ({exc})") from None
    _check_depth(tree.body)
    try:
        return _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None


def _check_depth(root: ast.AST) -> None:
    # Iterative, so the check itself cannot hit the recursion limit it guards.
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ToolError(f"the expression is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _eval(node: ast.AST) -> Number:
    return _checked(_eval_node(node))


def _eval_node(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"only numbers are allowed, not {type(value).__name__} {value!r}")
        return value
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.BitXor):
            raise ToolError("'^' is not allowed; use ** for powers")
        binary = _BINARY.get(type(node.op))
        if binary is None:
            raise ToolError(f"the operator {type(node.op).__name__} is not allowed")
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return binary(left, right)
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise ToolError(f"the operator {type(node.op).__name__} is not allowed")
        return unary(_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id not in CONSTANTS:
            raise ToolError(f"unknown name {node.id!r}; the constants are {', '.join(CONSTANTS)}")
        return CONSTANTS[node.id]
    if isinstance(node, ast.Call):
        return _call(node)
    word = _NODE_WORDS.get(type(node), f"{type(node).__name__} syntax")
    raise ToolError(f"not allowed in an arithmetic expression: {word}")


def _call(node: ast.Call) -> Number:
    allowed = ", ".join(FUNCTIONS)
    if not isinstance(node.func, ast.Name):
        raise ToolError(f"only the functions {allowed} can be called")
    function = FUNCTIONS.get(node.func.id)
    if function is None:
        raise ToolError(f"unknown function {node.func.id!r}; the functions are {allowed}")
    if node.keywords:
        raise ToolError(f"{node.func.id}() takes no keyword arguments")
    count = len(node.args)
    if count < function.min_args or (function.max_args is not None and count > function.max_args):
        wanted = (
            f"{function.min_args}"
            if function.min_args == function.max_args
            else f"{function.min_args} to {function.max_args or 'any number of'}"
        )
        raise ToolError(f"{node.func.id}() takes {wanted} argument(s), got {count}")
    return function.fn(*(_eval(arg) for arg in node.args))


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse integer powers whose result would exceed ``MAX_INT_BITS`` before computing.

    Float powers need no guard: they overflow at once with ``OverflowError``.
    """
    if not (isinstance(base, int) and isinstance(exponent, int)):
        return
    if exponent > 0 and abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_INT_BITS:
        raise ToolError(f"the result is too large (over {MAX_INT_BITS} bits)")


def _checked(value: object) -> Number:
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise ToolError(f"the result is too large (over {MAX_INT_BITS} bits)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ToolError("the result is too large or undefined")
        return value
    raise ToolError(f"unexpected value of type {type(value).__name__}")


def format_number(value: Number) -> str:
    """Integers exactly; floats to 15 significant digits, so 0.1 + 0.2 reads 0.3."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.15g}"
    return str(value)


class CalculatorArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description=(
            "Arithmetic expression: numbers, + - * / // % ** and parentheses, the functions "
            "sqrt, abs, round, min, max and the constants pi, e. Example: 'sqrt(2) * (3 + 4)**2'."
        ),
    )


class Calculator(BaseTool):
    name = "calculator"
    description = (
        "Evaluate an arithmetic expression exactly. Use it for any calculation instead of "
        "doing arithmetic yourself."
    )
    Arguments = CalculatorArguments

    async def run(self, arguments: CalculatorArguments, context: ToolContext) -> str:
        expression = arguments.expression.strip()
        return f"{expression} = {format_number(calculate(expression))}"
