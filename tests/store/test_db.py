"""The store: WAL, migrations, one writer, rollback on error."""

import sqlite3

import pytest

from cimid.store import reset
from cimid.store.db import MIGRATIONS, Row, Store
from cimid.store.query import QueryError


async def test_schema_is_migrated_and_in_wal_mode(store, tmp_path):
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await store.close()
    await store.open()  # a second open migrates nothing and keeps the data
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_failed_transaction_leaves_nothing_and_runs_no_callback(store):
    called = []
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            await tx.insert(Row("Thing", "a", "", {"name": "a", "created": "2020-01-01T00:00:00.000Z"}))
            tx.after_commit.append(lambda: called.append(1))
            raise RuntimeError("boom")
    assert await store.get("Thing", "a") is None and called == []
    async with store.write() as tx:
        await tx.insert(Row("Thing", "a", "", {"name": "a", "created": "2020-01-01T00:00:00.000Z", "n": 1}))
        tx.after_commit.append(lambda: called.append(1))
    row = await store.get("Thing", "a")
    assert row.attrs == {"name": "a", "created": "2020-01-01T00:00:00.000Z", "n": 1} and called == [1]


async def test_update_bumps_version_and_query_pages_in_sql(store):
    async with store.write() as tx:
        for i in range(10):
            await tx.insert(Row("Thing", f"t{i}", "", {"name": f"n{i}", "created": "2020-01-01T00:00:00.000Z",
                                                      "cpu": i % 3}))
    async with store.write() as tx:
        row = await tx.get("Thing", "t1")
        row.attrs["name"] = "renamed"
        await tx.update(row)
    assert (await store.get("Thing", "t1")).version == 2
    columns = {"name": "string", "cpu": "integer"}
    count, rows = await store.page("Thing", "", columns, scope=None, filters=["cpu=1"], orderby=["name:desc"],
                                   first=2, last=3)
    assert count == 3 and [r.id for r in rows] == ["t7", "t4"]  # renamed > n7 > n4
    with pytest.raises(QueryError, match="unknown attribute 'memory'"):
        await store.page("Thing", "", columns, scope=None, filters=["memory=1"])


async def test_events_are_published_after_the_commit_and_never_on_rollback(store):
    seen = []
    store.subscribe(seen.append)
    async with store.write() as tx:
        await tx.insert(Row("Thing", "e1", "", {"created": "2020-01-01T00:00:00.000Z"}))
        tx.emit("made e1")
        assert seen == []  # not before the commit
    assert seen == ["made e1"]
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            tx.emit("never")
            raise RuntimeError("the change fails")
    assert seen == ["made e1"]


async def test_named_verbs(store):
    async with store.write() as tx:
        for i, state in enumerate(("A", "B", "A")):
            await tx.insert(Row("Thing", f"v{i}", "", {"created": "2020-01-01T00:00:00.000Z", "state": state},
                                {"base": "images/x" if i else "images/y"}))
        assert await tx.count_referring("base", "images/x") == 2
    assert [r.id for r in await store.all_of("Thing")] == ["v0", "v1", "v2"]
    assert [r.id for r in await store.all_of("Thing", ("A",))] == ["v0", "v2"]


async def test_read_cache_never_serves_a_changed_row(store):
    async with store.write() as tx:
        await tx.insert(Row("Thing", "c", "", {"name": "one", "created": "2020-01-01T00:00:00.000Z"}))
    assert (await store.get("Thing", "c")).attrs["name"] == "one"  # now cached
    async with store.write() as tx:
        row = await tx.get("Thing", "c")
        row.attrs["name"] = "two"
        await tx.update(row)
    assert (await store.get("Thing", "c")).attrs["name"] == "two"
    async with store.write() as tx:
        await tx.delete("Thing", "c")
    assert await store.get("Thing", "c") is None
    cached = await store.get("Thing", "c")  # a miss is not cached as absent either
    async with store.write() as tx:
        await tx.insert(Row("Thing", "c", "", {"name": "three", "created": "2020-01-01T00:00:00.000Z"}))
    assert cached is None and (await store.get("Thing", "c")).attrs["name"] == "three"


