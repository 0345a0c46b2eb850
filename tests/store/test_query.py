"""$filter / $orderby compiler, checked by running the generated SQL against a real SQLite file."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cimid.store.query import Column, QueryError, compile_filter, compile_orderby, normalize_datetime

N = None  # the row whose name is absent

# (seq, name, state, created, doc); '-' in the comments = attribute absent
ROWS = [
    (1, "alpha", "STARTED", "2012-01-01T00:00:00.000Z",
     {"cpu": 1, "memory": 1024, "bootable": True, "properties": {"env": "prod"}}),
    (2, "beta", "STOPPED", "2012-05-25T13:30:15.000Z",
     {"cpu": 2, "memory": 1048576, "bootable": False, "properties": {"env": "dev", "it's": "x"}}),
    (3, "o'brien", "STARTED", "2012-05-25T18:30:15.500Z",
     {"cpu": 4, "memory": 2048, "bootable": True, "properties": {"a.b": "dot", "with space": "yes"}}),
    (4, 'say "hi"', "ERROR", "2013-03-10T08:00:00.000Z",
     {"cpu": 8, "properties": {}}),                                   # memory -, bootable -
    (5, "café", "STARTED", "2011-12-31T23:59:59.999Z",
     {"cpu": 2, "memory": 4096, "bootable": False}),                  # properties -
    (6, "Zeta", None, "2012-05-25T00:00:00.000Z",
     {"memory": 512, "bootable": True, "properties": {"env": "prod", 'say "q"': "v"}}),  # cpu -
    (7, "日本", "PAUSED", "2014-07-01T12:00:00.000Z",
     {"cpu": 16, "memory": 1048576, "bootable": True, "properties": {"env": "staging"}}),
    (8, "gamma", "STOPPED", "2012-05-25T13:30:15.000Z",
     {"cpu": 2, "memory": 8192, "bootable": False, "properties": {"env": "prod"}}),
    (9, "delta", "STARTED", "2012-06-01T00:00:00.000Z",
     {"cpu": 0, "memory": 0, "bootable": True, "properties": {"env": "PROD"}}),
    (10, "back\\slash", "STOPPED", "2012-02-29T12:00:00.000Z",
     {"cpu": 3, "properties": {"env": "dev"}}),                       # memory -, bootable -
    (11, "epsilon", "STARTED", "2015-01-01T00:00:00.000Z",
     {"cpu": 32, "memory": 65536, "bootable": False, "properties": {"env": "prod", "tier": "web"}}),
    (12, None, None, "2016-01-01T00:00:00.000Z", {}),
]
ALL = {r[1] for r in ROWS}
TYPES = {"name": "string", "state": "string", "created": "dateTime", "cpu": "integer", "memory": "integer",
         "bootable": "boolean", "properties": "map"}


def resolve(attribute: str) -> Column | None:
    type_ = TYPES.get(attribute)
    if type_ is None:
        return None
    if attribute in ("name", "state", "created"):
        return Column(attribute, type_)
    return Column(f"json_extract(doc, '$.{attribute}')", type_)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    conn = sqlite3.connect(tmp_path_factory.mktemp("query") / "items.sqlite")
    conn.execute("CREATE TABLE items(seq INTEGER PRIMARY KEY, name TEXT, state TEXT, created TEXT, doc TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                     [(s, n, st, c, json.dumps(d)) for s, n, st, c, d in ROWS])
    conn.commit()
    yield conn
    conn.close()


def names(db, *filters: str) -> set:
    compiled = [compile_filter(f, resolve) for f in filters]
    where = " AND ".join(sql for sql, _ in compiled)
    params = [p for _, ps in compiled for p in ps]
    return {r[0] for r in db.execute(f"SELECT name FROM items WHERE {where} ORDER BY seq", params)}


def ordered(db, orderby: str) -> list:
    return [r[0] for r in db.execute(f"SELECT name FROM items ORDER BY {compile_orderby(orderby, resolve)}, seq")]


CASES = [
    # integers, every operator, both operand orders
    ("cpu = 2", {"beta", "café", "gamma"}),
    ("cpu != 2", {"alpha", "o'brien", 'say "hi"', "Zeta", "日本", "delta", "back\\slash", "epsilon", N}),
    ("cpu < 2", {"alpha", "delta"}),
    ("cpu <= 2", {"alpha", "beta", "café", "gamma", "delta"}),
    ("cpu > 8", {"日本", "epsilon"}),
    ("cpu >= 8", {'say "hi"', "日本", "epsilon"}),
    ("2 < cpu", {"o'brien", 'say "hi"', "日本", "back\\slash", "epsilon"}),
    ("16 <= cpu", {"日本", "epsilon"}),
    ("3 = cpu", {"back\\slash"}),
    ("2 != cpu", {"alpha", "o'brien", 'say "hi"', "Zeta", "日本", "delta", "back\\slash", "epsilon", N}),
    ("8 > cpu", {"alpha", "beta", "o'brien", "café", "gamma", "delta", "back\\slash"}),
    ("cpu > -1", ALL - {"Zeta", N}),
    ("cpu>=8", {'say "hi"', "日本", "epsilon"}),
    ("memory = 1048576", {"beta", "日本"}),
    ("memory >= 4096", {"beta", "café", "日本", "gamma", "epsilon"}),
    ("memory < 1", {"delta"}),
    # absent attributes: only != matches them
    ("memory = 512", {"Zeta"}),
    ("memory != 512", ALL - {"Zeta"}),
    ("memory > 0", {"alpha", "beta", "o'brien", "café", "Zeta", "日本", "gamma", "epsilon"}),
    # strings, both quote kinds and both escape styles, binary comparison
    ("name = 'alpha'", {"alpha"}),
    ('name = "beta"', {"beta"}),
    ("name = 'o\\'brien'", {"o'brien"}),
    ("name = 'o''brien'", {"o'brien"}),
    ('name = "say \\"hi\\""', {'say "hi"'}),
    ('name = "say ""hi"""', {'say "hi"'}),
    ("name = 'say \"hi\"'", {'say "hi"'}),
    ("name = 'back\\\\slash'", {"back\\slash"}),
    ("name = 'café'", {"café"}),
    ("name = '日本'", {"日本"}),
    ("name != 'alpha'", ALL - {"alpha"}),
    ("name < 'c'", {"alpha", "beta", "Zeta", "back\\slash"}),
    ("name >= 'o'", {"o'brien", 'say "hi"', "日本"}),
    ("name > 'gamma'", {"o'brien", 'say "hi"', "日本"}),
    ("name <= 'beta'", {"alpha", "beta", "Zeta", "back\\slash"}),
    ("state = 'STARTED'", {"alpha", "o'brien", "café", "delta", "epsilon"}),
    ("state != 'STARTED'", {"beta", 'say "hi"', "Zeta", "日本", "gamma", "back\\slash", N}),
    ("state = 'started'", set()),
    ("'STOPPED' = state", {"beta", "gamma", "back\\slash"}),
    # dateTimes: Z, offsets, fractions, bare dates, quoted values, mirrored
    ("created = 2012-05-25T13:30:15Z", {"beta", "gamma"}),
    ("created = 2012-05-25T08:30:15-05:00", {"beta", "gamma"}),
    ("created = 2012-05-25T13:30:15.5-05:00", {"o'brien"}),
    ("created = 2012-05-25T20:30:15.500+02:00", {"o'brien"}),
    ("created = 2011-12-31T19:00:00-05:00", {"alpha"}),
    ("created = 2012-05-25", {"Zeta"}),
    ("created < 2012-01-01", {"café"}),
    ("created >= 2014-07-01T12:00:00Z", {"日本", "epsilon", N}),
    ("created > '2012-05-25T13:30:15Z'", {"o'brien", 'say "hi"', "日本", "delta", "epsilon", N}),
    ('created <= "2012-02-29T12:00:00+00:00"', {"alpha", "café", "back\\slash"}),
    ("created != 2012-05-25T13:30:15.000Z", ALL - {"beta", "gamma"}),
    ("2013-01-01 < created", {'say "hi"', "日本", "epsilon", N}),
    ("created > 2011-12-31T23:59:59.998Z and created < 2012-01-01T00:00:00.001Z", {"café", "alpha"}),
    # booleans
    ("bootable = true", {"alpha", "o'brien", "Zeta", "日本", "delta"}),
    ("bootable = FALSE", {"beta", "café", "gamma", "epsilon"}),
    ("bootable != true", {"beta", "café", "gamma", "epsilon", 'say "hi"', "back\\slash", N}),
    ("bootable != false", {"alpha", "o'brien", "Zeta", "日本", "delta", 'say "hi"', "back\\slash", N}),
    ("True = bootable", {"alpha", "o'brien", "Zeta", "日本", "delta"}),
    # precedence: 'and' binds tighter than 'or'; the pair below differs only by the parentheses
    ("cpu = 2 or state = 'STARTED' and bootable = true",
     {"alpha", "beta", "o'brien", "café", "gamma", "delta"}),
    ("(cpu = 2 or state = 'STARTED') and bootable = true", {"alpha", "o'brien", "delta"}),
    ("state = 'STARTED' and bootable = true or cpu = 2",
     {"alpha", "beta", "o'brien", "café", "gamma", "delta"}),
    ("cpu = 2 OR state = 'PAUSED' AND cpu > 100", {"beta", "café", "gamma"}),
    ("((cpu >= 2 and (state = 'STOPPED' or state = 'ERROR')) or (name = 'alpha'))",
     {"alpha", "beta", 'say "hi"', "gamma", "back\\slash"}),
    ("(((name = 'alpha')))", {"alpha"}),
    ("cpu = 1 Or cpu = 3 AnD name = 'back\\\\slash'", {"alpha", "back\\slash"}),
    ("name='alpha' OR name='beta'", {"alpha", "beta"}),
    ("(cpu>=8)and(state='ERROR'or state='PAUSED')", {'say "hi"', "日本"}),
    ("cpu>=2and name='beta'", {"beta"}),
    # property[]
    ("property['env'] = 'prod'", {"alpha", "Zeta", "gamma", "epsilon"}),
    ("property[\"env\"] != 'prod'", {"beta", "o'brien", 'say "hi"', "café", "日本", "delta", "back\\slash", N}),
    ("property['it\\'s'] = 'x'", {"beta"}),
    ("property['it''s'] = \"x\"", {"beta"}),
    ("property['say \"q\"'] = 'v'", {"Zeta"}),
    ('property["say \\"q\\""] = \'v\'', {"Zeta"}),
    ("property['a.b'] = 'dot'", {"o'brien"}),
    ("property['with space'] = 'yes'", {"o'brien"}),
    ("property['env'] > 'prod'", {"日本"}),
    ("property['env'] = 'prod' and property['tier'] = 'web'", {"epsilon"}),
    ("property['nope'] != 'x'", ALL),
    ("property['env'] = 'prod' or cpu = 16", {"alpha", "Zeta", "gamma", "epsilon", "日本"}),
    ("property['x\\'); DROP TABLE items; --'] = 'y'", set()),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0] for c in CASES])
