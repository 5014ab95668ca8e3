"""The package's layers, from the bottom: operators (pure steps and messages), state
(stores, sources, sinks), online_models (learning and scoring), flows (the dataflow, run
modes, the CLI). A module imports its own layer or lower ones, never a higher one, and
no two modules import each other (directly or around a loop)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("operators", "state", "online_models", "flows")


def imports() -> dict[str, set[str]]:
    """module -> the firstmile modules it imports (type-checking-only imports too)."""
    found: dict[str, set[str]] = {}
    for layer in LAYERS:
        for path in (ROOT / layer).glob("*.py"):
            module = f"{layer}.{path.stem}"
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                for target in targets:
                    parts = target.split(".")
                    if (
                        parts[0] == "firstmile"
                        and len(parts) >= 3
                        and (ROOT / parts[1] / f"{parts[2]}.py").exists()
                        and parts[1] in LAYERS
                    ):
                        names.add(f"{parts[1]}.{parts[2]}")
            found[module] = names - {module}
    return found


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in imports().items()
        for target in targets
        if LAYERS.index(target.split(".")[0]) > LAYERS.index(module.split(".")[0])
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path, module, target]
            if target not in state and (cycle := visit(target, [*path, module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            assert visit(module, []) is None
