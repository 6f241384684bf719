"""Layers import downward only (issue 12.2): the publisher is a separate program and must
not reach into the hub's HTTP or actor code, and the upstream relay knows no actor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TETHER = Path(__file__).resolve().parent.parent / "tether"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-local imports count too)."""
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
    return found


def reaches(modules: set[str], package: str) -> list[str]:
    return sorted(name for name in modules if name == package or name.startswith(package + "."))


def test_the_import_walk_sees_every_spelling(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import tether.http.app\nfrom tether import actors\n"
        "def f():\n    from tether.actors.base import Parent\n")
    found = imported_modules(sample)
    assert reaches(found, "tether.http") == ["tether.http.app"]
    assert reaches(found, "tether.actors") == [
        "tether.actors", "tether.actors.base", "tether.actors.base.Parent"]


@pytest.mark.parametrize(
    "path", sorted((TETHER / "publisher").rglob("*.py")), ids=lambda p: p.name)
def test_the_publisher_imports_nothing_of_the_hubs_http_or_actors(path: Path) -> None:
    found = imported_modules(path)
    assert reaches(found, "tether.http") == []
    assert reaches(found, "tether.actors") == []


@pytest.mark.parametrize("name", ["upstream.py", "actor.py", "names.py"])
def test_shared_modules_import_no_actor_module(name: str) -> None:
    assert reaches(imported_modules(TETHER / name), "tether.actors") == []
