"""Idempotency-Key on POST: a retry gets the first answer and makes nothing new; keys are per consumer,
bound to one request, reserved while the first runs, not kept after a 5xx, and forgotten after
server.idempotency_minutes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3

import pytest
from conftest import DATABASE, make_client
from test_errors import assert_error

from cimid.http.auth import hash_password
from cimid.http.keys import PROVIDER
from cimid.store import consumers

PASSWORDS = {"root": "r00t", "alice": "a1ice", "bob": "b0b"}
ROLES = {"root": "admin", "alice": "user", "bob": "user"}


def who(name: str, key: str | None = None) -> dict:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def with_consumers(client):
    for name, role in ROLES.items():
        await consumers.add(client.app[PROVIDER].store, name, role, hash_password(PASSWORDS[name], 1000))
    client.default_headers = who("root")
    return client


@pytest.fixture
async def client(tmp_path):
    client = await with_consumers(await make_client(tmp_path))
    yield client
    await client.client.close()


def machine(client, name: str = "vm") -> dict:
    return {"name": name, "machineTemplate": {"href": client.base + "machineTemplates/small-tiny-linux"}}


def count(client, sql: str, params=()) -> int:
    db = sqlite3.connect(client.app[DATABASE])
    try:
        return db.execute(sql, params).fetchone()[0]
    finally:
        db.close()


def machines(client) -> int:
    return count(client, "SELECT count(*) FROM resources WHERE kind = 'Machine'")


def create_jobs(client) -> int:
    """Top-level Jobs that add a Machine."""
    return count(client, "SELECT count(*) FROM resources WHERE kind = 'Job' AND json_extract(doc, '$.action') ="
                         " 'add' AND json_extract(doc, '$.targetResource.href') = 'machines'")


async def execute(client, sql: str, params=()) -> None:
    """A change made beside cimid, once its Jobs are done (this blocking write would stall the loop)."""
    await client.app[PROVIDER].jobs.drain()
    db = sqlite3.connect(client.app[DATABASE])
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()


async def test_a_retried_create_with_the_same_key_makes_one_machine_and_gets_the_first_answer(client):
    first = await client.post("machines", machine(client), headers=who("alice", "order-1"))
    assert first.status == 202, first
    assert "Idempotent-Replayed" not in first.headers
    await client.wait_job(first.headers["CIMI-Job-URI"])  # the Job moves on; the replay still says QUEUED
    for _ in range(2):
        again = await client.post("machines", machine(client), headers=who("alice", "order-1"))
        assert again.status == 202, again
        assert again.headers["Idempotent-Replayed"] == "true"
        for header in ("Location", "CIMI-Job-URI", "Content-Type"):
            assert again.headers[header] == first.headers[header]
        assert again.body == first.body
    assert machines(client) == 1
    assert create_jobs(client) == 1
    listed = (await client.get("machines", headers=who("alice"))).json
    assert [m["id"] for m in listed["machines"]] == [first.headers["Location"]]


async def test_a_catalogue_create_is_replayed_with_its_etag(client):
    conf = {"name": "c", "cpu": 1, "memory": 1024}
    first = await client.post("machineConfigs", conf, headers=who("alice", "conf"))
    assert first.status == 201, first
    again = await client.post("machineConfigs", conf, headers=who("alice", "conf"))
    assert (again.status, again.headers["ETag"], again.headers["Location"], again.body) == \
           (201, first.headers["ETag"], first.headers["Location"], first.body)
    assert count(client, "SELECT count(*) FROM resources WHERE kind = 'MachineConfiguration' AND name = 'c'") == 1


async def test_the_same_key_from_another_consumer_is_its_own(client):
    a = await client.post("machines", machine(client), headers=who("alice", "shared-key"))
    b = await client.post("machines", machine(client), headers=who("bob", "shared-key"))
    assert (a.status, b.status) == (202, 202)
    assert "Idempotent-Replayed" not in b.headers
    assert a.headers["Location"] != b.headers["Location"]
    assert machines(client) == 2
    # and each one's retry gets its own first answer
    again = await client.post("machines", machine(client), headers=who("bob", "shared-key"))
    assert again.headers["Location"] == b.headers["Location"]
    assert (await client.get(b.headers["Location"], headers=who("alice"))).status == 404


async def test_the_same_key_with_another_request_is_refused_and_changes_nothing(client):
    first = await client.post("machines", machine(client, "one"), headers=who("alice", "k"))
    assert first.status == 202
    await client.wait_job(first.headers["CIMI-Job-URI"])
    before = await client.rows()
    other_body = await client.post("machines", machine(client, "two"), headers=who("alice", "k"))
    assert "another request" in assert_error(other_body, 422)
    other_path = await client.post("machineConfigs", machine(client, "one"), headers=who("alice", "k"))
    assert_error(other_path, 422)
    assert await client.rows() == before
    # the first answer is still there for a true retry
    assert (await client.post("machines", machine(client, "one"), headers=who("alice", "k"))).headers[
        "Location"] == first.headers["Location"]


async def test_a_retry_while_the_first_runs_gets_409_and_one_machine_is_made(client):
    store = client.app[PROVIDER].store
    requests = [asyncio.create_task(client.post("machines", machine(client), headers=who("alice", "busy")))
                for _ in range(2)]
    async with store.write():  # the store's one writer is held: whichever reserves first waits here
        done, pending = await asyncio.wait(requests, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1, "neither request saw the other run"
        refused = done.pop().result()
    assert "still running" in assert_error(refused, 409)
    made = await pending.pop()
    assert made.status == 202 and "Idempotent-Replayed" not in made.headers
    assert machines(client) == 1
    assert create_jobs(client) == 1


async def test_concurrent_requests_with_one_key_make_one_machine(client):
    replies = await asyncio.gather(*(client.post("machines", machine(client), headers=who("alice", "burst"))
                                     for _ in range(8)))
    made = [r for r in replies if r.status == 202 and "Idempotent-Replayed" not in r.headers]
    assert len(made) == 1, replies
    for r in replies:
        if r is made[0]:
            continue
        if r.status == 409:
            assert "still running" in r.json["statusMessage"]
        else:  # it came after the first answered
            assert r.headers["Idempotent-Replayed"] == "true" and r.body == made[0].body
    assert machines(client) == 1
    assert create_jobs(client) == 1


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_an_empty_or_too_long_key_is_400_and_changes_nothing(client, key):
    before = await client.rows()
    assert "Idempotency-Key" in assert_error(await client.post("machines", machine(client),
                                                               headers=who("alice", key)), 400)
    assert await client.rows() == before


async def test_a_key_of_255_characters_is_taken(client):
    key = "k" * 255
    first = await client.post("machines", machine(client), headers=who("alice", key))
    assert first.status == 202
    assert (await client.post("machines", machine(client), headers=who("alice", key))).headers[
        "Idempotent-Replayed"] == "true"
    assert machines(client) == 1


async def test_two_keys_on_one_request_are_400(client):
    async with client.client.post("/cimi/machines", data=json.dumps(machine(client)),
                                  headers=[*who("alice").items(), ("Content-Type", "application/json"),
                                           ("Accept", "application/json"), ("Idempotency-Key", "a"),
                                           ("Idempotency-Key", "b")]) as resp:
        assert resp.status == 400
    assert machines(client) == 0


async def test_a_4xx_is_kept_for_the_retry(client):
    bad = {"machineTemplate": {"href": client.base + "machineTemplates/nonexistent"}}
    first = await client.post("machines", bad, headers=who("alice", "bad"))
    assert_error(first, 400)
    again = await client.post("machines", bad, headers=who("alice", "bad"))
    assert again.status == 400 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body


async def test_a_5xx_is_not_kept_so_the_retry_runs_again(tmp_path):
    client = await with_consumers(await make_client(tmp_path, {
        "compute": {"driver": "libvirt", "uri": "qemu+unix:///system?socket=/nonexistent/sock"},
        "images": {"driver": "dir"}}))
    try:
        first = await client.post("machines", machine(client), headers=who("alice", "flaky"))
        assert_error(first, 503)
        again = await client.post("machines", machine(client), headers=who("alice", "flaky"))
        assert_error(again, 503)
        assert "Idempotent-Replayed" not in again.headers  # it ran again: a new failure, under a new id
        assert again.json["properties"]["requestId"] != first.json["properties"]["requestId"]
        assert count(client, "SELECT count(*) FROM idempotency_keys") == 0
    finally:
        await client.client.close()


async def test_keys_older_than_the_retention_are_forgotten(tmp_path):
    client = await with_consumers(await make_client(tmp_path, {"server": {"idempotency_minutes": 5}}))
    try:
        for key in ("old", "fresh", "old-unpurged"):
            assert (await client.post("machines", machine(client), headers=who("alice", key))).status == 202
        assert count(client, "SELECT count(*) FROM idempotency_keys") == 3
        aged = "UPDATE idempotency_keys SET created = '2000-01-01T00:00:00.000Z' WHERE key = ?"
        await execute(client, aged, ("old",))
        await client.app[PROVIDER].idempotency.purge()
        assert count(client, "SELECT count(*) FROM idempotency_keys WHERE key = 'old'") == 0
        assert count(client, "SELECT count(*) FROM idempotency_keys WHERE key = 'fresh'") == 1
        # an expired key is not replayed even before the purge comes round
        await execute(client, aged, ("old-unpurged",))
        for key in ("old", "old-unpurged"):
            r = await client.post("machines", machine(client), headers=who("alice", key))
            assert r.status == 202 and "Idempotent-Replayed" not in r.headers
        assert (await client.post("machines", machine(client), headers=who("alice", "fresh"))).headers[
            "Idempotent-Replayed"] == "true"
        assert machines(client) == 5
    finally:
        await client.client.close()


async def test_a_create_whose_answer_was_never_stored_is_answered_from_its_job_after_a_restart(tmp_path):
    """cimid dies after the create committed, before the answer did: what the store then holds is the
    reservation with the Job recorded in the create's own transaction, and no answer."""
    client = await with_consumers(await make_client(tmp_path))
    body = json.dumps(machine(client)).encode()  # the same bytes again: the restarted server has another port
    headers = {**who("alice", "crash"), "Content-Type": "application/json"}
    first = await client.post("machines", body, headers=headers)
    assert first.status == 202
    await client.wait_job(first.headers["CIMI-Job-URI"])
    await client.client.close()
    await execute(client, "UPDATE idempotency_keys SET status = NULL, headers = NULL, body = NULL")
    client = await make_client(tmp_path)
    try:
        again = await client.post("machines", body, headers=headers)
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
        for header in ("Location", "CIMI-Job-URI"):  # under the restarted server's base URL
            assert again.headers[header].split("/cimi/")[1] == first.headers[header].split("/cimi/")[1]
        assert again.json["state"] == "SUCCESS"  # the Job as it is now
        assert machines(client) == 1
        assert create_jobs(client) == 1
    finally:
        await client.client.close()


