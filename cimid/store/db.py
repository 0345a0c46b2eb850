"""SQLite through aiosqlite: WAL, one writer connection behind a lock, BEGIN IMMEDIATE, versioned migrations.

Durability: `synchronous = FULL` by default, so a transaction that answered is on disk even after a power
cut; `NORMAL` (configurable) survives any process crash but may lose the last commits on power loss. A
write may ask for NORMAL alone (`write(durable=False)`): one whose change the host keeps itself and a restart
reads back from it (a hot-plug's outcome, which libvirt has written to the domain's definition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path

import aiosqlite

from . import query
from .migrations import MIGRATIONS
from .query import Column

log = logging.getLogger("cimid.store")

# Attributes kept in their own columns (indexed, cheap to filter and sort); everything else lives in `doc`.
PROMOTED = ("name", "description", "created", "updated", "state")
CACHE_ROWS = 4096

# Set by the service around one request: awaited with the transaction and the row whenever a row is
# inserted, so that what the request made can be recorded in the same commit as the change itself (the
# Job an Idempotency-Key answers with, cimid.service.idempotency).
insert_recorder: ContextVar[Callable[[Transaction, Row], Awaitable[None]] | None] = ContextVar(
    "insert_recorder", default=None)


class Row:
    """One stored resource: every attribute (promoted ones included) and provider-only `internal` data."""

    __slots__ = ("kind", "id", "parent", "attrs", "version", "owner", "public", "_internal", "_internal_json")

    def __init__(self, kind: str, id: str, parent: str, attrs: dict, internal: dict | None = None,
                 version: int = 1, internal_json: str = "{}", *, owner: str = "", public: bool = False):
        self.kind, self.id, self.parent, self.attrs, self.version = kind, id, parent, attrs, version
        # The consumer that made it ('' : the provider), and whether every consumer may see it.
        self.owner, self.public = owner, public
        self._internal, self._internal_json = internal, internal_json

    @property
    def internal(self) -> dict:
        if self._internal is None:  # decoded on first use: a plain GET never needs it
            self._internal = json.loads(self._internal_json)
        return self._internal

    @property
    def state(self) -> str | None:
        return self.attrs.get("state")


_SELECT = ("SELECT kind, id, parent, name, description, created, updated, state, doc, internal, version, owner,"
           " public FROM resources")


def _row(r) -> Row:
    attrs = json.loads(r[8])
    for name, value in zip(PROMOTED, r[3:8], strict=True):
        if value is not None:
            attrs[name] = value
    return Row(r[0], r[1], r[2], attrs, version=r[10], internal_json=r[9], owner=r[11], public=bool(r[12]))


def visible(raw, scope: str | None) -> bool:
    """Whether a stored row (raw, as SQLite returned it) is in `scope`: a consumer's name, or None for
    everything. A consumer sees what it made, and what is public."""
    return scope is None or raw[11] == scope or bool(raw[12])


# The same rule in SQL, for pages and counts.
_IN_SCOPE = "(owner = ? OR public = 1)"


def _column(attribute: str, type_: str) -> Column:
    """Where an attribute lives in SQL (for the $filter/$orderby compiler)."""
    if attribute in PROMOTED:
        return Column(attribute, type_)
    if attribute == "id":  # not in the JSON: the row's own; within one collection it orders as the URIs do
        return Column("resources.id", type_)
    return Column(f"json_extract(doc, '$.{attribute}')", type_)


class Transaction:
    """One write. Its inserts, updates and deletes are kept until something needs the database: the next
    query, or the commit, which then runs them (and BEGIN IMMEDIATE, the first time) in the same thread hop.
    A hop costs more than most statements, and a transaction whose reads the row cache answers (a hot-plug's
    last one) makes one hop in all. A statement that fails therefore fails at that next hop, which is still
    inside the transaction: it rolls back the whole of it."""

    def __init__(self, on_writer: Callable[[Callable[[sqlite3.Connection], object]], Awaitable],
                 committed: _RowCache, relaxed_from: str | None = None):
        self._on_writer = on_writer  # runs a function of the connection on the writer's thread, to its end
        # The store's synchronous level, for a transaction that commits with NORMAL and puts it back after.
        self._relaxed_from = relaxed_from
        self._begun = False
        self._pending: list[tuple[str, tuple, tuple[str, str] | None]] = []  # statements not run yet, in
        # order, each with the key of the row it inserts (its sequence number is kept: `stored`)
        self._seqs: dict[tuple[str, str], int] = {}
        # The store's cache of committed rows: a row this transaction has not changed is read from it, with
        # no thread hop (the transaction holds the one writer, so nothing commits meanwhile).
        self._committed = committed
        self.after_commit: list[Callable[[], None]] = []
        self.events: list[object] = []  # published to the store's subscribers once the commit succeeded
        self.touched: set[tuple[str, str]] | None = set()  # the rows it wrote; None: any (a bulk statement)
        # Rows as this transaction sees them, raw as SQLite would return them: those it read (a second get,
        # an Event's log once per Event, costs no hop) and those it wrote (read back without running the
        # statement first; committed, they go to the store's cache). Raw tuples, so every get still returns
        # a Row of its own.
        self._read: dict[tuple[str, str], tuple | None] = {}
        self._emptied: set[str] = set()  # ids whose sub-collections this transaction deleted

    async def _hop(self, fn: Callable[[sqlite3.Connection], object]):
        """fn(connection) on the writer's thread, after the statements kept so far: one hop."""
        pending, self._pending = self._pending, []
        begin, self._begun = not self._begun, True

        def run(conn: sqlite3.Connection):
            if begin:
                if self._relaxed_from:  # only outside a transaction
                    conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("BEGIN IMMEDIATE")
            for sql, params, inserted in pending:
                cursor = conn.execute(sql, params)
                if inserted is not None:
                    self._seqs[inserted] = cursor.lastrowid
            return fn(conn)
        return await self._on_writer(run)

    async def _query(self, sql: str, params=()) -> list[tuple]:
        return await self._hop(lambda conn: conn.execute(sql, params).fetchall())

    async def _commit(self) -> None:
        """The kept statements and COMMIT, in one hop; nothing at all for a transaction that neither
        wrote nor read the database."""
        if self._begun or self._pending:
            await self._hop(lambda conn: self._end(conn, "COMMIT"))

    def _end(self, conn: sqlite3.Connection, statement: str | None) -> None:
        """On the writer's thread: COMMIT or ROLLBACK (None: nothing to end), and the store's own
        synchronous level back."""
        try:
            if statement is not None:
                conn.execute(statement)
        finally:
            if self._relaxed_from and not conn.in_transaction:
                conn.execute(f"PRAGMA synchronous = {self._relaxed_from}")

    def _settle(self) -> None:
        """After the commit: the rows this transaction wrote are what the cache holds for them now."""
        if self.touched is None:
            self._committed.clear()
            return
        if self._emptied:
            self._committed.drop_children(self._emptied)
        for key in self.touched:
            raw = self._read.get(key)
            if raw is None:
                self._committed.drop(key)
            else:
                self._committed.keep(key, raw)

    async def get(self, kind: str, id: str, scope: str | None = None) -> Row | None:
        """The row, if it is in `scope` (a consumer's name; None: everything)."""
        key = (kind, id)
        if key in self._read:
            raw = self._read[key]
        else:
            unchanged = self.touched is not None and key not in self.touched
            raw = self._committed.raw(key) if unchanged else None
            if raw is not None and self._emptied and _orphaned(raw, self._emptied):
                self._read[key] = None  # in a sub-collection this transaction deleted
                return None
            if raw is None:
                rows = await self._query(_SELECT + " WHERE kind = ? AND id = ?", key)
                raw = rows[0] if rows else None
                if raw is not None and unchanged:
                    self._committed.keep(key, raw)
            self._read[key] = raw
        return _row(raw) if raw is not None and visible(raw, scope) else None

    async def insert(self, row: Row) -> None:
        params = _insert_params(row)
        self._pending.append((_INSERT, params, (row.kind, row.id)))
        self._wrote(row.kind, row.id, (*params[:10], 1, *params[10:]))  # a new row's version is 1
        recorder = insert_recorder.get()
        if recorder is not None:
            await recorder(self, row)

    async def update(self, row: Row) -> None:
        promoted, doc = _split(row.attrs)
        doc_json, internal_json = json.dumps(doc), json.dumps(row.internal)
        self._pending.append((
            "UPDATE resources SET name = ?, description = ?, created = ?, updated = ?, state = ?, doc = ?,"
            " internal = ?, public = ?, version = version + 1 WHERE kind = ? AND id = ?",
            (*promoted, doc_json, internal_json, int(row.public), row.kind, row.id), None))
        row.version += 1
        before = self._read.get((row.kind, row.id))
        # As SQLite will have it; unknown unless this transaction saw the row (its version and owner).
        after = None if before is None else (row.kind, row.id, before[2], *promoted, doc_json, internal_json,
                                             before[10] + 1, before[11], int(row.public))
        self._wrote(row.kind, row.id, after)

    async def delete(self, kind: str, id: str) -> None:
        """The row, and its sub-collection (not its Jobs, which outlive what they acted on)."""
        self._pending.append(("DELETE FROM resources WHERE kind = ? AND id = ?", (kind, id), None))
        self._pending.append(("DELETE FROM resources WHERE parent = ? AND kind != 'Job'", (id,), None))
        self._wrote(kind, id, None, gone=True)
        for key, raw in list(self._read.items()):
            if raw is not None and _orphaned(raw, {id}):
                self._wrote(*key, None, gone=True)
        self._emptied.add(id)

    def stored(self, row: Row) -> tuple[int, tuple] | None:
        """After the commit: a row this transaction inserted, as (its sequence number, the row as SQLite
        holds it), or None if the transaction no longer knows it (changed by a bulk statement since)."""
        key = (row.kind, row.id)
        raw, seq = self._read.get(key), self._seqs.get(key)
        return None if raw is None or seq is None else (seq, raw)

    def _wrote(self, kind: str, id: str, raw: tuple | None, gone: bool = False) -> None:
        """Note a write: `raw`, the row as SQLite will have it, None when unknown, or gone."""
        key = (kind, id)
        if raw is None and not gone:
            self._read.pop(key, None)  # read back from the database (after the statement) if asked
        else:
            self._read[key] = raw
        if self.touched is not None:
            self.touched.add(key)

    async def execute(self, sql: str, params=(), *, resources: bool = True) -> int:
        """For the store's own named statements; the layers above speak in verbs. Run now (with what was
        kept before it); `resources=False` for a statement on another table, which leaves the row cache
        alone. Returns how many rows it changed."""
        if resources:
            self.touched = None
            self._read.clear()
        return await self._hop(lambda conn: conn.execute(sql, params).rowcount)

    async def executemany(self, sql: str, rows) -> None:
        """execute for many parameter sets at once, on a table other than the resources (samples)."""
        await self._hop(lambda conn: conn.executemany(sql, rows))

    async def fetch(self, sql: str, params=()) -> list[tuple]:
        """For the store's own named queries (consumers, tokens), inside this transaction."""
        return await self._query(sql, params)

    def emit(self, event: object) -> None:
        """Announce `event` to the subscribers after this transaction commits (never if it rolls back)."""
        self.events.append(event)

    async def usage(self, kind: str, owner: str, sums: tuple[str, ...] = ()) -> tuple[int, dict[str, int]]:
        """How many `kind` rows `owner` has, and the totals of their integer attributes `sums` (quotas)."""
        return await _usage(self._query, kind, owner, sums)

    async def count_referring(self, key: str, value: str) -> int:
        """How many rows, of any kind, have `value` under `key` of their internal data (e.g. the disks that
        stand on an image: a Machine's today, a Volume's later)."""
        rows = await self._query(
            "SELECT count(*) FROM resources WHERE json_extract(internal, '$.' || ?) = ?", (key, value))
        return rows[0][0]

    async def referring(self, kind: str, key: str, value: str) -> list[Row]:
        """The `kind` rows with `value` under `key` of their internal data (the attachments of a volume)."""
        rows = await self._query(
            _SELECT + " WHERE kind = ? AND json_extract(internal, '$.' || ?) = ?", (kind, key, value))
        return [_row(r) for r in rows]

    async def all_of(self, kind: str) -> list[Row]:
        """Every `kind` row, oldest first (a few: the networks whose subnets a new one must not overlap)."""
        rows = await self._query(_SELECT + " WHERE kind = ? ORDER BY seq", (kind,))
        return [_row(r) for r in rows]

    async def children(self, kind: str, parent: str) -> list[Row]:
        """The `kind` rows of the sub-collection of `parent`."""
        rows = await self._query(_SELECT + " WHERE kind = ? AND parent = ?", (kind, parent))
        return [_row(r) for r in rows]

    async def children_or_referring(self, kind: str, parent: str, key: str, value: str) -> list[Row]:
        """children and referring in one query: the `kind` rows of `parent`'s sub-collection, and those with
        `value` under `key` (a machine's attachments and a volume's)."""
        rows = await self._query(_SELECT + " WHERE kind = ? AND (parent = ? OR json_extract(internal, '$.' || ?) = ?)",
                                 (kind, parent, key, value))
        return [_row(r) for r in rows]


