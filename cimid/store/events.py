"""The events family's named queries: Event rows in commit order (the stream and its resumption), the
severity counts of logs, and the retention sweep."""

from __future__ import annotations

from . import query
from .db import _IN_SCOPE, _SELECT, Row, Store, _resolve, _row, visible

PROVIDER_LOG = "provider"  # the id of the provider's own EventLog


async def latest_seq(store: Store) -> int:
    """The highest sequence number ever given: what a new stream starts after."""
    rows = await store.fetch("SELECT seq FROM sqlite_sequence WHERE name = 'resources'")
    return rows[0][0] if rows else 0


def seen_by(raw: tuple, scope: str | None) -> Row | None:
    """An Event as its commit stored it (Transaction.stored), if `scope` may see it: what events_after
    would return for it, without reading the store."""
    return _row(raw) if visible(raw, scope) else None


def compile_filters(filters: list[str], columns: dict[str, str]) -> tuple[str, list]:
    """$filter over Events, compiled once per stream; raises query.QueryError."""
    where, _order, params = query.compile_query(filters, [], lambda name: _resolve(columns, name))
    return where, params


async def events_after(store: Store, after: int, *, scope: str | None, where: str, params: list,
                       limit: int) -> list[tuple[int, Row]]:
    """Events committed after sequence number `after` that `scope` may see and `where` (a compiled $filter)
    selects, in commit order."""
    cond = ["kind = 'Event'", "seq > ?"]
    args: list = [after]
    if scope is not None:
        cond.append(_IN_SCOPE)
        args += [scope]
    if where:
        cond.append(f"({where})")
        args += params
    sql = _SELECT.replace("SELECT ", "SELECT seq, ", 1) + f" WHERE {' AND '.join(cond)} ORDER BY seq LIMIT ?"
    rows = await store.fetch(sql, (*args, limit))
    return [(r[0], _row(r[1:])) for r in rows]


async def severity_counts(store: Store, log_ids: list[str], scope: str | None) -> dict[str, dict[str, int]]:
    """Per log: how many of its Events `scope` may see, by severity."""
    if not log_ids:
        return {}
    marks = ", ".join("?" * len(log_ids))
    sql = (f"SELECT parent, json_extract(doc, '$.severity'), count(*) FROM resources WHERE kind = 'Event'"
           f" AND parent IN ({marks})")
    args: list = list(log_ids)
    if scope is not None:
        sql += f" AND {_IN_SCOPE}"
        args.append(scope)
    counts: dict[str, dict[str, int]] = {}
    for parent, severity, count in await store.fetch(sql + " GROUP BY 1, 2", args):
        counts.setdefault(parent, {})[severity] = count
    return counts


async def sweep(store: Store, cutoffs: dict[str, str], default: str) -> None:
    """Remove the Events older than their log's persistence allows (`cutoffs`: persistence -> the
    dateTime before which an Event goes; `default` for a log without one), then the logs whose target is
    gone and that hold no Event."""
    cases = " ".join("WHEN ? THEN ?" for _ in cutoffs)
    args = [*(value for item in cutoffs.items() for value in item), default]
    async with store.write() as tx:
        await tx.execute(
            "DELETE FROM resources WHERE kind = 'Event' AND created < (SELECT CASE"
            f" json_extract(log.doc, '$.persistence') {cases} ELSE ? END FROM resources AS log"
            " WHERE log.kind = 'EventLog' AND log.id = resources.parent)", args)
        await tx.execute(
            "DELETE FROM resources WHERE kind = 'EventLog' AND id != ?"
            " AND NOT EXISTS (SELECT 1 FROM resources AS e WHERE e.kind = 'Event' AND e.parent = resources.id)"
            " AND NOT EXISTS (SELECT 1 FROM resources AS t WHERE t.kind = json_extract(resources.internal,"
            " '$.target_kind') AND t.id = json_extract(resources.internal, '$.target_id'))", (PROVIDER_LOG,))
