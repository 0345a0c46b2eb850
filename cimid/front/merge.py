"""The exact merge of per-node collection pages: every node sorts its own rows by the same total order
($orderby, then id), so a k-way merge of their first `$last` rows, sliced to [$first, $last], is the
page one store holding every row would give (design study §4.1, as Nova merges across cells)."""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Iterable

OrderBy = list[tuple[str, bool]]  # (attribute, descending)


def parse_orderby(values: list[str]) -> OrderBy:
    """The $orderby values of a request ("a:desc, b" ...) as (attribute, descending) pairs, with `id` as
    the final tie-break that makes the order total across nodes. Malformed items are left for the nodes
    to refuse (they answer the 400)."""
    order: OrderBy = []
    for value in values:
        for item in value.split(","):
            name, _, direction = item.strip().rpartition(":")  # the last: cimid:node has one of its own
            if direction.strip().lower() not in ("asc", "desc"):
                name, direction = item.strip(), ""
            if name.strip():
                order.append((name.strip(), direction.strip().lower() == "desc"))
    if not any(name == "id" for name, _ in order):
        order.append(("id", False))
    return order


def orderby_param(order: OrderBy) -> str:
    return ",".join(f"{name}:{'desc' if desc else 'asc'}" for name, desc in order)


def _sql_rank(value) -> tuple:
    """SQLite's order of values: NULL (an absent attribute), then numbers, then text, then the rest."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)  # BINARY collation compares UTF-8 bytes: the same order as code points
    return (3, repr(value))


def _compare(order: OrderBy, a: dict, b: dict) -> int:
    for name, desc in order:
        x, y = _sql_rank(a.get(name)), _sql_rank(b.get(name))
        if x != y:
            return (1 if x > y else -1) * (-1 if desc else 1)
    return 0


def merge(pages: Iterable[list[dict]], order: OrderBy, first: int | None, last: int | None) -> list[dict]:
    """Rows `first`..`last` (1-based, inclusive, as CIMI's $first/$last) of the merge of sorted pages."""
    key = functools.cmp_to_key(functools.partial(_compare, order))
    merged = heapq.merge(*pages, key=key)
    start = max(first or 1, 1) - 1
    if last is not None and last < start + 1:
        return []
    return list(itertools.islice(merged, start, last))
