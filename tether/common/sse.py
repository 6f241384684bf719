"""Server-Sent Events: the frames the hub writes and the parser publishers and tests read with."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def frame(event: str | None, data: str, event_id: int | str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    if event:
        head += f"event: {event}\n"
    # A data value may hold newlines only as separate data: lines.
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"{head}{body}\n"


def comment(text: str) -> str:
    return f": {text}\n\n"


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def parse(lines: Iterable[str]) -> Iterator[Event | str]:
    """Turn decoded lines (without line endings) into Events; comments come out as str."""
    data: list[str] = []
    event: str = "message"
    event_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                yield Event(event, "\n".join(data), event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            yield line[1:].strip()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Split a byte stream into decoded lines (no endings), as they arrive."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8")