def test_filter(db, text, expected):
    assert names(db, text) == expected


def test_cases_are_distinct():
    assert len({c[0] for c in CASES}) == len(CASES) >= 45


def test_filters_combine_with_and(db):
    # Each compiled filter is parenthesised, so its OR cannot leak into the neighbour's AND.
    assert names(db, "cpu = 2 or cpu = 4", "bootable = true") == {"o'brien"}
    assert names(db, "cpu = 2 or cpu = 4", "state='STOPPED'", "name > 'c'") == {"gamma"}


def test_values_are_bound_not_spliced(db):
    sql, params = compile_filter("name = 'x'' OR 1=1 --' or property['k'' OR 1=1'] = 'v'", resolve)
    assert "1=1" not in sql and "'x" not in sql
    assert params == ["x' OR 1=1 --", "k' OR 1=1", "v"]
    assert names(db, "name = 'x'' OR 1=1 --'") == set()
    assert db.execute("SELECT count(*) FROM items").fetchone() == (12,)


def test_typed_params():
    assert compile_filter("bootable = true", resolve) == ("(json_extract(doc, '$.bootable') = ?)", [1])
    assert compile_filter("cpu != 2", resolve) == ("(json_extract(doc, '$.cpu') IS NOT ?)", [2])
    assert compile_filter("created = '2012-05-25T13:30:15.5-05:00'", resolve)[1] == ["2012-05-25T18:30:15.500Z"]


