"""The layers show in the folders: the steps build on the core and the data layer and never on each other.

Read from the code's own imports (every ``import cellpix...`` and ``from cellpix... import``, at module level or
inside functions), so a new arrow between steps fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "cellpix"
STEPS = {"integrate", "imaging", "train", "annotate", "explain"}
# what each layer may import (besides itself, the standard library and third-party packages)
ALLOWED = {
    "data": {"errors"},
    "core": {"errors", "data", "plugins", "hookspecs"},
    **{step: {"errors", "data", "core", "plugins", "hookspecs"} for step in STEPS},
    "builtin": {"errors", "data", "core", "plugins", "hookspecs", *STEPS},
    "api": {"errors", "data", "core", "plugins", "hookspecs", *STEPS, "scaffold", "plugin_docs"},
    # the front doors reach the steps through the API alone (cellpix.api and cellpix.api.files)
    "cli": {"api", "errors", "plugins", "pipeline"},
    "pipeline": {"api", "errors"},
}


def layer_of(module: str) -> str | None:
    """``cellpix.core.x`` → core, ``cellpix.steps.train.x`` → train, ``cellpix.cli`` → cli."""
    parts = module.split(".")
    if parts[0] != "cellpix" or len(parts) < 2:
        return None
    return parts[2] if parts[1] == "steps" and len(parts) > 2 else parts[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "cellpix":
                found |= {f"cellpix.{alias.name}" for alias in node.names
                          if (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir()}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("cellpix.")}


def arrows() -> dict[str, set[str]]:
    """Layer → the layers its modules import."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        layer = layer_of(".".join(("cellpix", *relative.parts)))
        targets = {layer_of(name) for name in imports(path)} - {layer, None, "steps"}
        graph.setdefault(layer, set()).update(targets)
    return graph


def test_no_step_imports_another_and_the_core_imports_no_step():
    """And the command line and the pipeline import no step, core or data module: only the API."""
    graph = arrows()
    assert set(graph) >= STEPS, "every step is a package under cellpix/steps/"
    for layer, allowed in ALLOWED.items():
        assert graph.get(layer, set()) <= allowed, f"{layer} imports {sorted(graph[layer] - allowed)}"


def test_the_layer_graph_has_no_cycle():
    graph = arrows()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in graph.get(node, ()):
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*trail, node, target])}"
            if target not in state:
                visit(target, [*trail, node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("cellpix", *(relative[:-1] if relative[-1] == "__init__" else relative)))


def test_no_module_imports_one_that_imports_it_back():
    """Within a layer too: two modules that need each other (once ``methods`` ↔ ``seurat`` through an error class)
    are one module in two files, and whichever is imported first sees the other half-initialised."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {target for target in imports(path) if target in modules and target != name}
             for name, path in modules.items()}
    state: dict[str, str] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target):], node, target] if target in trail
                                          else [node, target]))
            elif target not in state:
                visit(target, [*trail, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_module_is_a_room_too_big_to_read():
    """Split by what the code does before a file passes 400 lines (trainer.py was 747, annotate.py 420)."""
    sizes = {path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_every_name_of_the_file_api_resolves_to_what_its_module_defines():
    """``cellpix.api.files`` hands out names by a table; a stale entry would fail only when a command ran."""
    import importlib

    from cellpix.api import files

    for name in files.__all__:
        module, attribute = files._SOURCE[name]
        assert getattr(files, name) is getattr(importlib.import_module(module), attribute), name
    assert "train" not in files.__all__  # one train: cellpix.api.train, which the CLI and the pipeline call
