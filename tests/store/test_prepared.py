"""Prepared statements (tether/store/prepared.py): the SQL peewee renders once must run
every later time with the values of that run, converted as peewee converts them — on SQLite
and on PostgreSQL (the `database_url` fixture runs each test on both)."""

from __future__ import annotations

import datetime as dt

import pytest

from tether.store import db
from tether.store.models import KIND_VIRTUAL, Llm, LlmMember, utcnow
from tether.store.prepared import Arg, Prepared, each, fields_of

pytestmark = pytest.mark.usefixtures("database")


INSERT_LLM = Prepared(lambda: Llm.insert(fields_of(Llm)))
LLMS_NAMED = Prepared(lambda n: Llm.select().where(Llm.name.in_(each("names", Llm.name, n)))
                      .order_by(Llm.name))
INSERT_MEMBER = Prepared(lambda: LlmMember.insert(fields_of(LlmMember, LlmMember.id)))


def llm(name: str, **fields) -> Llm:
    unset = dict.fromkeys(("provider_session_id", "last_heartbeat_at", "inactive_since"))
    return Llm(**{**unset, "name": name, "type": "openai", "model": "m",
                  "kind": KIND_VIRTUAL, **fields})


def test_the_sql_and_values_are_peewees_own():
    row = llm("a", extra_config={"k": [1, "x"]}, last_heartbeat_at=utcnow())
    sql, params = INSERT_LLM.params((), row.__data__)
    with db.connection():
        assert (sql, params) == Llm.insert(row.__data__).sql()


def test_each_run_binds_its_own_values_and_reads_convert_them():
    first = llm("a", extra_config={"k": [1]}, last_heartbeat_at=utcnow())
    second = llm("b", description="two", inactive_since=utcnow() - dt.timedelta(hours=1))
    with db.connection() as conn, conn.atomic():
        INSERT_LLM.execute(first.__data__)
        INSERT_LLM.execute(second.__data__)
    with db.connection():
        # One statement, several shapes: one name, then two.
        [a] = LLMS_NAMED.select(Llm, {"names": ["a"]}, 1)
        both = LLMS_NAMED.select(Llm, {"names": ["b", "a"]}, 2)
        assert [x.name for x in both] == ["a", "b"]
        assert all(x.to_wire() == Llm.get(Llm.name == x.name).to_wire() for x in both)
    assert a.to_wire() == first.to_wire()
    assert both[1].to_wire() == second.to_wire()
    assert isinstance(a.last_heartbeat_at, dt.datetime) and a.extra_config == {"k": [1]}


def test_an_insert_returns_the_id_of_its_row():
    with db.connection() as conn, conn.atomic():
        ids = [INSERT_MEMBER.insert(LlmMember(
            llm_name="a", session_id=f"s{i}", model="m", pool=True, last_heartbeat_at=None,
            inactive_since=None, max_concurrency=None, key_name=None).__data__)
            for i in range(2)]
    with db.connection():
        assert [(x.id, x.session_id, x.pool) for x in LlmMember.select().order_by(
            LlmMember.id)] == [(ids[0], "s0", True), (ids[1], "s1", True)]


def test_a_value_that_is_not_an_arg_is_refused():
    frozen = Prepared(lambda: Llm.select().where(Llm.name == "a", Llm.type == Arg("type")))
    with db.connection(), pytest.raises(ValueError, match="must be an Arg"):
        frozen.render()
