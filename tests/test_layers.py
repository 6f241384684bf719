"""Layers import downward only, and no module imports itself back through others.

The rules are stated per package (docs/architecture.md draws them): what both programs share
(tether.common) imports nothing above it; the actors never import the cluster, which builds
on them; the publisher is a program of its own and imports nothing of the hub's. The
benchmarks (bench/) sit above all of tether: they may import any of it, tether never imports
them, and they form no circle among themselves. Imports made inside functions count as much as
those at the top of a module.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TETHER = ROOT / "tether"
BENCH = ROOT / "bench"
PACKAGES = ("tether", "bench")

# Each layer may import itself and the layers listed for it (and what those may import, as
# written out here: the list is the whole allowance). `tether.errors` and `tether.config`
# are root modules every hub layer may use.
BASE = {"tether.common", "tether.errors"}
ALLOWED: dict[str, set[str]] = {
    "tether.common": set(),
    "tether.errors": set(),
    "tether.config": {"tether.common"},
    "tether.store": BASE | {"tether.config"},
    "tether.observability": BASE | {"tether.config"},
    "tether.upstream": BASE | {"tether.config"},
    "tether.actors": BASE | {"tether.config", "tether.store", "tether.observability",
                             "tether.upstream"},
    "tether.cluster": BASE | {"tether.config", "tether.store", "tether.observability",
                              "tether.actors"},
    "tether.http": BASE | {"tether.config", "tether.store", "tether.observability",
                           "tether.actors", "tether.cluster"},
    "tether.publisher": BASE | {"tether.config"},
    "tether.tools": BASE,
    "tether.cli": BASE | {"tether.config", "tether.store", "tether.observability",
                          "tether.http", "tether.publisher", "tether.tools"},
}
ROOT_MODULES_MAX = 6  # cli, config, errors, upstream (+ __init__): the whole program's


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every tether and bench module `path` imports, at any depth (function-local imports
    count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"  # would dodge the check below
            base = node.module or ""
            found.add(base)
            # `from tether import actors` names a module too
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found
            if any(name == p or name.startswith(p + ".") for p in PACKAGES)}


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in TETHER.rglob("*.py")}


def bench_modules() -> dict[str, Path]:
    return {module_name(path): path for path in BENCH.rglob("*.py")}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module an imported name lives in (`tether.actors.messages.Infer` -> its module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache  # parsed once, not once per parametrized test
def graph() -> dict[str, set[str]]:
    """tether's modules and bench's, each with the modules it imports."""
    known = {**modules(), **bench_modules()}
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = {resolve(target, known) for target in imported_modules(path)}
        edges[name] = {t for t in targets
                       if t is not None and t != name and t not in PACKAGES}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each circle a depth-first walk of `edges` closes, as the path that closes it."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_import_walk_sees_every_spelling(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import tether.http.app\nfrom tether import actors\n"
        "def f():\n    from tether.common.actor import Parent\n"
        "from bench import relay\nimport bench.client\nimport benchmark\n")
    found = imported_modules(sample)
    assert "tether.http.app" in found
    assert "tether.actors" in found
    assert "tether.common.actor.Parent" in found
    assert {"bench.relay", "bench.client"} <= found
    assert "benchmark" not in found


def test_a_circle_is_found_wherever_it_runs() -> None:
    edges = {"bench.a": {"bench.b"}, "bench.b": {"bench.c"}, "bench.c": {"bench.a"},
             "bench.d": {"bench.a", "tether.x"}, "tether.x": set()}
    assert circles(edges) == [["bench.a", "bench.b", "bench.c", "bench.a"]]
    assert circles({"bench.a": {"bench.b"}, "bench.b": set()}) == []


def test_every_module_belongs_to_a_layer() -> None:
    orphans = [name for name in modules() if name != "tether" and layer_of(name) is None]
    assert orphans == []


@pytest.mark.parametrize("module", sorted(modules()), ids=str)
def test_a_module_imports_only_its_own_layer_and_those_below(module: str) -> None:
    layer = layer_of(module)
    if layer is None:
        return  # tether/__init__.py
    allowed = ALLOWED[layer] | {layer}
    upward = sorted(target for target in graph()[module]
                    if layer_of(target) not in allowed)
    assert upward == [], f"{module} ({layer}) imports above its layer"


def test_the_import_graph_has_no_circle() -> None:
    assert circles(graph()) == []


def test_tether_never_imports_bench() -> None:
    edges = graph()
    up = sorted(f"{name} -> {target}" for name in modules() for target in edges[name]
                if target in bench_modules())
    assert up == []


def test_bench_modules_form_no_circle() -> None:
    """The benches on their own (the whole graph's check above also fails on tether's)."""
    bench = bench_modules()
    edges = {name: {t for t in targets if t in bench}
             for name, targets in graph().items() if name in bench}
    assert circles(edges) == []


def test_the_root_holds_only_what_is_the_whole_programs() -> None:
    root = sorted(path.name for path in TETHER.glob("*.py"))
    assert len(root) <= ROOT_MODULES_MAX, root


def test_no_module_is_a_warehouse() -> None:
    big = sorted(f"{name} ({len(path.read_text().splitlines())} lines)"
                 for name, path in modules().items()
                 if len(path.read_text().splitlines()) > 450)
    assert big == []


def test_no_bench_module_is_a_warehouse() -> None:
    big = sorted(f"{name} ({len(path.read_text().splitlines())} lines)"
                 for name, path in bench_modules().items()
                 if len(path.read_text().splitlines()) > 450)
    assert big == []