async def test_an_older_store_gains_the_scoping_indexes_and_keeps_its_rows(tmp_path):
    # A store at schema 2 (tenancy, before owner and public were in the listing indexes).
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for statements in MIGRATIONS[:2]:
        for statement in statements:
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO resources (kind, id, name, created, owner) VALUES ('Machine', 'm', 'm', '2020', 'bob')")
    store = Store(path, "FULL")
    await store.open()
    try:
        count, rows = await store.page("Machine", "", {"name": "string"}, scope="bob")
        assert (count, [r.id for r in rows]) == (1, ["m"])
        assert await store.page("Machine", "", {}, scope="eve") == (0, [])
    finally:
        await store.close()
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    for index in ("resources_by_name", "resources_by_created"):
        assert [r[2] for r in db.execute(f"PRAGMA index_info({index})")][-2:] == ["owner", "public"]
    # What the indexes are for: a user's count is answered from an index, without reading the table.
    plan = " ".join(r[3] for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM resources WHERE kind = 'Machine' AND parent = ''"
        " AND (owner = 'bob' OR public = 1)"))
    assert "COVERING INDEX" in plan


async def test_a_wipe_frees_pages_without_zeroing_them_and_restores_the_setting(store, tmp_path):
    """Zeroing is what made a sandbox reset slow (Debian builds SQLite with secure_delete on); that the
    freed pages still hold the old bytes shows it was skipped."""
    async def fill(marker: bytes) -> None:
        async with store.write() as tx:
            for n in range(50):
                await tx.insert(Row("Machine", f"{marker.decode()}{n}", "", {"name": marker.decode() * 2000, "created": "2030-01-01T00:00:00.000Z"}))

    def on_disk(marker: bytes) -> bool:
        db = sqlite3.connect(tmp_path / "db.sqlite3")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return marker * 2000 in (tmp_path / "db.sqlite3").read_bytes()

    async with store.write() as tx:
        (before,), = await tx.fetch("PRAGMA secure_delete")
    await fill(b"q")
    async with store.write() as tx, reset.throwaway_deletes(tx):
        assert (await tx.fetch("PRAGMA secure_delete"))[0][0] == 0
        await reset.wipe(tx)
    assert await store.all_of("Machine") == []
    assert on_disk(b"q")  # freed, not overwritten
    async with store.write() as tx:
        assert (await tx.fetch("PRAGMA secure_delete"))[0][0] == before  # the store's own setting again
    await fill(b"z")
    async with store.write() as tx:
        await reset.wipe(tx)
    assert on_disk(b"z") == (not before)  # outside the block, deletes zero pages as the build says


async def test_orderby_id_orders_by_the_resources_own_id(store):
    """`id` is not in the stored JSON: $orderby=id orders by the row's id (a front merges nodes' pages on it
    as the final tie-break), not by nothing (which left them in creation order)."""
    ids = ["c9", "a1", "b5", "a0"]
    async with store.write() as tx:
        for id in ids:
            await tx.insert(Row("Thing", id, "", {"name": "same", "created": "2020-01-01T00:00:00.000Z"}))
    columns = {"name": "string", "id": "string"}  # as the model declares a URI (types.FILTERABLE)
    _count, rows = await store.page("Thing", "", columns, scope=None, orderby=["name", "id:asc"])
    assert [r.id for r in rows] == sorted(ids)
    _count, rows = await store.page("Thing", "", columns, scope=None, orderby=["id:desc"], first=1, last=2)
    assert [r.id for r in rows] == ["c9", "b5"]


async def test_a_transaction_reads_its_own_writes_and_rows_it_has_not_changed_from_the_cache(store):
    """A write transaction takes an unchanged row from the row cache (no thread hop), but what it changed
    itself from SQLite, and a rolled-back change leaves the cache as it was."""
    stamp = "2020-01-01T00:00:00.000Z"
    async with store.write() as tx:
        await tx.insert(Row("Thing", "a", "", {"name": "one", "created": stamp}))
    assert (await store.get("Thing", "a")).attrs["name"] == "one"  # cached
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            first = await tx.get("Thing", "a")
            first.attrs["name"] = "two"  # a Row of its own: changing it changes no other read
            assert (await tx.get("Thing", "a")).attrs["name"] == "one"
            await tx.update(first)
            assert (await tx.get("Thing", "a")).attrs["name"] == "two"  # read your writes
            await tx.execute("UPDATE resources SET name = 'three' WHERE id = 'a'")
            assert (await tx.get("Thing", "a")).attrs["name"] == "three"
            raise RuntimeError("rolled back")
    assert (await store.get("Thing", "a")).attrs["name"] == "one"
    async with store.write() as tx:
        assert (await tx.get("Thing", "a")).attrs["name"] == "one"
        await tx.delete("Thing", "a")
        assert await tx.get("Thing", "a") is None
    assert await store.get("Thing", "a") is None


