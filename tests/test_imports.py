"""Imports flow down the layers, with no circles (search/__init__.py draws the layers).

Every import counts, at the top of a module or inside a function or a ``TYPE_CHECKING``
block: an import hidden in a function is still a dependency, and a circle means two
modules are one idea or a third is missing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "techniques")

# Bottom to top; a module imports only from its own layer or those below it.
LAYERS = {
    "search.common": 0,
    "search": 0,  # the package's own __init__: the version, nothing else
    "search.train": 1,
    "search.measure": 2,
    "search.tasks": 3,
    "techniques": 3,
    "search.track": 4,
    "search.core": 5,
    "search.registry": 6,
    "search.cli": 7,
}


def module_names() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules ``name`` imports, by their longest known prefix."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*parts, base] if base else parts)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> str:
    if module.split(".")[0] == "techniques":
        return "techniques"
    return ".".join(module.split(".")[:2])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_breaches(graph: dict[str, set[str]]) -> list[str]:
    breaches = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            here, there = layer_of(module), layer_of(other)
            if LAYERS[there] > LAYERS[here]:
                breaches.append(f"{module} ({here}) imports {other} ({there}), a layer above")
            elif here == "techniques" and there == "search.tasks":
                breaches.append(f"{module} imports the built-in task module {other}")
    return breaches


def test_every_module_belongs_to_a_layer() -> None:
    assert {layer_of(m) for m in import_graph()} <= set(LAYERS)


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_imports_flow_down_the_layers() -> None:
    assert layer_breaches(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_circle_finder_finds_circles(graph, expected) -> None:
    assert circles(graph) == expected


def test_the_layer_check_catches_a_technique_importing_a_built_in_task() -> None:
    graph = {"techniques.width": {"search.tasks.mobilenetv2", "search.train.loop"}}
    assert layer_breaches(graph) == [
        "techniques.width imports the built-in task module search.tasks.mobilenetv2"
    ]
    assert layer_breaches({"search.track.tracker": {"search.core.config"}}) == [
        "search.track.tracker (search.track) imports search.core.config (search.core), "
        "a layer above"
    ]
