"""Compile CIMI `$filter` / `$orderby` values (DSP0263 §4.1.6) into SQLite SQL.

Filtering and sorting run inside SQLite: the compiler only emits SQL text built from the resolver's
column expressions plus bound parameters for every user-supplied value, so no value is ever spliced in.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

MAX_DEPTH = 64          # nested parentheses; keeps recursion (and SQLite's expression depth) bounded
MAX_COMPARISONS = 512   # keeps the SQL and its parameter count far below SQLite's limits

_OPS = ("<", "<=", "=", ">=", ">", "!=")
_MIRROR = {"<": ">", "<=": ">=", "=": "=", ">=": "<=", ">": "<", "!=": "!="}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
# Sortable/comparable types -> what a matching $filter value looks like (for error messages).
_EXPECTED = {"string": "a quoted string like 'x'", "integer": "an integer like 2", "boolean": "true or false",
             "dateTime": "a dateTime like 2012-05-25T13:30:15Z"}


class QueryError(ValueError):
    """A malformed $filter/$orderby. `position` is 1-based char index into the text (or None)."""

    def __init__(self, message: str, position: int | None = None):
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True)
class Column:
    sql: str    # SQL expression for the attribute, e.g. "name" or "json_extract(doc, '$.cpu')"
    type: str   # "string" | "integer" | "boolean" | "dateTime" | "map"


Resolver = Callable[[str], "Column | None"]


def _fail(param: str, text: str, problem: str, position: int) -> QueryError:
    # Echo the text so the reader can count to the position; long input is cut around the spot.
    shown = text if len(text) <= 120 else "…" + text[max(position - 40, 0):position + 40] + "…"
    return QueryError(f"{param}: {problem} at position {position}" + (f": {shown}" if text.strip() else ""),
                      position)


# ---------------------------------------------------------------- dateTime

_DATETIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?)?"
    r"(?:([Zz])|([+-])(\d\d)(?::?(\d\d))?)?")


def normalize_datetime(text: str) -> str:
    """Any xs:dateTime / ISO 8601 (with Z, offset, or none=UTC; also a bare date 2012-01-31) -> UTC
    'YYYY-MM-DDTHH:MM:SS.mmmZ' (exactly 3 fractional digits). This is the form cimid stores dateTimes in,
    so string comparison orders them. Raise ValueError if unparsable."""
    m = _DATETIME.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a dateTime: {text!r}")
    year, month, day, hour, minute, second, frac, _z, sign, off_h, off_m = m.groups()
    hour, minute, second = int(hour or 0), int(minute or 0), int(second or 0)
    micro = int((frac or "0")[:6].ljust(6, "0"))
    offset = dt.timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
    try:
        extra = dt.timedelta()
        if hour == 24 and minute == second == micro == 0:  # xs:dateTime allows 24:00:00 = next midnight
            hour, extra = 0, dt.timedelta(days=1)
        tz = dt.timezone(-offset if sign == "-" else offset)
        when = dt.datetime(int(year), int(month), int(day), hour, minute, second, micro, tz) + extra
        u = when.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a dateTime: {text!r} ({exc})") from None
    return (f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
            f".{u.microsecond // 1000:03d}Z")


# ---------------------------------------------------------------- tokens

@dataclass
class _Tok:
    kind: str   # ident, and, or, bool, int, datetime, string, op, ( ) [ ] end
    text: str   # source spelling (for messages)
    pos: int    # 1-based
    value: object = None


# Anything starting like a date (4 digits and '-') is taken whole and must parse, so `2012-13-45`
# gives one clear error instead of a confusing split; otherwise digits end at the first non-digit.
_NUMBERISH = re.compile(r"\d{4}-[\w:.+\-]*|-?\d+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPCHARS = re.compile(r"[<>=!]+")


def _string(text: str, i: int) -> tuple[str, int]:
    """Read a quoted string starting at index i; return (value, index after the closing quote)."""
    quote, out, j = text[i], [], i + 1
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text):
            out.append(text[j + 1])
            j += 2
        elif c == quote and text[j + 1:j + 2] == quote:  # SQL-style doubled quote
            out.append(quote)
            j += 2
        elif c == quote:
            return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    raise _fail("$filter", text, f"unterminated string; the {quote} that opens it is", i + 1)


def _tokens(text: str) -> list[_Tok]:
    toks, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()[]":
            toks.append(_Tok(c, c, i + 1))
            i += 1
        elif c in "'\"":
            value, j = _string(text, i)
            toks.append(_Tok("string", text[i:j], i + 1, value))
            i = j
        elif m := _OPCHARS.match(text, i):
            if m[0] not in _OPS:
                raise _fail("$filter", text, f"unknown operator '{m[0]}' (use one of {' '.join(_OPS)})", i + 1)
            toks.append(_Tok("op", m[0], i + 1))
            i = m.end()
        elif m := _NUMBERISH.match(text, i):
            toks.append(_number(text, m[0], i + 1))
            i = m.end()
        elif m := _IDENT.match(text, i):
            word = m[0].lower()
            if word in ("and", "or"):
                toks.append(_Tok(word, m[0], i + 1))
            elif word in ("true", "false"):
                toks.append(_Tok("bool", m[0], i + 1, word == "true"))
            else:
                toks.append(_Tok("ident", m[0], i + 1))
            i = m.end()
        else:
            raise _fail("$filter", text, f"unexpected character {c!r}", i + 1)
    toks.append(_Tok("end", "", len(text) + 1))
    return toks


def _number(text: str, run: str, pos: int) -> _Tok:
    if re.fullmatch(r"-?\d+", run):
        value = int(run)
        if not _INT64[0] <= value <= _INT64[1]:
            raise _fail("$filter", text, f"integer {run} is out of range", pos)
        return _Tok("int", run, pos, value)
    try:
        return _Tok("datetime", run, pos, normalize_datetime(run))
    except ValueError:
        raise _fail("$filter", text, f"'{run}' is not a valid dateTime (like 2012-05-25T13:30:15Z)",
                    pos) from None


def _describe(tok: _Tok) -> str:
    return "the end of the filter" if tok.kind == "end" else f"'{tok.text}'"


# ---------------------------------------------------------------- $filter

_VALUE_KINDS = ("int", "datetime", "string", "bool")


class _Parser:
    def __init__(self, text: str, resolve: Resolver):
        self.text, self.resolve = text, resolve
        self.toks, self.i = _tokens(text), 0
        self.depth = self.comparisons = 0
        self.params: list = []

    def error(self, problem: str, pos: int) -> QueryError:
        return _fail("$filter", self.text, problem, pos)

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def parse(self) -> str:
        if self.peek().kind == "end":
            raise self.error("the filter is empty; expected a comparison such as name='x'", 1)
        sql = self.or_expr()
        tok = self.peek()
        if tok.kind == ")":
            raise self.error("')' has no matching '('", tok.pos)
        if tok.kind != "end":
            raise self.error(f"expected 'and', 'or' or the end of the filter, found {_describe(tok)}", tok.pos)
        return f"({sql})"

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.peek().kind == "or":
            self.take()
            parts.append(self.and_expr())
        return " OR ".join(parts)

    def and_expr(self) -> str:
        parts = [self.comparison()]
        while self.peek().kind == "and":
            self.take()
            parts.append(self.comparison())
        return " AND ".join(parts)  # SQL gives AND precedence over OR too

    def comparison(self) -> str:
        tok = self.peek()
        if tok.kind == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"parentheses are nested deeper than {MAX_DEPTH} levels", tok.pos)
            self.take()
            if self.peek().kind == ")":
                raise self.error("expected a comparison inside '()'", self.peek().pos)
            inner = self.or_expr()
            if self.peek().kind != ")":
                close = self.peek()
                if close.kind == "end":
                    raise self.error("unbalanced parentheses; the '(' that is never closed is", tok.pos)
                raise self.error(f"expected ')', 'and' or 'or', found {_describe(close)}", close.pos)
            self.take()
            self.depth -= 1
            return f"({inner})"
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise self.error(f"the filter has more than {MAX_COMPARISONS} comparisons", tok.pos)
        if tok.kind == "ident" and tok.text == "property" and self.peek(1).kind == "[":
            return self.property(tok)
        if tok.kind == "ident":
            attr = self.take()
            op = self.operator(attr)
            value = self.take()
            if value.kind not in _VALUE_KINDS:
                raise self.error(f"expected a value after '{op.text}', found {_describe(value)}", value.pos)
            return self.compare(attr, op.text, value)
        if tok.kind in _VALUE_KINDS:
            value = self.take()
            op = self.operator(value)
            attr = self.take()
            if attr.kind != "ident":
                raise self.error(f"expected an attribute name after '{op.text}', found {_describe(attr)}",
                                 attr.pos)
            return self.compare(attr, _MIRROR[op.text], value)
        raise self.error(f"expected a comparison such as name='x', found {_describe(tok)}", tok.pos)

    def operator(self, left: _Tok) -> _Tok:
        op = self.take()
        if op.kind != "op":
            raise self.error(f"expected an operator ({' '.join(_OPS)}) after '{left.text}', "
                             f"found {_describe(op)}", op.pos)
        return op

    def compare(self, attr: _Tok, op: str, value: _Tok) -> str:
        col = self.resolve(attr.text)
        if col is None:
            raise self.error(f"unknown attribute '{attr.text}'", attr.pos)
        if col.type == "map":
            raise self.error(f"attribute '{attr.text}' is a map; compare its entries with "
                             f"property['key'] = 'value'", attr.pos)
        param = self.typed_value(attr.text, col.type, op, value)
        self.params.append(param)
        # Absent attributes are NULL: '=' and the orderings never match them, '!=' always does.
        return f"{col.sql} IS NOT ?" if op == "!=" else f"{col.sql} {op} ?"

    def typed_value(self, name: str, type_: str, op: str, value: _Tok):
        def mismatch() -> QueryError:
            return self.error(f"attribute '{name}' is of type {type_}; expected {_EXPECTED.get(type_, type_)}, "
                              f"found {value.text}", value.pos)
        if type_ == "integer" and value.kind == "int":
            return value.value
        if type_ == "string" and value.kind == "string":
            return value.value
        if type_ == "boolean" and value.kind == "bool":
            if op not in ("=", "!="):
                raise self.error(f"boolean attribute '{name}' can only be compared with = or !=", value.pos)
            return 1 if value.value else 0  # json_extract yields 1/0 for JSON true/false
        if type_ == "dateTime" and value.kind == "datetime":
            return value.value
        if type_ == "dateTime" and value.kind == "string":
            try:
                return normalize_datetime(value.value)
            except ValueError:
                raise mismatch() from None
        raise mismatch()

    def property(self, start: _Tok) -> str:
        self.i += 2  # 'property' '['
        key = self.take()
        if key.kind != "string":
            raise self.error(f"property key must be a quoted string like property['key'], "
                             f"found {_describe(key)}", key.pos)
        close = self.take()
        if close.kind != "]":
            raise self.error(f"expected ']' after the property key, found {_describe(close)}", close.pos)
        op = self.operator(close)
        value = self.take()
        if value.kind != "string":
            raise self.error(f"property values are strings; expected a quoted string after '{op.text}', "
                             f"found {_describe(value)}", value.pos)
        col = self.resolve("properties")
        if col is None or col.type != "map":
            raise self.error("these resources have no properties to filter on", start.pos)
        self.params += [key.value, value.value]
        each = f"SELECT 1 FROM json_each({col.sql}) AS cimi_p WHERE cimi_p.key = ? AND cimi_p.value"
        # '!=' is the negation of '=', so a missing key matches, like an absent attribute does.
        if op.text == "!=":
            return f"NOT EXISTS ({each} = ?)"
        return f"EXISTS ({each} {op.text} ?)"


def compile_filter(text: str, resolve: Resolver) -> tuple[str, list]:
    """Return (sql_boolean_expression, params) for one $filter value."""
    parser = _Parser(text, resolve)
    return parser.parse(), parser.params


# ---------------------------------------------------------------- $orderby

_ORDER_ITEM = re.compile(r"\s*(?P<attr>[^:]*?)\s*(?::\s*(?P<dir>.*?)\s*)?")


def compile_orderby(text: str, resolve: Resolver) -> str:
    """'name:desc,cpu' -> 'name DESC, json_extract(doc, '$.cpu') ASC'.
    Unknown attribute or bad direction -> QueryError."""
    terms, start = [], 0
    for item in text.split(","):
        m = _ORDER_ITEM.fullmatch(item)  # always matches; the parts are checked below
        name, direction, pos = m["attr"], m["dir"], start + m.start("attr") + 1
        if not _IDENT.fullmatch(name):
            raise _fail("$orderby", text, "expected attribute, attribute:asc or attribute:desc", pos)
        col = resolve(name)
        if col is None:
            raise _fail("$orderby", text, f"unknown attribute '{name}'", pos)
        if col.type not in _EXPECTED:
            raise _fail("$orderby", text, f"attribute '{name}' cannot be sorted", pos)
        if direction is not None and direction.lower() not in ("asc", "desc"):
            raise _fail("$orderby", text, f"sort direction must be 'asc' or 'desc', not '{direction}'",
                        start + m.start("dir") + 1)
        terms.append(f"{col.sql} {(direction or 'asc').upper()}")
        start += len(item) + 1
    return ", ".join(terms)


# ---------------------------------------------------------------- whole queries

def compile_query(filters: list[str], orderby: list[str], resolve: Resolver) -> tuple[str, str, list]:
    """Every $filter (ANDed) and $orderby of one request -> (where, order by, params); "" where absent."""
    where, params = [], []
    for text in filters:
        sql, values = compile_filter(text, resolve)
        where.append(sql)
        params.extend(values)
    order = ", ".join(compile_orderby(text, resolve) for text in orderby if text.strip())
    return " AND ".join(where), order, params


def _sql_value(value):
    """A document's value as its column holds it: a map (properties) as JSON text, which json_each reads."""
    return json.dumps(value) if isinstance(value, dict | list) else value