async def test_writes_run_at_the_next_hop_and_a_failing_one_rolls_back_the_whole_transaction(store):
    stamp = "2020-01-01T00:00:00.000Z"
    seen = []
    store.subscribe(seen.append)
    async with store.write() as tx:
        await tx.insert(Row("Thing", "a", "", {"name": "made", "created": stamp}))
        await tx.insert(Row("Note", "n1", "", {"name": "a was made", "created": stamp}))
        tx.emit("made")
    assert (await store.get("Note", "n1")).attrs["name"] == "a was made" and seen == ["made"]
    # One that cannot be inserted (its id is taken) fails the commit: the change and its record are rolled
    # back, nothing is published, and the store takes the next write.
    with pytest.raises(sqlite3.IntegrityError):
        async with store.write() as tx:
            await tx.insert(Row("Thing", "b", "", {"name": "made", "created": stamp}))
            await tx.insert(Row("Note", "n2", "", {"name": "b was made", "created": stamp}))
            await tx.insert(Row("Note", "n1", "", {"name": "taken", "created": stamp}))
            tx.emit("b made")
    assert await store.get("Thing", "b") is None and await store.get("Note", "n2") is None
    assert (await store.get("Note", "n1")).attrs["name"] == "a was made" and seen == ["made"]
    # The same failure at a query later in the transaction: raised there, and nothing of it commits.
    with pytest.raises(sqlite3.IntegrityError):
        async with store.write() as tx:
            await tx.insert(Row("Thing", "b", "", {"name": "made", "created": stamp}))
            await tx.insert(Row("Note", "n1", "", {"name": "taken", "created": stamp}))
            await tx.children("Note", "")
    assert await store.get("Thing", "b") is None
    async with store.write() as tx:
        await tx.insert(Row("Thing", "b", "", {"name": "made", "created": stamp}))
        assert [r.id for r in await tx.children("Thing", "")] == ["a", "b"]  # a query sees what came before
    assert (await store.get("Thing", "b")).attrs["name"] == "made"


def _counting_hops(store) -> list:
    hops = []
    on_writer = store._on_writer

    async def counted(fn):
        hops.append(fn)
        return await on_writer(fn)
    store._on_writer = counted
    return hops


async def test_a_transaction_the_cache_answers_reaches_the_writer_once(store):
    stamp = "2020-01-01T00:00:00.000Z"
    async with store.write() as tx:
        await tx.insert(Row("Job", "j", "", {"name": "job", "created": stamp, "state": "RUNNING"}))
        await tx.insert(Row("Thing", "t", "", {"name": "thing", "created": stamp}))
    hops = _counting_hops(store)
    async with store.write() as tx:  # what a Job's last commit does: read, change, record
        job = await tx.get("Job", "j")  # rows the last commit wrote are in the cache
        job.attrs["state"] = "SUCCESS"
        await tx.update(job)
        assert (await tx.get("Job", "j")).state == "SUCCESS"
        await tx.get("Thing", "t")
        await tx.insert(Row("Event", "e1", "log", {"name": "done", "created": stamp}))
    assert len(hops) == 1
    async with store.write() as tx:  # reads the cache answers, no write: no hop at all
        await tx.get("Thing", "t")
    assert len(hops) == 1
    assert (await store.get("Job", "j")).state == "SUCCESS" and await store.get("Event", "e1") is not None


async def test_what_a_transaction_wrote_is_cached_exactly_as_sqlite_has_it(store, tmp_path):
    stamp = "2020-01-01T00:00:00.000Z"
    async with store.write() as tx:
        await tx.insert(Row("Thing", "a", "p", {"name": "a", "created": stamp, "state": "ON", "n": [1]},
                            internal={"x": 1}, owner="alice", public=True))
        await tx.insert(Row("Thing", "b", "", {"name": "b", "created": stamp}))
    async with store.write() as tx:
        a = await tx.get("Thing", "a")
        a.attrs.update(state="OFF", description="changed")
        a.internal["x"] = 2
        await tx.update(a)
        await tx.update(a)  # twice: version 3
        # Updated without being read in this transaction: its version is read back, not guessed.
        await tx.update(Row("Thing", "b", "", {"name": "b2", "created": stamp}))
    fresh = Store(tmp_path / "db.sqlite3", "FULL")  # no cache: what SQLite holds
    await fresh.open()
    try:
        for id, version in (("a", 3), ("b", 2)):
            cached, stored = await store.get("Thing", id), await fresh.get("Thing", id)
            assert (cached.version, cached.attrs, cached.internal, cached.owner, cached.public, cached.parent) == \
                (stored.version, stored.attrs, stored.internal, stored.owner, stored.public, stored.parent)
            assert stored.version == version
    finally:
        await fresh.close()


