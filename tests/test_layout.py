"""The package's shape: layers that depend one way, no import cycle, no private name used across modules."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first; a module may import only from its own layer or below.
LAYERS = [
    ("dam.errors", "dam.io", "dam.results", "dam.environment", "dam.progress", "dam.plotting", "dam.workers"),
    ("dam.data",),
    ("dam.model", "dam.baselines"),
    ("dam.runs",),
    ("dam.training",),
    ("dam.probes",),
    ("dam.robustness",),
    ("dam.experiments",),
    ("dam.cli", "dam.__main__"),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "dam").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import of a dam module, function-level too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dam":
            names = [a.name for a in node.names]
            found.append((node.module, names))
            found.extend((f"{node.module}.{n}", []) for n in names if f"{node.module}.{n}" in mods)
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names if a.name.split(".")[0] == "dam")
    return found


def _layer(module: str) -> int:
    best = -1
    for i, layer in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in layer):
            best = i
    return best


def test_every_module_has_a_layer() -> None:
    assert [m for m in _modules() if m != "dam" and _layer(m) < 0] == []


def test_layers_depend_one_way() -> None:
    mods = _modules()
    upward = []
    for module, path in mods.items():
        if module == "dam":  # the package root re-exports the public API
            continue
        for target, _ in _imports(path, mods):
            if target != "dam" and _layer(target) > _layer(module):
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_no_private_name_crosses_modules() -> None:
    mods = _modules()
    private = [
        f"{module} imports {target}.{name}"
        for module, path in mods.items()
        for target, names in _imports(path, mods)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_no_import_cycle() -> None:
    mods = _modules()
    graph = {m: {t for t, _ in _imports(p, mods) if t in mods and t != "dam"} for m, p in mods.items()}
    cycles, index, low, stack, on_stack, counter = [], {}, {}, [], set(), [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_moved_modules_say_where_they_went() -> None:
    import importlib

    import pytest

    with pytest.raises(ModuleNotFoundError, match=r"dam.loading moved .* dam.runs"):
        importlib.import_module("dam.loading")
    import dam

    assert dam.load_model is not None and dam.train is not None and dam.DenseAssociativeMemory is not None
