"""The package's shape: layers that depend one way, no import cycle, no private name used across modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# The code that uses the package from outside: it too may use only public names.
USERS = ("tests", "studies", "benchmarks")

# Lowest first; a module may import only from its own layer or below.
LAYERS = [
    (
        "dam.version",
        "dam.errors",
        "dam.io",
        "dam.results",
        "dam.environment",
        "dam.progress",
        "dam.plotting",
        "dam.workers",
    ),
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


def _private_uses(path: Path) -> list[str]:
    """Private dam names that ``path`` reaches: imported (``from dam.x import _y``), by attribute
    (``dam.x._y``) or by dotted string (``monkeypatch.setattr("dam.x._y", ...)``); and relative imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append(f"line {node.lineno}: relative import")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dam":
            found += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and _dotted(node.value).split(".")[0] == "dam":
            found.append(f"line {node.lineno}: {_dotted(node.value)}.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("dam."):
            parts = node.value.split(".")
            if all(p.isidentifier() for p in parts) and any(_private(p) for p in parts):
                found.append(f"line {node.lineno}: {node.value!r}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_tests_studies_and_benchmarks_use_public_names_only() -> None:
    # (a module's own private names are its own business; this is about the code that uses the package)
    used = [f"{path.relative_to(ROOT)} {use}" for folder in USERS for path in sorted((ROOT / folder).rglob("*.py"))
            for use in _private_uses(path)]  # fmt: skip
    assert used == []


def test_the_private_name_check_sees_every_way_in(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import dam.io\nfrom dam.model import _x\nfrom . import y\ndam.io._y.cache_clear()\n"
                      "mp.setattr('dam.io._z', 1)\ndam.io.__name__\n")  # fmt: skip
    assert sorted(u.split(":")[0] for u in _private_uses(sample)) == ["line 2", "line 3", "line 4", "line 5"]


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
