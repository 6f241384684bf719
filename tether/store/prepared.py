"""Statements whose SQL peewee renders once, then runs many times with new values.

peewee renders a query's SQL on every execution by walking its node tree, ~0.1-0.2 ms a
statement: most of what a registration cost (issue 11.12). It has no prepared statements,
so a `Prepared` keeps the SQL peewee rendered for one shape of query, with an `Arg` where
each value goes, and binds each run's values in their places, converted as the field
converts them (JSON, booleans, dates). The SQL is kept per kind of database: SQLite's and
PostgreSQL's differ (quoting, the parameter mark, RETURNING).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import peewee

from tether.store.db import database

M = TypeVar("M", bound=peewee.Model)


class Param:
    """One value of a run: `values[key]`, or `values[key][index]` for one of a list's
    items, converted by `field` (as peewee would for that column)."""

    __slots__ = ("key", "field", "index")

    def __init__(self, key: str, field: peewee.Field | None, index: int | None) -> None:
        self.key = key
        self.field = field
        self.index = index

    def bind(self, values: Mapping[str, Any]) -> Any:
        value = values[self.key] if self.index is None else values[self.key][self.index]
        return self.field.db_value(value) if self.field is not None else value


class Arg(peewee.Node):
    """Where a value goes in a prepared query: renders a placeholder whose parameter is a
    `Param`, bound at each run."""

    def __init__(self, key: str, field: peewee.Field | None = None,
                 index: int | None = None) -> None:
        super().__init__()
        self.param = Param(key, field, index)

    def __sql__(self, ctx: peewee.Context) -> peewee.Context:
        # converter=False: no field's db_value may touch the Param now; bind() applies it.
        return ctx.value(self.param, converter=False)


def each(key: str, field: peewee.Field, count: int) -> peewee.NodeList:
    """`(?, ?, …)`: the `count` items of the list `values[key]`, for an IN."""
    return peewee.EnclosedNodeList([Arg(key, field, i) for i in range(count)])


def fields_of(model: type[peewee.Model], *skip: peewee.Field) -> dict[peewee.Field, Arg]:
    """An Arg for every field of `model` but `skip`, keyed by field name: an INSERT or
    UPDATE of whole rows, bound with a row's `__data__`."""
    skipped = {f.name for f in skip}  # (a field's == builds an expression: no `in`)
    return {f: Arg(f.name, f) for f in model._meta.sorted_fields if f.name not in skipped}


class Prepared:
    """`build(*shape)` makes the peewee query; every value in it must be an Arg. A shape is
    what changes the SQL itself (the number of names in an IN list)."""

    KEEP = 64  # shapes kept per statement: a rare long IN list is rendered each time

    def __init__(self, build: Callable[..., peewee.Query]) -> None:
        self._build = build
        self._rendered: dict[tuple[Any, ...], tuple[str, list[Param]]] = {}

    def render(self, *shape: Any) -> tuple[str, list[Param]]:
        key = (type(database.obj), *shape)
        rendered = self._rendered.get(key)
        if rendered is None:
            sql, params = self._build(*shape).sql()
            if not all(isinstance(p, Param) for p in params):
                # A literal value would be frozen into every later run.
                raise ValueError(f"every value of a prepared statement must be an Arg: {sql}")
            rendered = (sql, params)
            if len(self._rendered) < self.KEEP:
                self._rendered[key] = rendered
        return rendered

    def params(self, shape: Sequence[Any], values: Mapping[str, Any]) -> tuple[str, list[Any]]:
        sql, params = self.render(*shape)
        return sql, [param.bind(values) for param in params]

    def execute(self, values: Mapping[str, Any], *shape: Any) -> Any:
        """Run it (inside the caller's connection); returns the DB-API cursor."""
        sql, params = self.params(shape, values)
        return database.execute_sql(sql, params)

    def select(self, model: type[M], values: Mapping[str, Any], *shape: Any) -> list[M]:
        """Run a SELECT of `model`'s columns: model instances, each column converted by
        its field as peewee's own select would."""
        sql, params = self.params(shape, values)
        return list(model.raw(sql, *params))

    def insert(self, values: Mapping[str, Any], *shape: Any) -> Any:
        """Run an INSERT; returns the new row's auto id: what its RETURNING gave (peewee
        adds one on PostgreSQL), else the cursor's lastrowid (SQLite)."""
        cursor = self.execute(values, *shape)
        if cursor.description:
            return cursor.fetchone()[0]
        return cursor.lastrowid
