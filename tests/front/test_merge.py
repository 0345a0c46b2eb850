"""The front's merge against an independent oracle: rows spread over three SQLite "nodes", each sorted
and cut by SQLite as a node does, merged by the front, must equal the page one SQLite holding every row
gives (design study §6.2, T0)."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from cimid.front.merge import merge, orderby_param, parse_orderby

COLUMNS = ("name", "cpu", "state")
names = st.one_of(st.none(), st.text(alphabet="abcAB_é中", max_size=3))
cpus = st.one_of(st.none(), st.integers(-2, 4))
states = st.sampled_from(["STARTED", "STOPPED", None])
rows = st.lists(st.tuples(names, cpus, states), max_size=40)
orders = st.lists(st.tuples(st.sampled_from(COLUMNS), st.booleans()), max_size=3, unique_by=lambda o: o[0])


def _store(rows) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE r (id TEXT PRIMARY KEY, name, cpu, state)")
    db.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", rows)
    return db


def _page(db, order, where: str, first: int, last: int | None) -> list[dict]:
    by = ", ".join(f"{name} {'DESC' if desc else 'ASC'}" for name, desc in order)
    limit = -1 if last is None else last - first + 1
    if limit < 0 and last is not None:  # as cimid's store: $last before $first is an empty page
        return []
    found = db.execute(f"SELECT id, name, cpu, state FROM r WHERE {where} ORDER BY {by} LIMIT ? OFFSET ?",
                       (limit, first - 1)).fetchall()
    return [{k: v for k, v in zip(("id", *COLUMNS), row) if v is not None} for row in found]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.tuples(rows, rows, rows), orders, st.sampled_from(["1", "cpu >= 1", "state = 'STARTED'"]),
       st.integers(1, 50), st.one_of(st.none(), st.integers(1, 60)))
def test_merged_pages_equal_one_store(spread, order_items, where, first, last):
    numbered = [[(f"id-{n}-{i:03}", *row) for i, row in enumerate(part)] for n, part in enumerate(spread)]
    order = parse_orderby([",".join(f"{n}:{'desc' if d else 'asc'}" for n, d in order_items)])
    assert order[-1] == ("id", False)
    nodes = [_store(part) for part in numbered]
    # each node is asked for its own rows 1..last, as the front asks
    pages = [_page(db, order, where, 1, last) for db in nodes]
    merged = merge(pages, order, first, last)
    oracle = _page(_store([r for part in numbered for r in part]), order, where, first, last)
    assert merged == oracle


def test_orderby_parameters():
    assert parse_orderby(["name:desc, cpu", "state:asc"]) == [("name", True), ("cpu", False), ("state", False),
                                                             ("id", False)]
    assert parse_orderby(["id:desc"]) == [("id", True)]
    assert orderby_param(parse_orderby([])) == "id:asc"
    assert merge([[{"id": "a"}], [{"id": "b"}]], [("id", False)], 3, None) == []
    assert merge([[{"id": "a"}], [{"id": "b"}]], [("id", False)], 2, 1) == []
