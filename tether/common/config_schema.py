"""Config files declared as JSON Schema: the hub's (tether/config.py) and the publisher's
(tether/publisher/config.py) both state each setting once, as a dataclass field carrying its
default and its schema; this module builds the file's schema from those fields, coerces
text (environment variables, flags) by each schema's type, and reports every error in a
file at once, each naming the file and the key.

Schema extensions (ignored by jsonschema, read here):
- `x-message`: the error text for any failure of that (sub)schema, instead of jsonschema's;
- `x-messages`: the same per failing keyword (e.g. {"dependentRequired": ...});
- `x-required`: the error text when that property is missing;
- `x-aliases`: text values mapped before validation (e.g. auth = "true" means "on").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

REQUIRED: Any = dataclasses.MISSING  # setting(REQUIRED, ...): no default


def setting(default: Any, schema: dict[str, Any]) -> Any:
    """A dataclass field whose value the config file may set, shaped by `schema`."""
    return dataclasses.field(default=default, metadata={"schema": schema})


def object_schema(
    cls: type, *, required: tuple[str, ...] = (), extra_keywords: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The schema of a table whose keys are `cls`'s declared settings (`extra_keywords` go on
    the table itself)."""
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "schema" not in f.metadata:
            continue
        schema = dict(f.metadata["schema"])
        if f.default is not dataclasses.MISSING and f.default is not None:
            schema.setdefault("default", list(f.default) if isinstance(f.default, tuple)
                              else f.default)
        properties[f.name] = schema
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False, **(extra_keywords or {})}


def settings_of(cls: type) -> dict[str, dict[str, Any]]:
    """Each declared setting of `cls` and its schema."""
    return {f.name: f.metadata["schema"] for f in dataclasses.fields(cls)
            if "schema" in f.metadata}


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


_TRUE = ("true", "1", "on", "yes")
_FALSE = ("false", "0", "off", "no")


def coerce(schema: dict[str, Any], value: Any) -> Any:
    """Bring a value (text from the environment or a flag, or a file's value) to the type its
    schema names, where that is unambiguous; anything else is left for validation to report."""
    aliases = schema.get("x-aliases")
    if aliases is not None and isinstance(value, str | bool | int):
        text = str(value).lower()
        return aliases.get(text, text)
    types = _types(schema)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "integer" in types:
                return int(text)
            if "number" in types:
                return float(text)
        except ValueError:
            return value
        if "boolean" in types and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        if "array" in types:
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
    if "array" in types and isinstance(value, list):
        return [item.strip() if isinstance(item, str) else item for item in value
                if not (isinstance(item, str) and not item.strip())]
    return value


def path_of(error: ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error: ValidationError) -> tuple[str, str]:
    """(where, what) for one validation error: where is a dotted key path."""
    where = path_of(error)
    # The failing keyword's own schema: always an object for the keywords read below.
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "required":
        key = re.match(r"'(.*)' is a required property", error.message)
        name = key.group(1) if key else str(error.validator_value)
        wanted = schema.get("properties", {}).get(name, {})
        return where, wanted.get("x-required", f"'{name}' is required")
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(schema.get("properties", {}))
        unknown = sorted(set(error.instance) - known)
        return where, f"unknown key {', '.join(repr(k) for k in unknown)}"
    message = schema.get("x-messages", {}).get(error.validator, schema.get("x-message"))
    if message is None:
        return where, error.message
    if isinstance(error.instance, str | int | float | bool):
        message += f" (not {error.instance!r})"
    return where, message


def check(
    schema: dict[str, Any], data: Any, render: Callable[[str, str], str],
) -> list[str]:
    """Every error in `data`, each rendered by render(where, what), in document order."""
    validator = Draft202012Validator(schema)
    found = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    lines: list[str] = []
    for error in found:
        line = render(*describe(error))
        if line not in lines:
            lines.append(line)
    return lines
