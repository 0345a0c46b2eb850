"""Consumers and tenancy: each consumer sees the public catalogue and what it made, in every collection,
count, $filter and $expand; another's resources are 404 by any path; an admin sees and changes everything,
a reader sees everything and changes nothing; Bearer tokens, revoked and expired."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from conftest import who

from cimid.accounts import expiry
from cimid.http.auth import hash_password
from cimid.http.keys import PROVIDER
from cimid.model.registry import TOP_LEVEL
from cimid.store import consumers

CIMI = "http://schemas.dmtf.org/cimi/1"



@pytest.fixture
def client(consumers_client):
    return consumers_client


async def make_things(client, name: str) -> dict[str, str]:
    """What one consumer makes: a configuration, a credential, an image, a machine (with its Jobs)."""
    h = who(name)
    made = {}
    r = await client.post("machineConfigs", {"name": f"{name}-conf", "cpu": 1, "memory": 1024}, headers=h)
    assert r.status == 201, r
    made["machineConfigs"] = r.headers["Location"]
    r = await client.post("credentials", {"name": f"{name}-cred", "credentialTemplate": {
        "userName": name, "password": "pw"}}, headers=h)
    assert r.status == 201, r
    made["credentials"] = r.headers["Location"]
    r = await client.post("machineImages", {"name": f"{name}-image", "imageLocation": f"urn:x:{name}"}, headers=h)
    assert r.status == 201, r
    made["machineImages"] = r.headers["Location"]
    r = await client.post("machines", {"name": f"{name}-vm", "machineTemplate": {
        "href": client.base + "machineTemplates/small-tiny-linux"}}, headers=h)
    assert r.status == 202, r
    made["machines"] = r.headers["Location"]
    await client.assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    made["jobs"] = r.headers["CIMI-Job-URI"]
    return made


async def listed(client, collection: str, name: str, **params) -> dict:
    r = await client.get(collection, headers=who(name), params=params or None)
    assert r.status == 200, r
    return r.json


def hrefs(doc: dict, items: str) -> set[str]:
    return {item["id"] for item in doc.get(items, ())}


async def test_each_consumer_sees_the_public_catalogue_and_its_own_in_every_collection(client):
    alice, bob = await make_things(client, "alice"), await make_things(client, "bob")
    for collection, rtype in TOP_LEVEL.items():
        everything = await listed(client, collection, "root")
        for me, other in ((alice, bob), (bob, alice)):
            name = "alice" if me is alice else "bob"
            doc = await listed(client, collection, name)
            mine = hrefs(doc, rtype.items)
            assert doc["count"] == len(mine), collection
            assert not mine & set(other.values()), f"{name} sees another's {collection}"
            if collection in me:
                assert me[collection] in mine
            if collection == "jobs":  # a consumer's Jobs are only its own
                assert mine and all(job["id"] in mine for job in doc["jobs"])
            assert mine <= hrefs(everything, rtype.items), collection
        # the reader sees what the admin sees
        assert hrefs(await listed(client, collection, "carol"), rtype.items) == hrefs(everything, rtype.items)
    # the seeded catalogue is public
    configs = hrefs(await listed(client, "machineConfigs", "alice"), "machineConfigurations")
    assert client.base + "machineConfigs/small" in configs and alice["machineConfigs"] in configs
    # $filter and count stay inside the scope
    doc = await listed(client, "machines", "alice", **{"$filter": "name='bob-vm'"})
    assert doc["count"] == 0
    assert (await listed(client, "machines", "root", **{"$filter": "name='bob-vm'"}))["count"] == 1
    assert (await listed(client, "machines", "alice"))["count"] == 1


async def test_another_consumers_resources_are_404_by_every_path(client):
    await make_things(client, "alice")
    bob = await make_things(client, "bob")
    alice = who("alice")
    before = await client.rows()
    for collection, href in bob.items():
        assert (await client.get(href, headers=alice)).status == 404, collection
        assert (await client.delete(href, headers=alice)).status == 404, collection
    assert (await client.put(bob["machineConfigs"], {"name": "mine", "cpu": 1, "memory": 1},
                             headers=alice)).status == 404
    machine = bob["machines"]
    assert (await client.get(machine + "/disks", headers=alice)).status == 404
    assert (await client.get(machine + "/console", headers=alice)).status == 404
    r = await client.post(machine + "/stop", {"action": f"{CIMI}/action/stop"}, headers=alice)
    assert r.status == 404
    r = await client.post(bob["jobs"] + "/stop", {"action": f"{CIMI}/action/stop"}, headers=alice)
    assert r.status == 404
    disk = (await client.get(machine + "/disks", headers=who("bob"))).json["disks"][0]["id"]
    assert (await client.get(disk, headers=alice)).status == 404
    # a reference to another's private resource does not resolve either
    r = await client.post("machines", {"name": "x", "machineTemplate": {
        "machineConfig": {"href": bob["machineConfigs"]},
        "machineImage": {"href": client.base + "machineImages/tiny-linux"}}}, headers=alice)
    assert r.status == 400 and "does not name an existing" in r.json["statusMessage"]
    r = await client.post("machineTemplates", {"name": "t", "machineConfig": {"href": bob["machineConfigs"]}},
                          headers=alice)
    assert r.status == 400
    assert await client.rows() == before


async def test_expand_stays_in_scope(client):
    bob = await make_things(client, "bob")
    # an admin's public template that refers to bob's private configuration
    r = await client.post("machineTemplates", {"name": "mixed", "machineConfig": {"href": bob["machineConfigs"]},
                                               "machineImage": {"href": client.base + "machineImages/tiny-linux"}},
                          headers=who("root"))
    assert r.status == 201, r
    template = r.headers["Location"]
    seen = (await client.get(template, headers=who("alice"), params={"$expand": "*"})).json
    assert seen["machineConfig"] == {"href": bob["machineConfigs"]}  # not expanded for alice
    assert seen["machineImage"]["name"] == "tiny-linux"  # the public image is
    assert (await client.get(template, headers=who("bob"), params={"$expand": "*"})).json["machineConfig"]["cpu"] == 1


async def test_public_catalogue_is_used_not_changed_and_admins_publish(client):
    alice, bob = who("alice"), who("bob")
    small = client.base + "machineConfigs/small"
    doc = (await client.get(small, headers=alice)).json
    assert "operations" not in doc  # alice may use it, not change it
    before = await client.rows()
    assert (await client.put(small, {"name": "hacked", "cpu": 1, "memory": 1}, headers=alice)).status == 403
    assert (await client.delete(small, headers=alice)).status == 403
    assert (await client.post(small + "/unpublish", headers=alice)).status == 403
    assert await client.rows() == before
    mine = (await client.post("machineConfigs", {"name": "shared", "cpu": 2, "memory": 1}, headers=alice))
    conf = mine.headers["Location"]
    assert (await client.get(conf, headers=bob)).status == 404
    ops = {o["rel"] for o in (await client.get(conf, headers=who("root"))).json["operations"]}
    assert "urn:x-cimid:action:publish" in ops and "urn:x-cimid:action:unpublish" not in ops
    r = await client.post(conf + "/publish", headers=who("root"))
    assert r.status == 200 and r.json["state"] == "SUCCESS", r
    assert (await client.get(conf, headers=bob)).json["name"] == "shared"
    assert (await client.put(conf, {"name": "bobs", "cpu": 1, "memory": 1}, headers=bob)).status == 403
    assert (await client.put(conf, {"name": "still mine", "cpu": 1, "memory": 1}, headers=alice)).status == 200
    await client.post(conf + "/unpublish", headers=who("root"))
    assert (await client.get(conf, headers=bob)).status == 404


async def test_a_reader_reads_everything_and_changes_nothing(client):
    bob = await make_things(client, "bob")
    carol = who("carol")
    before = await client.rows()
    assert (await client.get(bob["machines"], headers=carol)).json["name"] == "bob-vm"
    assert (await client.delete(bob["machines"], headers=carol)).status == 403
    assert (await client.post("machineConfigs", {"name": "c", "cpu": 1, "memory": 1}, headers=carol)).status == 403
    assert await client.rows() == before


async def test_bearer_tokens_and_their_end(client):
    store = client.app[PROVIDER].store
    token, secret = await consumers.create_token(store, "alice")
    bearer = {"Authorization": f"Bearer {secret}"}
    mine = await client.post("machineConfigs", {"name": "by-token", "cpu": 1, "memory": 1}, headers=bearer)
    assert mine.status == 201
    assert (await client.get(mine.headers["Location"], headers=who("alice"))).status == 200  # alice's
    assert (await client.get(mine.headers["Location"], headers=who("bob"))).status == 404
    await consumers.revoke_token(store, token.id)
    assert (await client.get("cloudEntryPoint", headers=bearer)).status == 401
    _, expired = await consumers.create_token(store, "alice", expires=expiry("2020-01-01"))
    assert (await client.get("cloudEntryPoint", headers={"Authorization": f"Bearer {expired}"})).status == 401
    assert (await client.get("cloudEntryPoint", headers={"Authorization": "Bearer cimid_nope"})).status == 401
    nobody = {"Authorization": ""}
    assert (await client.get("cloudEntryPoint", headers=nobody)).status == 401  # no anonymous admin now


async def test_a_changed_password_or_role_takes_effect_at_once(client):
    store = client.app[PROVIDER].store
    assert (await client.get("cloudEntryPoint", headers=who("alice"))).status == 200
    await consumers.set_password(store, "alice", hash_password("new", 1000))
    assert (await client.get("cloudEntryPoint", headers=who("alice"))).status == 401
    await consumers.set_role(store, "bob", "reader")
    r = await client.post("machineConfigs", {"name": "c", "cpu": 1, "memory": 1}, headers=who("bob"))
    assert r.status == 403


async def test_quotas_are_checked_before_any_host_work_and_shown_on_the_entry_point(client):
    store = client.app[PROVIDER].store
    await consumers.set_quotas(store, "alice", {"machines": 2, "cpu": 2})
    alice = who("alice")
    small = {"href": client.base + "machineTemplates/small-tiny-linux"}  # 1 cpu each
    first = await client.post("machines", {"name": "a1", "machineTemplate": small}, headers=alice)
    await client.assert_state(await client.wait_job(first.headers["CIMI-Job-URI"]), "SUCCESS")
    before = await client.rows()
    medium = {**small, "machineConfig": {"href": client.base + "machineConfigs/medium"}}  # 2 cpu
    r = await client.post("machines", {"name": "a2", "machineTemplate": medium}, headers=alice)
    assert r.status == 403 and r.json["statusMessage"] == (
        "quota cpu exceeded: 'alice' may use 2 and uses 1; this request needs 2 more")
    assert await client.rows() == before  # refused before anything was stored or asked of the host
    second = await client.post("machines", {"name": "a2", "machineTemplate": small}, headers=alice)
    await client.assert_state(await client.wait_job(second.headers["CIMI-Job-URI"]), "SUCCESS")
    r = await client.post("machines", {"name": "a3", "machineTemplate": small}, headers=alice)
    assert r.status == 403 and "quota machines exceeded" in r.json["statusMessage"]
    usage = (await client.get("cloudEntryPoint", headers=alice)).json["usage"]
    assert usage["machines"] == {"used": 2, "limit": 2} and usage["cpu"] == {"used": 2, "limit": 2}
    assert usage["memory"] == {"used": 2 * 1024 * 1024}  # no limit set
    xml = (await client.get("cloudEntryPoint", headers=alice, fmt="xml")).xml  # still valid against DSP8009
    item = xml.find("{urn:x-cimid:xml:1}usage/{urn:x-cimid:xml:1}item[@name='machines']")
    assert item.get("used") == "2" and item.get("limit") == "2"
    # bob has no quotas, and alice's use is not his
    assert (await client.get("cloudEntryPoint", headers=who("bob"))).json["usage"]["machines"] == {"used": 0}
    # deleting frees the quota
    r = await client.delete(first.headers["Location"], headers=alice)
    await client.assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    r = await client.post("machines", {"name": "a3", "machineTemplate": small}, headers=alice)
    assert r.status == 202


async def test_consumers_are_read_once_until_the_database_changes_even_from_another_process(client):
    """A steady client costs no store query per request; `cimid token revoke` and `cimid consumer role`,
    run as their own processes, still take effect at the next request."""
    store = client.app[PROVIDER].store
    token, secret = await consumers.create_token(store, "alice")
    bearer = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("cloudEntryPoint", headers=bearer)).status == 200
    assert (await client.get("cloudEntryPoint", headers=who("bob"))).status == 200
    queries = []
    real_fetch = store.fetch

    async def counted(sql, params=()):
        queries.append(sql)
        return await real_fetch(sql, params)
    store.fetch = counted  # the real store, its queries counted
    for _ in range(3):
        assert (await client.get("cloudEntryPoint", headers=bearer)).status == 200
        assert (await client.get("cloudEntryPoint", headers=who("bob"))).status == 200
    assert not [q for q in queries if "consumers" in q or "tokens" in q], queries

    def cimid(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "cimid.cli", *args, "--state-dir", str(client.state_dir)],
                       check=True, capture_output=True, timeout=60)
    await asyncio.to_thread(cimid, "token", "revoke", token.id)
    assert (await client.get("cloudEntryPoint", headers=bearer)).status == 401
    await asyncio.to_thread(cimid, "consumer", "role", "bob", "reader")
    r = await client.post("machineConfigs", {"name": "c", "cpu": 1, "memory": 1}, headers=who("bob"))
    assert r.status == 403


async def test_a_user_header_from_anyone_but_a_front_is_refused_and_changes_nothing(client):
    """A node believes CIMID-User only from a front's certificate (cimid/front/identity.py): never on a
    node without the federation CA, whoever else the request says it is."""
    before = (await listed(client, "machineConfigs", "root"))["count"]
    for headers in ({"CIMID-User": "admin mallory"}, {**who("alice"), "CIMID-User": "admin alice"}):
        r = await client.post("machineConfigs", {"name": "forged", "cpu": 1, "memory": 1024}, headers=headers)
        assert r.status == 403 and "CIMID-User" in r.json["statusMessage"], r
        r = await client.get("machines", headers=headers)
        assert r.status == 403
    assert (await listed(client, "machineConfigs", "root"))["count"] == before
