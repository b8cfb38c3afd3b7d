"""The package layers of sessions_app and the one-way rule between them (docs/architecture.md).

Imports go one way, from a higher layer to a lower one: a module never imports a module of
a higher layer, the module graph has no cycle, and no function imports a module of the app
(an import inside a function is how a cycle hides). ``SessionsAppConfig.ready`` is the one
place allowed to import upward: it registers the hooks through which lower layers call
higher ones (the sweep, the drain, the in-process worker, an operation's follow-up turn).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "sessions_app"

# Lowest first. A module may import its own layer and any lower one.
LAYERS: list[set[str]] = [
    {"models", "schemas", "errors"},
    {"infra"},
    {"process"},
    {"limits"},
    {"store"},
    {"model", "tools"},
    {"events"},
    {"operations"},
    {"turns"},
    {"transport"},
    {"admin", "apps", "management"},
]
# Parts that stand apart: the local model is a separate program served beside the app.
STANDALONE = {"local_model"}
SKIPPED = {"migrations"}
# Where an import inside a function is the point, not a dodge.
FUNCTION_IMPORTS_ALLOWED = {("sessions_app.apps", "ready")}


def _part(module: str) -> str:
    """The top-level part of ``sessions_app.<part>...`` a module belongs to."""
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _layer(module: str) -> int | None:
    part = _part(module)
    for index, parts in enumerate(LAYERS):
        if part in parts:
            return index
    return None


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(APP.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if name != "sessions_app" and _part(name) not in SKIPPED:
            found[name] = path
    return found


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    """The app modules a file imports: at module level, and inside functions."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.top: set[str] = set()
        self.in_functions: list[tuple[str, str, int]] = []
        self.function: list[str] = []

    def _targets(self, node: ast.Import | ast.ImportFrom) -> set[str]:
        names: set[str] = set()
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        else:
            base = node.module or ""
            if node.level:
                anchor = self.package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from sessions_app.store import leases`` imports the submodule (its
                # package's __init__ runs first, but that is no edge back to the importer).
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in MODULES else base)
        return {name for name in names if name in MODULES}

    def _record(self, node: ast.Import | ast.ImportFrom) -> None:
        targets = self._targets(node)
        if self.function:
            for target in targets:
                self.in_functions.append((target, self.function[-1], node.lineno))
        else:
            self.top |= targets

    visit_Import = _record
    visit_ImportFrom = _record

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function.append(node.name)
        self.generic_visit(node)
        self.function.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_If(self, node: ast.If) -> None:
        # ``if TYPE_CHECKING:`` imports are for annotations only: no cycle at run time.
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        self.generic_visit(node)


def _scan() -> dict[str, _Imports]:
    scans = {}
    for module, path in MODULES.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        visitor.top.discard(module)
        scans[module] = visitor
    return scans


SCANS = _scan()


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if _layer(m) is None and _part(m) not in STANDALONE]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


def test_imports_go_one_way() -> None:
    wrong = []
    for module, scan in SCANS.items():
        own = _layer(module)
        for target in sorted(scan.top):
            if _part(module) in STANDALONE or _part(target) in STANDALONE:
                if _part(module) != _part(target) and _part(module) in STANDALONE:
                    wrong.append(f"{module} -> {target} (the local model stands apart)")
                continue
            theirs = _layer(target)
            if own is not None and theirs is not None and theirs > own:
                wrong.append(f"{module} (layer {own}) -> {target} (layer {theirs})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {module: scan.top for module, scan in SCANS.items()}
    # A package's facade imports its submodules: importing a submodule first runs the
    # package's __init__, so an edge from each submodule to its package is real as well.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_app_imports_inside_functions() -> None:
    found = [
        f"{module}:{line} imports {target} inside {function}()"
        for module, scan in SCANS.items()
        for target, function, line in scan.in_functions
        if (module, function) not in FUNCTION_IMPORTS_ALLOWED
    ]
    assert not found, "imports inside functions (a hidden cycle?):\n" + "\n".join(found)


def test_the_top_package_stays_small() -> None:
    flat = sorted(p.name for p in APP.glob("*.py"))
    assert len(flat) <= 8, f"sessions_app/ holds {len(flat)} flat modules: {flat}"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from sessions_app import turns\n", "layer"),
        ("def f():\n    from sessions_app import store\n", "inside"),
    ],
)
def test_the_checks_catch_a_wrong_import(source: str, message: str) -> None:
    """The rules above are not vacuous: a store module importing turns, or importing inside
    a function, is reported."""
    visitor = _Imports("sessions_app.store.example", is_package=False)
    visitor.visit(ast.parse(source))
    if message == "layer":
        assert visitor.top == {"sessions_app.turns"}
        assert _layer("sessions_app.turns") > _layer("sessions_app.store.example")  # type: ignore[operator]
    else:
        assert visitor.in_functions == [("sessions_app.store", "f", 2)]