async def test_a_deleted_rows_sub_collection_leaves_the_cache_and_its_jobs_stay(store):
    stamp = "2020-01-01T00:00:00.000Z"
    async with store.write() as tx:
        await tx.insert(Row("Machine", "m", "", {"name": "m", "created": stamp}))
        await tx.insert(Row("Disk", "d", "m", {"name": "d", "created": stamp}))
        await tx.insert(Row("Job", "j", "m", {"name": "j", "created": stamp}))
        await tx.insert(Row("Machine", "other", "", {"name": "o", "created": stamp}))
    for kind, id in (("Machine", "m"), ("Disk", "d"), ("Job", "j"), ("Machine", "other")):
        assert await store.get(kind, id) is not None  # all cached
    async with store.write() as tx:
        assert await tx.get("Disk", "d") is not None
        await tx.delete("Machine", "m")
        assert await tx.get("Machine", "m") is None and await tx.get("Disk", "d") is None
        assert await tx.get("Job", "j") is not None and await tx.get("Machine", "other") is not None
    async with store.write() as tx:  # a child the deleting transaction never read
        await tx.insert(Row("Machine", "m2", "", {"name": "m2", "created": stamp}))
        await tx.insert(Row("Disk", "d2", "m2", {"name": "d2", "created": stamp}))
    assert await store.get("Disk", "d2") is not None
    async with store.write() as tx:
        await tx.delete("Machine", "m2")
        assert await tx.get("Disk", "d2") is None
        await tx.insert(Row("Disk", "d2", "m2", {"name": "again", "created": stamp}))  # made again after it
        assert (await tx.get("Disk", "d2")).attrs["name"] == "again"
    assert await store.get("Machine", "m") is None and await store.get("Disk", "d") is None
    assert await store.get("Job", "j") is not None and await store.get("Machine", "other") is not None
    assert (await store.get("Disk", "d2")).attrs["name"] == "again"


async def test_a_write_that_need_not_be_flushed_commits_with_normal_and_puts_the_level_back(store):
    stamp = "2020-01-01T00:00:00.000Z"
    levels = []

    async def level() -> int:  # the writer connection's own setting (1: NORMAL, 2: FULL)
        async with store.write() as tx:
            (value,), = await tx.fetch("PRAGMA synchronous")
        return value
    hops = _counting_hops(store)
    async with store.write(durable=False) as tx:
        await tx.insert(Row("Thing", "a", "", {"name": "a", "created": stamp}))
    assert len(hops) == 1  # still one hop: the level is set and put back in it
    levels.append(await level())
    with pytest.raises(RuntimeError):
        async with store.write(durable=False) as tx:
            (value,), = await tx.fetch("PRAGMA synchronous")
            assert value == 1  # NORMAL inside
            raise RuntimeError("rolled back")
    levels.append(await level())
    with pytest.raises(sqlite3.IntegrityError):
        async with store.write(durable=False) as tx:
            await tx.insert(Row("Thing", "a", "", {"name": "taken", "created": stamp}))  # fails at COMMIT
    levels.append(await level())
    assert levels == [2, 2, 2]
    assert (await store.get("Thing", "a")).attrs["name"] == "a"


async def test_a_full_cache_forgets_the_oldest_rows_and_a_delete_still_drops_every_cached_child(store,
                                                                                                 monkeypatch):
    """The cache keeps its rows by parent too: a child that fell out of a full cache is not dropped twice, those
    still in it go with their parent, and the other parent's stay."""
    from cimid.store import db
    monkeypatch.setattr(db, "CACHE_ROWS", 4)
    stamp = "2020-01-01T00:00:00.000Z"
    for kind, id, parent in [("Machine", "m1", ""), ("Disk", "m1-d0", "m1"), ("Machine", "m2", ""),
                             ("Disk", "m1-d1", "m1"), ("Disk", "m1-d2", "m1"), ("Disk", "m2-d0", "m2")]:
        async with store.write() as tx:  # one at a time: the cache keeps them in this order
            await tx.insert(Row(kind, id, parent, {"name": id, "created": stamp}))
    assert [key[1] for key in store._cache.entries] == ["m2", "m1-d1", "m1-d2", "m2-d0"]  # m1, m1-d0 fell out
    async with store.write() as tx:
        await tx.delete("Machine", "m1")
    assert [key[1] for key in store._cache.entries if key[1].startswith("m1")] == []
    assert "m1" not in store._cache._children and store._cache._children["m2"] == {("Disk", "m2-d0")}
    assert await store.get("Disk", "m1-d0") is None and await store.get("Disk", "m1-d2") is None
    assert (await store.get("Disk", "m2-d0")).attrs["name"] == "m2-d0"