async def test_a_reservation_that_changed_nothing_before_a_restart_runs_its_retry(tmp_path):
    """cimid dies after reserving the key, before the create committed: nothing was made, so the retry
    makes the machine (once)."""
    client = await with_consumers(await make_client(tmp_path))
    body = json.dumps(machine(client)).encode()
    await client.client.close()
    fingerprint = hashlib.sha256(b"\n".join([b"POST", b"/cimi/machines", body])).hexdigest()
    await execute(client, "INSERT INTO idempotency_keys (consumer, key, fingerprint, created) VALUES"
                    " ('alice', 'half', ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", (fingerprint,))
    client = await make_client(tmp_path)
    try:
        other = await client.post("machines", machine(client, "other"), headers=who("alice", "half"))
        assert_error(other, 422)  # still bound to its first request
        made = await client.post("machines", body, headers={**who("alice", "half"),
                                                              "Content-Type": "application/json"})
        assert made.status == 202 and "Idempotent-Replayed" not in made.headers, made
        again = await client.post("machines", body, headers={**who("alice", "half"),
                                                               "Content-Type": "application/json"})
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["Location"] == made.headers["Location"]
        assert machines(client) == 1
    finally:
        await client.client.close()


async def test_an_attach_whose_answer_was_never_stored_is_answered_202_from_its_job_after_a_restart(tmp_path):
    """A hot-plug's Job is stored already RUNNING by the request's own commit; the answer rebuilt from it
    is still the 202 with the attachment's Location that the client was first given."""
    client = await with_consumers(await make_client(tmp_path))
    made = await client.post("machines", machine(client), headers=who("alice"))
    volume = await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024}}},
                               headers=who("alice"))
    for answer in (made, volume):
        await client.wait_job(answer.headers["CIMI-Job-URI"])
    body = json.dumps({"volume": {"href": volume.headers["Location"]}, "initialLocation": "vdb"}).encode()
    path = made.headers["Location"].split("/cimi/")[1] + "/volumes"
    headers = {**who("alice", "plug"), "Content-Type": "application/json"}
    first = await client.post(path, body, headers=headers)
    assert first.status == 202, first
    await client.wait_job(first.headers["CIMI-Job-URI"])
    await client.client.close()
    await execute(client, "UPDATE idempotency_keys SET status = NULL, headers = NULL, body = NULL")
    client = await make_client(tmp_path)
    try:
        again = await client.post(path, body, headers=headers)
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true", again
        for header in ("Location", "CIMI-Job-URI"):
            assert again.headers[header].split("/cimi/")[1] == first.headers[header].split("/cimi/")[1]
        assert count(client, "SELECT count(*) FROM resources WHERE kind = 'MachineVolume'") == 1
    finally:
        await client.client.close()