def test_limits_are_accepted_by_sqlite(db):
    deep = "(" * 64 + "cpu = 2" + ")" * 64
    assert names(db, deep) == {"beta", "café", "gamma"}
    wide = " or ".join(["cpu = 16"] * 511 + ["property['env'] = 'dev'"])
    assert names(db, wide) == {"日本", "beta", "back\\slash"}


BAD = [
    ("", 1),
    ("   ", 1),
    ("cpu >= and name='x'", 8),
    ("name='a' name='b'", 10),
    ("(cpu=1", 1),
    ("((cpu=1) or (cpu=2)", 1),
    ("cpu=1)", 6),
    ("name == 'a'", 6),
    ("name <> 'a'", 6),
    ("name = 'abc", 8),
    ('name = "abc\\"', 8),
    ("property[name] = 'x'", 10),
    ("property['k'] = x", 17),
    ("property['k' = 'x'", 14),
    ("foo = 1", 1),
    ("cpu = 'two'", 7),
    ("cpu = '2'", 7),
    ("name = 2", 8),
    ("bootable > true", 12),
    ("bootable = 1", 12),
    ("created > 'yesterday'", 11),
    ("created > 2012-13-45", 11),
    ("properties = 'x'", 1),
    ("cpu = memory", 7),
    ("2 = 3", 5),
    ("cpu 2", 5),
    ("cpu = 2 and", 12),
    ("cpu = 2 or or cpu = 3", 12),
    ("()", 2),
    ("name ~ 'a'", 6),
    ("cpu = 1 and (name = 'x' cpu = 2)", 25),
    ("cpu = 99999999999999999999", 7),
    ("(" * 65 + "cpu=1" + ")" * 65, 65),
    (" or ".join(["cpu=1"] * 513), 512 * 9 + 1),
]


