"""Imports flow one way (``../shared/docs/DESIGN.md``, "Rules of the house"), checked on the source.

Every import statement of ``jax_instant4d`` and ``rasterizer_ffi`` (at module level or inside a
function: a lazy import is still a dependency) is parsed with ``ast``; each module gets the layer of
the longest prefix in :data:`LAYERS`. A module may import modules of a lower layer, and of its own
package; never one of a higher layer or of another package on its layer (``train`` and ``eval`` do not
import each other). The module graph and the package graph have no cycle. A new module outside every
listed prefix fails the test until it is given a layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jax_instant4d", "rasterizer_ffi")

# prefix -> layer; lower layers never import higher ones
LAYERS: dict[str, int] = {
    "rasterizer_ffi": 0,
    "jax_instant4d": 1,  # the package's own __init__
    "jax_instant4d.config": 1,
    "jax_instant4d.render": 1,
    "jax_instant4d.image_metrics": 1,
    "jax_instant4d.perceptual": 1,
    "jax_instant4d.restore": 1,
    "jax_instant4d.tree_paths": 1,
    "jax_instant4d.cachelock": 1,
    "jax_instant4d.model": 2,
    "jax_instant4d.data": 3,
    "jax_instant4d.inference": 4,
    "jax_instant4d.train": 5,
    "jax_instant4d.eval": 5,
    # tools: argument parsing and the user-facing commands
    "jax_instant4d.data.cli": 6,
    "jax_instant4d.train.cli": 6,
    "jax_instant4d.eval.cli": 6,
    "jax_instant4d.animate": 6,
    "jax_instant4d.export": 6,
    "jax_instant4d.sweep": 6,
    "jax_instant4d.bench": 6,
    "jax_instant4d.cli": 6,
}
TOOLS = 6


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(files: Iterable[Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``
    when ``sub`` is a module)."""
    files = list(files)
    modules = {module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, f in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, f.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t.split(".")[0] in PACKAGES:
                    # the longest listed module that t names or lies in
                    while t not in modules and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t in modules and t != name:
                        deps.add(t)
        graph[name] = deps
    return graph


def layer_of(module: str, layers: Mapping[str, int] = LAYERS) -> int | None:
    """The layer of the longest listed prefix (``jax_instant4d`` itself names only the package's
    ``__init__``: a new top-level module has no layer until it is listed)."""
    best = max((p for p in layers if module == p or (p != "jax_instant4d" and module.startswith(p + "."))),
               key=len, default=None)
    return None if best is None else layers[best]


def package_of(module: str) -> str:
    """``jax_instant4d.train.step`` -> ``jax_instant4d.train``; ``rasterizer_ffi.*`` -> ``rasterizer_ffi``;
    top-level modules of ``jax_instant4d`` are their own package."""
    parts = module.split(".")
    return parts[0] if parts[0] == "rasterizer_ffi" else ".".join(parts[:2])


def violations(graph: Mapping[str, set[str]], layers: Mapping[str, int] = LAYERS) -> list[str]:
    """Every import that goes up a layer or sideways into another package on the same layer (tools may
    use each other), and every module without a layer."""
    out = []
    for mod in sorted(graph):
        lm = layer_of(mod, layers)
        if lm is None:
            out.append(f"{mod} has no layer (add it to LAYERS)")
            continue
        for dep in sorted(graph[mod]):
            ld = layer_of(dep, layers)
            if ld is None:
                continue  # reported as a module of its own
            same_package = package_of(dep) == package_of(mod)
            if ld > lm or (ld == lm and not same_package and lm != TOOLS and ld != 1):
                out.append(f"{mod} (layer {lm}) imports {dep} (layer {ld})")
    return out


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def package_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        p = package_of(mod)
        out.setdefault(p, set()).update(package_of(d) for d in deps if package_of(d) != p)
    return out


@pytest.fixture(scope="module")
def graph():
    files = [f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")]
    return import_graph(files)


def test_imports_follow_the_layers(graph):
    assert "jax_instant4d.model.avatar" in graph and "jax_instant4d.train.step" in graph
    assert violations(graph) == []


def test_no_import_cycles(graph):
    """No cycle between packages; none between the modules of ``jax_instant4d``. (``rasterizer_ffi``'s
    ``xla`` and ``xla_exact`` share helpers through a lazy import each way, inside one package.)"""
    ours = {k: {d for d in v if d.startswith("jax_instant4d")} for k, v in graph.items()
            if k.startswith("jax_instant4d")}
    assert find_cycle(ours) is None, find_cycle(ours)
    assert find_cycle(package_graph(graph)) is None, find_cycle(package_graph(graph))


def test_the_model_needs_no_optional_framework():
    """torch is optional: no module of the model imports it at module level (interop reads a ``.pt``
    file with a lazy import)."""
    for f in sorted((ROOT / "jax_instant4d" / "model").rglob("*.py")):
        tree = ast.parse(f.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "torch"], f


def test_the_checker_catches_a_back_edge_and_a_cycle(graph):
    """The rules above would fail on a model module importing training, on eval importing train, and on
    a cycle inside a package."""
    bad = {k: set(v) for k, v in graph.items()}
    bad["jax_instant4d.model.motion"].add("jax_instant4d.train.step")
    assert violations(bad) == ["jax_instant4d.model.motion (layer 2) imports jax_instant4d.train.step (layer 5)"]
    sideways = {k: set(v) for k, v in graph.items()}
    sideways["jax_instant4d.eval.metrics"].add("jax_instant4d.train.losses")
    assert violations(sideways) == ["jax_instant4d.eval.metrics (layer 5) imports jax_instant4d.train.losses (layer 5)"]
    cyclic = {k: set(v) for k, v in graph.items()}
    cyclic["jax_instant4d.model.layers"].add("jax_instant4d.model.avatar")
    cycle = find_cycle(cyclic)
    assert cycle is not None and cycle[0] == cycle[-1] and "jax_instant4d.model.layers" in cycle
    unlisted = {**graph, "jax_instant4d.newtool": {"jax_instant4d.config"}}
    assert violations(unlisted) == ["jax_instant4d.newtool has no layer (add it to LAYERS)"]