def _orphaned(raw: tuple, emptied: set[str]) -> bool:
    """Whether a row went with the deletion of its parent (one of `emptied`)."""
    return raw[2] in emptied and raw[0] != "Job"


_INSERT = ("INSERT INTO resources (kind, id, parent, name, description, created, updated, state, doc, internal,"
           " owner, public) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _insert_params(row: Row) -> tuple:
    promoted, doc = _split(row.attrs)
    return (row.kind, row.id, row.parent, *promoted, json.dumps(doc), json.dumps(row.internal), row.owner,
            int(row.public))


class _RowCache:
    """Single rows as SQLite returned them (committed), each with its shared decoded Row once asked for;
    the oldest goes first beyond CACHE_ROWS. Rows are also indexed by parent, so that a delete drops a
    sub-collection without a walk over the whole cache."""

    def __init__(self):
        self.entries: dict[tuple[str, str], list] = {}
        self._children: dict[str, set[tuple[str, str]]] = {}  # parent id -> keys of its cached rows

    def raw(self, key: tuple[str, str]) -> tuple | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[0]

    def keep(self, key: tuple[str, str], raw: tuple) -> list:
        self.drop(key)
        if len(self.entries) >= CACHE_ROWS:
            self.drop(next(iter(self.entries)))  # the oldest entry
        entry = self.entries[key] = [raw, None]
        if raw[2]:
            self._children.setdefault(raw[2], set()).add(key)
        return entry

    def drop(self, key: tuple[str, str]) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None and entry[0][2]:
            siblings = self._children[entry[0][2]]
            siblings.discard(key)
            if not siblings:
                del self._children[entry[0][2]]

    def drop_children(self, parents: set[str]) -> None:
        """The rows that went with the deletion of their parent (one of `parents`)."""
        for parent in parents:
            for key in list(self._children.get(parent, ())):
                if _orphaned(self.entries[key][0], parents):
                    self.drop(key)

    def clear(self) -> None:
        self.entries.clear()
        self._children.clear()


def _split(attrs: dict) -> tuple[list, dict]:
    promoted = [attrs.get(name) for name in PROMOTED]
    doc = {k: v for k, v in attrs.items() if k not in PROMOTED}
    return promoted, doc


class Store:
    def __init__(self, path: Path, synchronous: str = "FULL"):
        self.path = path
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        # Collection pages read in a transaction on a connection of their own: the single-row reader must
        # never sit inside an old snapshot, or the row cache could keep what it read there.
        self._pager: aiosqlite.Connection | None = None
        self._snapshot = asyncio.Lock()
        # Single rows as SQLite returned them, for GETs: every write goes through this process's one writer,
        # which drops what it changed, so the cache never serves a stale row; it saves a thread hop (for the
        # writer's own reads of rows a transaction has not changed too).
        self._cache = _RowCache()
        self._commits = 0  # a read that overlapped a commit may be stale: it is returned, not cached
        self._subscribers: list[Callable[[object], None]] = []
        self._before_commit: list[Callable[[Transaction], Awaitable[None]]] = []
        self._watch: sqlite3.Connection | None = None  # asks PRAGMA data_version, nothing else

    def before_commit(self, hook: Callable[[Transaction], Awaitable[None]]) -> None:
        """Await `hook(tx)` at the end of every write transaction, just before COMMIT: what it writes (the
        Events that record what the transaction emitted) commits or rolls back with the change itself."""
        self._before_commit.append(hook)

    def subscribe(self, listener: Callable[[object], None]) -> None:
        """Call `listener(event)` for every event emitted by a committed transaction."""
        self._subscribers.append(listener)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._migrate()
        self._reader, self._pager = await asyncio.gather(self._connect(), self._connect())
        self._watch = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)  # we issue BEGIN ourselves
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def _migrate(self) -> None:
        """Every pending migration in one transaction (a fresh store is made in one commit, not one per
        migration; an upgrade is all or nothing)."""
        (version,), = await self._writer.execute_fetchall("PRAGMA user_version")
        if version >= len(MIGRATIONS):
            return
        await self._writer.execute("BEGIN IMMEDIATE")
        try:
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    await self._writer.execute(statement)
            await self._writer.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            await self._writer.execute("COMMIT")
        except BaseException:
            await self._writer.execute("ROLLBACK")
            raise
        log.info("store migrated from schema version %d to %d", version, len(MIGRATIONS))

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def data_version(self) -> int:
        """A number that changes whenever a change is committed to the database, by this process or by
        another (`cimid consumer`, `cimid token`): what a cache of rows other processes write is keyed by.
        Asked on the caller's thread: SQLite reads it from the WAL index in shared memory (microseconds,
        where a query through the reader's thread costs a thread hop each way)."""
        (version,), = self._watch.execute("PRAGMA data_version").fetchall()
        return version

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for conn in (self._pager, self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._pager = self._reader = self._writer = None
        self._cache.clear()

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], object]):
        """fn(the writer's sqlite3 connection) on its thread, run to its end even if the caller is cancelled
        meanwhile (a sampler or Job stopped by a reset): a cancelled wait must not leave a transaction open
        behind the next writer's back. aiosqlite runs any function on its thread (Connection._execute, not
        public: aiosqlite is pinned for it)."""
        done = asyncio.ensure_future(self._writer._execute(fn, self._writer._conn))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            await done
            raise

    @asynccontextmanager
    async def write(self, durable: bool = True) -> AsyncIterator[Transaction]:
        """The one way to change the store: serialised, atomic, callbacks run only after the commit.
        durable=False: this commit is not flushed to the disk (see the module's doc)."""
        async with self._lock:
            relaxed = None if durable or self.synchronous.upper() == "NORMAL" else self.synchronous
            tx = Transaction(self._on_writer, self._cache, relaxed)
            try:
                yield tx
                for hook in self._before_commit:
                    await hook(tx)
                await tx._commit()
            except BaseException:
                # Begun (even if cancelled since), or a COMMIT that failed; and a relaxed level put back.
                if self._writer.in_transaction or relaxed:
                    await self._on_writer(lambda conn: tx._end(conn, "ROLLBACK" if conn.in_transaction else None))
                raise
            self._commits += 1
            tx._settle()
        for callback in tx.after_commit:
            callback()
        for event in tx.events:
            for listener in self._subscribers:
                try:
                    listener(event)
                except Exception:  # a broken listener must not undo or hide a committed change
                    log.exception("event listener failed on %r", event)

    async def get(self, kind: str, id: str, *, scope: str | None = None, shared: bool = False) -> Row | None:
        """One row, if it is in `scope` (a consumer's name; None: everything). shared=True returns the
        cache's own decoded Row, for readers that never change it (a GET): it skips decoding the JSON on
        every request."""
        key = (kind, id)
        entry = self._cache.entries.get(key)
        if entry is None:
            commits = self._commits
            rows = await self._reader.execute_fetchall(_SELECT + " WHERE kind = ? AND id = ?", key)
            if not rows:
                return None
            if commits == self._commits:
                entry = self._cache.keep(key, rows[0])
            else:  # a commit overlapped the read: returned, not kept
                entry = [rows[0], None]
        if not visible(entry[0], scope):
            return None  # to this consumer, another's resource does not exist
        if not shared:
            return _row(entry[0])
        if entry[1] is None:
            entry[1] = _row(entry[0])
        return entry[1]

    async def fetch(self, sql: str, params=()) -> list[tuple]:
        """For the store's own named queries (consumers, tokens): plain rows, read outside any write."""
        return await self._reader.execute_fetchall(sql, params)

    async def select(self, where: str, params=()) -> list[Row]:
        """For the store's own named queries; the layers above speak in verbs."""
        return [_row(r) for r in await self._reader.execute_fetchall(f"{_SELECT} WHERE {where}", params)]

    async def usage(self, kind: str, owner: str, sums: tuple[str, ...] = ()) -> tuple[int, dict[str, int]]:
        """How many `kind` rows `owner` has, and the totals of their integer attributes `sums` (quotas)."""
        return await _usage(self._reader.execute_fetchall, kind, owner, sums)

    async def totals(self, kind: str, sums: tuple[str, ...] = ()) -> tuple[int, dict[str, int]]:
        """How many `kind` rows there are, whoever owns them, and the totals of their integer attributes
        `sums` (a federated node's published capacity)."""
        totals = "".join(f", coalesce(sum({_column(name, 'integer').sql}), 0)" for name in sums)
        (row,) = await self._reader.execute_fetchall(f"SELECT count(*){totals} FROM resources WHERE kind = ?", (kind,))
        return row[0], dict(zip(sums, row[1:], strict=True))

    async def referring(self, kind: str, key: str, value: str) -> list[Row]:
        """As Transaction.referring, outside any write."""
        rows = await self._reader.execute_fetchall(
            _SELECT + " WHERE kind = ? AND json_extract(internal, '$.' || ?) = ?", (kind, key, value))
        return [_row(r) for r in rows]

    async def matches(self, kind: str, id: str, columns: dict[str, str], filters: list[str]) -> bool:
        """Whether the row passes every $filter expression, compiled as for a collection (so both agree);
        a bad expression raises query.QueryError."""
        where, _order, params = query.compile_query(filters, [], lambda name: _resolve(columns, name))
        rows = await self._reader.execute_fetchall(
            "SELECT 1 FROM resources WHERE kind = ? AND id = ?" + (f" AND {where}" if where else ""),
            (kind, id, *params))
        return bool(rows)

    async def all_of(self, kind: str, states: tuple[str, ...] | None = None) -> list[Row]:
        """Every `kind` row (in one of `states`, when given), oldest first."""
        if states is None:
            return await self.select("kind = ? ORDER BY seq", (kind,))
        marks = ", ".join("?" * len(states))
        return await self.select(f"kind = ? AND state IN ({marks}) ORDER BY seq", (kind, *states))

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A read transaction of its own: the queries made in it see one state of the store (a page and its
        count agree)."""
        async with self._snapshot:
            await self._pager.execute("BEGIN")
            try:
                yield self._pager
            finally:
                await self._pager.execute("COMMIT")

    async def page(self, kind: str, parent: str, columns: dict[str, str], *, scope: str | None,
                   filters: list[str] = (), orderby: list[str] = (), first: int | None = None,
                   last: int | None = None, refers: tuple[str, str] | None = None) -> tuple[int, list[Row]]:
        """One page of a collection (`parent`: the owner of a sub-collection, or ""), with the count after
        filtering, all of it done by SQLite and limited to `scope` (a consumer's name; None: everything).
        `columns` maps the attributes $filter and $orderby may name to their type; a bad expression
        raises query.QueryError. `refers`: (a ref attribute, a stored href): only the rows whose attribute
        refers to that href (the Meters of one Machine)."""
        where, order, params = query.compile_query(filters, orderby, lambda name: _resolve(columns, name))
        if scope is not None:
            where, params = " AND ".join(w for w in (_IN_SCOPE, where) if w), [scope, *params]
        if refers is not None:
            where = " AND ".join(w for w in ("json_extract(doc, '$.' || ? || '.href') = ?", where) if w)
            params = [*refers, *params]
        return await self._page(kind, parent, where, params, order, first, last)

    async def _page(self, kind: str, parent: str, where: str, params: list, order: str,
                    first: int | None, last: int | None) -> tuple[int, list[Row]]:
        cond = "kind = ? AND parent = ?" + (f" AND {where}" if where else "")
        args = (kind, parent, *params)
        start = max(first or 1, 1)
        limit = -1 if last is None else last - start + 1
        async with self._snapshot:  # page and count from one snapshot, so they agree
            await self._pager.execute("BEGIN")
            try:
                if limit == 0 or (last is not None and limit < 0):
                    rows = []
                else:
                    order_by = f"{order}, seq" if order else "seq"
                    rows = await self._pager.execute_fetchall(
                        f"{_SELECT} WHERE {cond} ORDER BY {order_by} LIMIT ? OFFSET ?", (*args, limit, start - 1))
                (count,), = await self._pager.execute_fetchall(
                    f"SELECT count(*) FROM resources WHERE {cond}", args)
            finally:
                await self._pager.execute("COMMIT")
        return count, [_row(r) for r in rows]


def _resolve(columns: dict[str, str], name: str) -> Column | None:
    type_ = columns.get(name)
    if type_ is None or (type_ == "map" and name != "properties"):
        return None
    return _column(name, type_)


async def _usage(fetch, kind: str, owner: str, sums: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    totals = "".join(f", coalesce(sum({_column(name, 'integer').sql}), 0)" for name in sums)
    (row,) = await fetch(f"SELECT count(*){totals} FROM resources WHERE kind = ? AND owner = ?", (kind, owner))
    return row[0], dict(zip(sums, row[1:], strict=True))
