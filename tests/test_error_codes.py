"""One error catalogue (issue 12.4): tether/errors.py lists every code the hub makes, and
docs/protocol.md's Errors table lists exactly those, with the same statuses.

The hub's modules raise by name (`errors.LLM_NOT_FOUND(name=...)`): a TetherError built by
hand elsewhere, a row left in the catalogue that nothing raises, or a call that does not
fill its template's fields fails here, not in front of a client.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tether import errors

ROOT = Path(__file__).resolve().parents[1]
TETHER = ROOT / "tether"
CATALOGUE = errors.CATALOGUE


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(TETHER.rglob("*.py"))
            if p != TETHER / "errors.py"]


def _documented() -> tuple[set[tuple[int, str]], str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = {(int(status), code)
            for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, re.M)}
    return rows, section


def _entry_calls() -> list[tuple[str, str, ast.Call]]:
    """(where, catalogue name, call) for each `errors.NAME(...)` and `errors.NAME.at(...)`."""
    found = []
    for path, module in _modules():
        for node in ast.walk(module):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "at":
                func = func.value
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and func.value.id == "errors" and func.attr in CATALOGUE:
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", func.attr, node))
    return found


def test_the_docs_table_is_the_catalogue():
    documented, _ = _documented()
    catalogued = {(c.status, c.code) for c in CATALOGUE.values()}
    assert sorted(catalogued - documented) == [], "in tether/errors.py, not in the docs"
    assert sorted(documented - catalogued) == [], "in docs/protocol.md, not in the catalogue"


def test_each_code_is_catalogued_once_and_spelled_as_a_code():
    codes = [c.code for c in CATALOGUE.values()]
    assert len(codes) == len(set(codes))
    for name, entry in CATALOGUE.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", entry.code) and name == entry.code.upper()


def test_the_docs_say_which_type_each_status_has():
    _, section = _documented()
    line = section.split("`type` follows the status:", 1)[1].split("For a 400", 1)[0]
    said = dict(re.findall(r"`([a-z_]+)` \(([^)]*)\)", line))
    for entry in CATALOGUE.values():
        statuses = said[entry.type]
        assert str(entry.status) in statuses or (entry.status >= 500 and "5xx" in statuses), \
            f"{entry.code}: {entry.status} is {entry.type}, the docs say {said}"


def test_only_the_catalogue_builds_a_tether_error():
    built = [f"{path.relative_to(ROOT)}:{node.lineno}"
             for path, module in _modules() for node in ast.walk(module)
             if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "TetherError"]
    assert built == [], "raise a catalogue entry (tether/errors.py) instead"


def test_every_catalogued_code_is_raised_somewhere():
    raised = {name for _, name, _ in _entry_calls()}
    # PUBLISHER_ERROR is also made inside errors.py (a publisher's error result without a
    # code), but the HTTP layer makes it too (a backend's non-OpenAI error body).
    assert sorted(set(CATALOGUE) - raised) == []


@pytest.mark.parametrize("where,name,call",
                         _entry_calls(), ids=[w for w, _, _ in _entry_calls()])
def test_each_raise_fills_its_template(where, name, call):
    # A missing field would be a KeyError (a 500) at the moment the error is due.
    assert not any(kw.arg is None for kw in call.keywords), f"{where}: **fields"
    given = {kw.arg for kw in call.keywords} - {"param"}
    assert given == CATALOGUE[name].fields, f"{where}: {name} needs {CATALOGUE[name].fields}"


def test_a_catalogue_entry_makes_its_error():
    error = errors.LLM_NOT_FOUND(name="x")
    assert (error.status, error.code, error.message) == (404, "llm_not_found", "no Llm named 'x'")
    assert error.envelope() == {"error": {"message": "no Llm named 'x'", "type":
                                          "invalid_request_error", "code": "llm_not_found",
                                          "param": None}}
    relayed = errors.PUBLISHER_ERROR.at(404, why="the backend answered 404")
    assert (relayed.status, relayed.envelope()["error"]["type"]) == (404,
                                                                     "invalid_request_error")
    own = errors.from_publisher(503, "model_loading", None)
    assert (own.status, own.code, own.message) == (503, "model_loading",
                                                   "the publisher reported an error")
