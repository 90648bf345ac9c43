"""The package's import graph, read from the source with `ast` (nothing is imported), holds the layering
docs/architecture.md describes, lowest first:

    models (anatomy, loaded, loading)  <  engine.session / measure / static_decode / chat  <  method
    <  kvcompress, reuse  <  baselines;   engine.runner and perf orchestrate above them.

Every import counts: module level, inside functions (lazy imports are still dependencies, and a cycle through one
is still a cycle) and under `if TYPE_CHECKING:`. `baselines/` and `tasks/` are read as `cachebench.baselines` and
`cachebench.tasks`, as pyproject's package-dir installs them. An import names the deepest module it loads:
`from a.b import c` is an edge to `a.b.c` when that is a module, else to `a.b`. A module's own ancestor
packages are not edges (Python runs them before the module in any case). Method names the registry resolves from
strings ("kv.snapkv:SnapKV") are not imports and are not seen here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> the package it installs as (pyproject.toml, [tool.setuptools] package-dir)
ROOTS = {"cachebench": "cachebench", "baselines": "cachebench.baselines", "tasks": "cachebench.tasks"}

# The layers, lowest first; each is a list of groups (module prefixes). A module may reach (directly or through
# any chain of imports) only its own group and lower layers: never a higher layer, nor another group of its own
# layer (kvcompress and reuse share the method interface and the anatomy, not each other). Modules named in no
# layer (params, errors, paths, ...) are free to use, and are checked by what they reach in turn.
LAYERS = [
    [("cachebench.models",)],
    [("cachebench.engine.session", "cachebench.engine.measure", "cachebench.engine.static_decode",
      "cachebench.engine.chat")],
    [("cachebench.method",)],
    [("cachebench.kvcompress",), ("cachebench.reuse",)],
    [("cachebench.baselines",)],
    [("cachebench.engine.runner",), ("cachebench.perf",)],  # orchestrators: run methods, never imported by them
]
# The engine's core and what it must never reach, directly or through a lazy or type-only import.
ENGINE_CORE = ("cachebench.engine.session", "cachebench.engine.measure", "cachebench.engine.static_decode")
ABOVE_ENGINE_CORE = ("cachebench.method", "cachebench.kvcompress", "cachebench.reuse", "cachebench.perf",
                     "cachebench.semantic", "cachebench.baselines")
# core modules allowed to import the method adapters: discovery of built-in methods by name
BASELINE_IMPORTERS = {"cachebench.registry", "cachebench.method_manifest"}


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    modules = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_names(name: str, path: Path) -> Iterable[str]:
    """Every dotted name an import statement anywhere in the module asks for (`from a import b` gives `a.b`,
    which the graph then resolves to a module), relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if _is_package(path) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names if alias.name != "*")


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (the deepest existing module of each imported name)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for wanted in imported_names(name, path):
            parts = wanted.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            target = ".".join(parts)
            # a module's own ancestors run before it anyway; importing them is no dependency
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _within(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _place(module: str) -> tuple[int, int] | None:
    """(layer, group) of a module; the longest matching prefix wins (engine.session before a wider prefix)."""
    best = None
    for rank, groups in enumerate(LAYERS):
        for index, group in enumerate(groups):
            for prefix in group:
                if _within(module, [prefix]) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), (rank, index))
    return best[1] if best else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a reaches b' for every module that reaches a higher layer or another group of its own layer."""
    found = []
    for module in sorted(graph):
        here = _place(module)
        if here is None:
            continue
        for target in sorted(reachable(graph, module)):
            there = _place(target)
            if there is not None and (there[0] > here[0] or (there[0] == here[0] and there[1] != here[1])):
                found.append(f"{module} reaches {target}")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_package(graph):
    # the reader finds the mapped folders and resolves both absolute and relative imports to modules
    assert {"cachebench.method", "cachebench.baselines.kv.snapkv", "cachebench.tasks.builders"} <= set(graph)
    assert "cachebench.kvcompress.evictor" in graph["cachebench.baselines.kv.snapkv"]
    assert "cachebench.models.anatomy" in graph["cachebench.engine.session"]


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_reports_a_cycle():
    looped = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(looped) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_only_discovery_imports_the_method_adapters(graph):
    offenders = {module: sorted(t for t in targets if _within(t, ["cachebench.baselines"]))
                 for module, targets in graph.items()
                 if not _within(module, ["cachebench.baselines"]) and module not in BASELINE_IMPORTERS}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_anatomy_imports_nothing_from_the_package(graph):
    assert graph["cachebench.models.anatomy"] == set()


@pytest.mark.parametrize("module", ENGINE_CORE)
def test_the_engine_core_stays_below_methods(graph, module):
    above = sorted(t for t in reachable(graph, module) if _within(t, ABOVE_ENGINE_CORE))
    assert above == [], f"{module} imports {above}"


def test_imports_only_go_down_the_layers(graph):
    assert layer_violations(graph) == []


def test_the_layer_check_sees_a_violation():
    graph = {"cachebench.engine.session": {"cachebench.params"}, "cachebench.params": {"cachebench.method"},
             "cachebench.kvcompress.evictor": {"cachebench.reuse.forward"}, "cachebench.method": set(),
             "cachebench.reuse.forward": set()}
    assert layer_violations(graph) == ["cachebench.engine.session reaches cachebench.method",
                                       "cachebench.kvcompress.evictor reaches cachebench.reuse.forward"]
