"""docs/protocol.md lists every error code the hub can make (issue 10, Done when).

The codes are read from the source itself: every `TetherError(status, code, …)` the hub's
modules build, with the constants a non-literal code is chosen from. A code added to the
source without a row in the table (or a row left behind for a code no longer made) fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The publisher's own codes travel inside its error results; the hub relays them verbatim.
NOT_HUB = ("publisher", "demo.py", "demo_backend.py")
CODE = re.compile(r"^[a-z]+(?:_[a-z]+)*$")


def _hub_modules() -> list[Path]:
    return [p for p in sorted((ROOT / "tether").rglob("*.py"))
            if not any(part in p.relative_to(ROOT / "tether").parts or p.name == part
                       for part in NOT_HUB)]


def _constants(node: ast.AST, module: ast.Module) -> set[str]:
    """The code strings an expression can evaluate to: literals in it (not the keys it looks
    up with `.get(...)`), and the values of the module-level dicts/names it reads."""
    found: set[str] = set()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "get":
        found |= _constants(node.func.value, module)
        for arg in node.args[1:]:  # the default; args[0] is the key looked up
            found |= _constants(arg, module)
        return found
    if isinstance(node, ast.Name):
        for stmt in module.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets) \
                    and stmt.value is not None:
                value = stmt.value
                parts = value.values if isinstance(value, ast.Dict) else [value]
                for part in parts:
                    found |= _constants(part, module)
        return found
    for child in ast.iter_child_nodes(node):
        found |= _constants(child, module)
    return found


def source_codes() -> dict[str, set[int | None]]:
    """code -> the statuses it is made with (None where the status is not a literal)."""
    codes: dict[str, set[int | None]] = {}
    for path in _hub_modules():
        module = ast.parse(path.read_text(), str(path))
        for node in ast.walk(module):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else None
            if name != "TetherError":
                continue
            args = list(node.args) + [kw.value for kw in node.keywords
                                      if kw.arg in ("status", "code")]
            assert len(args) >= 2, f"{path}:{node.lineno}: TetherError without a code"
            status = args[0].value if isinstance(args[0], ast.Constant) else None
            made = {c for c in _constants(args[1], module) if CODE.match(c)}
            assert made, f"{path}:{node.lineno}: cannot tell which code this error has"
            for code in made:
                codes.setdefault(code, set()).add(status)
    return codes


def documented_codes() -> dict[str, set[int]]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    errors = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[int]] = {}
    for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", errors, re.M):
        table.setdefault(code, set()).add(int(status))
    return table


def test_the_scan_finds_the_codes_it_should():
    # Guards the scanner itself: literals, helpers in errors.py, the falcon map, defaults.
    codes = source_codes()
    for code in ("llm_not_found", "session_not_found", "method_not_allowed", "not_found",
                 "publisher_error", "queue_full", "internal_error"):
        assert code in codes, code


def test_every_error_code_the_hub_makes_is_documented():
    made, documented = source_codes(), documented_codes()
    missing = sorted(set(made) - set(documented))
    assert not missing, f"codes made in tether/ but not in docs/protocol.md, Errors: {missing}"
    stale = sorted(set(documented) - set(made))
    assert not stale, f"codes in docs/protocol.md that the hub never makes: {stale}"
    for code, statuses in made.items():
        literal = statuses - {None}
        assert literal <= documented[code], \
            f"{code}: made with status {sorted(literal)}, documented {sorted(documented[code])}"