@pytest.mark.parametrize("text, position", BAD, ids=[b[0][:40] for b in BAD])
def test_malformed_filter(text, position):
    with pytest.raises(QueryError) as info:
        compile_filter(text, resolve)
    assert info.value.position == position
    assert f"at position {position}" in str(info.value)
    assert str(info.value).startswith("$filter: ")


def test_error_messages_are_actionable():
    with pytest.raises(QueryError) as info:
        compile_filter("cpu >= and name='x'", resolve)
    assert str(info.value) == ("$filter: expected a value after '>=', found 'and' at position 8: "
                               "cpu >= and name='x'")
    with pytest.raises(QueryError, match=r"unknown attribute 'foo' at position 3"):
        compile_filter("  foo = 1", resolve)
    with pytest.raises(QueryError, match=r"'cpu' is of type integer; expected an integer like 2, found 'two' at "):
        compile_filter("cpu = 'two'", resolve)


def test_property_needs_a_map_column():
    with pytest.raises(QueryError) as info:
        compile_filter("property['k'] = 'v'", lambda name: Column(name, "string") if name == "name" else None)
    assert info.value.position == 1


def test_orderby_sql():
    assert compile_orderby("name:desc,cpu", resolve) == "name DESC, json_extract(doc, '$.cpu') ASC"
    assert compile_orderby(" name : Desc , cpu:ASC ", resolve) == "name DESC, json_extract(doc, '$.cpu') ASC"


def test_orderby_multi_key(db):
    # SQLite sorts NULL (absent) first ascending and last descending.
    assert ordered(db, "cpu:desc, name") == [
        "epsilon", "日本", 'say "hi"', "o'brien", "back\\slash", "beta", "café", "gamma", "alpha", "delta",
        None, "Zeta"]
    assert ordered(db, "bootable, name:desc") == [
        'say "hi"', "back\\slash", None, "gamma", "epsilon", "café", "beta",
        "日本", "o'brien", "delta", "alpha", "Zeta"]


def test_orderby_datetime_desc(db):
    assert ordered(db, "created:DESC") == [
        None, "epsilon", "日本", 'say "hi"', "delta", "o'brien", "beta", "gamma", "Zeta", "back\\slash", "alpha",
        "café"]


@pytest.mark.parametrize("text, position", [
    ("foo", 1), ("name,foo:desc", 6), ("name:up", 6), ("properties", 1), ("name,", 6), ("name desc", 1),
    ("cpu, :asc", 6),
])
def test_orderby_errors(text, position):
    with pytest.raises(QueryError) as info:
        compile_orderby(text, resolve)
    assert info.value.position == position
    assert str(info.value).startswith("$orderby: ") and f"at position {position}" in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("2012-05-25T13:30:15Z", "2012-05-25T13:30:15.000Z"),
    ("2012-05-25T13:30:15.5-05:00", "2012-05-25T18:30:15.500Z"),
    ("2012-05-25T13:30:15.123456+02:00", "2012-05-25T11:30:15.123Z"),
    ("2012-05-25T13:30:15.9999Z", "2012-05-25T13:30:15.999Z"),
    ("2012-05-25T13:30:15", "2012-05-25T13:30:15.000Z"),
    ("2012-01-31", "2012-01-31T00:00:00.000Z"),
    ("2011-12-31T22:30:00-02:00", "2012-01-01T00:30:00.000Z"),
    ("2012-03-01T00:30:00+01:00", "2012-02-29T23:30:00.000Z"),
    ("2012-05-25T24:00:00Z", "2012-05-26T00:00:00.000Z"),
    ("2012-05-25t13:30:15z", "2012-05-25T13:30:15.000Z"),
    (" 2012-05-25T13:30:15+0530 ", "2012-05-25T08:00:15.000Z"),
])
def test_normalize_datetime(text, expected):
    assert normalize_datetime(text) == expected


@pytest.mark.parametrize("text", [
    "2012-13-01", "2012-02-30", "yesterday", "", "2012-05-25T25:00:00Z", "2012-05-25T13:30:15+2:00",
    "2012-05-25T13:30:61Z", "12-05-25",
])
def test_normalize_datetime_rejects(text):
    with pytest.raises(ValueError):
        normalize_datetime(text)


def test_normalized_strings_sort_chronologically():
    stamps = ["2012-05-25T13:30:15.5-05:00", "2012-05-25T19:00:00+02:00", "2012-05-25", "2012-05-25T18:30:15.4Z"]
    assert sorted(stamps, key=normalize_datetime) == [
        "2012-05-25", "2012-05-25T19:00:00+02:00", "2012-05-25T18:30:15.4Z", "2012-05-25T13:30:15.5-05:00"]