def page_documents(docs: list[dict], columns: dict[str, str], *, filters: list[str] = (),
                   orderby: list[str] = (), first: int | None = None,
                   last: int | None = None) -> tuple[int, list[dict]]:
    """$filter, $orderby and paging over a few documents held in memory (ResourceMetadata), by the same
    compiler and SQLite as stored collections, so both answer alike. `columns`: attribute -> type, of
    top-level scalar attributes only."""
    names = list(columns)
    where, order, params = compile_query(
        filters, orderby, lambda name: Column(f'"{name}"', columns[name]) if name in columns else None)
    quoted = ", ".join(f'"{n}"' for n in names)
    db = sqlite3.connect(":memory:")
    try:
        db.execute(f"CREATE TABLE docs (seq INTEGER PRIMARY KEY, {quoted})")
        db.executemany(f"INSERT INTO docs VALUES (?, {', '.join('?' * len(names))})",
                       [(i, *(_sql_value(d.get(n)) for n in names)) for i, d in enumerate(docs)])
        cond = where or "1"
        (count,), = db.execute(f"SELECT count(*) FROM docs WHERE {cond}", params).fetchall()
        start = max(first or 1, 1)
        limit = -1 if last is None else max(last - start + 1, 0)
        seqs = db.execute(f"SELECT seq FROM docs WHERE {cond} ORDER BY {order + ', ' if order else ''}seq"
                          " LIMIT ? OFFSET ?", [*params, limit, start - 1]).fetchall()
    finally:
        db.close()
    return count, [docs[s] for (s,) in seqs]
