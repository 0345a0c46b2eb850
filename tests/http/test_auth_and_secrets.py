"""Issue 7, cases 7 and 8 and logging: login costs the same for everyone and is rate-limited, Credential
passwords are write-only, logs hold no body or password, a 5xx is logged once under the request id its
error Job carries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import sqlite3
import threading

import aiohttp
import pytest
from conftest import DATABASE, NS, assert_error, assert_valid_xml, make_client

from cimid.http.keys import AUTH, CONFIG
from cimid.http.auth import Authenticator, hash_password

CIMI = "http://schemas.dmtf.org/cimi/1"
CONFIG_BODY = {"name": "x", "cpu": 1, "memory": 1}



async def post_raw_json(client, path, raw: bytes):
    return await client.request("POST", path, raw, headers={"Content-Type": "application/json"})


# ---------------------------------------------------------------- 7. authentication

def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


USERS = [{"name": "alice", "role": "admin", "password_hash": hash_password("wonderland", 1000)}]


@pytest.fixture
async def auth_client(tmp_path):
    client = await make_client(tmp_path, {"auth": {"users": USERS}})
    yield client
    await client.client.close()


@pytest.fixture
def kdf_calls(monkeypatch):
    """Every PBKDF2 computation, with the thread it ran on (a spy on the standard library, not on cimid)."""
    calls, real = [], hashlib.pbkdf2_hmac

    def spy(name, password, salt, iterations, *rest):
        calls.append({"password": password, "iterations": iterations, "thread": threading.current_thread()})
        return real(name, password, salt, iterations, *rest)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", spy)
    return calls


async def test_unknown_user_costs_the_same_kdf_as_a_known_one(auth_client, kdf_calls):
    assert_error(await auth_client.get("cloudEntryPoint", headers=basic("alice", "wrong")), 401)
    assert_error(await auth_client.get("cloudEntryPoint", headers=basic("mallory", "wrong")), 401)
    assert len(kdf_calls) == 2
    assert kdf_calls[0]["iterations"] == kdf_calls[1]["iterations"] == 1000
    for call in kdf_calls:  # off the event loop, in cimid's own pool
        assert call["thread"] is not threading.main_thread() and call["thread"].name.startswith("cimid-kdf")


async def test_many_wrong_passwords_at_once_use_a_bounded_pool(tmp_path, kdf_calls):
    client = await make_client(tmp_path, {"auth": {"users": USERS, "kdf_threads": 2, "max_failed_logins": 0}})
    try:
        replies = await asyncio.gather(*(client.get("cloudEntryPoint", headers=basic("alice", f"wrong{i}"))
                                         for i in range(12)))
        assert all(r.status == 401 for r in replies)
        assert len(kdf_calls) == 12
        threads = {call["thread"] for call in kdf_calls}
        assert len(threads) <= 2 and all(t.name.startswith("cimid-kdf") for t in threads)
        assert threading.main_thread() not in threads
    finally:
        await client.client.close()


async def test_verified_logins_are_cached_under_a_keyed_hash(auth_client, kdf_calls):
    for _ in range(3):
        assert (await auth_client.get("cloudEntryPoint", headers=basic("alice", "wonderland"))).status == 200
    assert len(kdf_calls) == 1  # the later requests were answered from the cache
    auth = auth_client.app[AUTH]
    keys = list(auth.verified)
    assert len(keys) == 1
    key = keys[0]
    assert isinstance(key, bytes) and len(key) == 32
    assert b"wonderland" not in key and "wonderland" not in repr(auth.verified)
    other = Authenticator(USERS, auth.directory)  # another process: another random key, another cache key
    stored = USERS[0]["password_hash"]
    assert other.cache_key("alice", "wonderland", stored) != key == auth.cache_key("alice", "wonderland", stored)
    other.close()


async def test_failed_logins_are_rate_limited_per_address(auth_client):
    limit = auth_client.app[CONFIG]["auth"]["max_failed_logins"]
    window = auth_client.app[CONFIG]["auth"]["failed_login_window_seconds"]
    before = await auth_client.rows()
    for i in range(limit):
        who = "alice" if i % 2 else "nobody"
        assert_error(await auth_client.get("cloudEntryPoint", headers=basic(who, f"guess{i}")), 401)
    r = await auth_client.get("cloudEntryPoint", headers=basic("alice", "guess-again"))
    assert "too many" in assert_error(r, 429)
    assert 1 <= int(r.headers["Retry-After"]) <= window
    # while blocked, even the right password is refused, or the lock would still answer guesses
    assert_error(await auth_client.post("machineConfigs", CONFIG_BODY, headers=basic("alice", "wonderland")), 429)
    assert await auth_client.rows() == before
    # another address is not affected (all of 127.0.0.0/8 is loopback)
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = auth_client.client.make_url("/cimi/cloudEntryPoint")
        async with session.get(url, headers=basic("alice", "wonderland")) as other:
            assert other.status == 200


def test_auth_limits_are_documented_with_their_defaults():
    import tomllib
    from pathlib import Path

    from cimid.config import DEFAULTS
    example = tomllib.loads((Path(__file__).resolve().parents[2] / "etc" / "cimid.toml").read_text())
    for key in ("max_failed_logins", "failed_login_window_seconds", "kdf_threads"):
        assert example["auth"][key] == DEFAULTS["auth"][key]


# ---------------------------------------------------------------- 8. Credential passwords are write-only

SECRET = "s3cret-PW-7"


async def test_credential_password_is_never_returned(app_client):
    tpl = await app_client.post("credentialTemplates", {"name": "t", "userName": "admin", "password": SECRET})
    cred = await app_client.post("credentials", {"name": "c", "credentialTemplate": {"href": tpl.headers["Location"]}})
    mt = await app_client.post("machineTemplates", {"name": "byval", "credential": {"userName": "u",
                                                                                   "password": SECRET}})
    mt_ref = await app_client.post("machineTemplates", {"name": "byref",
                                                        "credential": {"href": cred.headers["Location"]}})
    created = [tpl, cred, mt, mt_ref]
    assert all(r.status == 201 for r in created), created
    assert all(SECRET.encode() not in r.body for r in created)
    assert SECRET in json.dumps(await app_client.rows())  # it is stored: machines still get it
    reads = []
    for fmt in ("json", "xml"):
        for path in (tpl.headers["Location"], cred.headers["Location"], mt.headers["Location"],
                     "credentials", "credentialTemplates", "machineTemplates"):
            reads.append(await app_client.get(path, fmt=fmt))
            reads.append(await app_client.get(path, fmt=fmt, params={"$select": "password,userName"}))
            reads.append(await app_client.get(path, fmt=fmt, params={"$select": "credential"}))
        reads.append(await app_client.get(mt_ref.headers["Location"], fmt=fmt, params={"$expand": "credential"}))
        reads.append(await app_client.get("machineTemplates", fmt=fmt, params={"$expand": "*"}))
    assert all(r.status == 200 for r in reads)
    for r in reads:
        assert SECRET.encode() not in r.body and b"password" not in r.body, r
    expanded = (await app_client.get(mt_ref.headers["Location"], params={"$expand": "credential"})).json
    assert expanded["credential"]["userName"] == "admin"  # expanded, just without the password


async def test_password_cannot_be_probed_with_filter_or_orderby(app_client):
    await app_client.post("credentialTemplates", {"userName": "admin", "password": SECRET})
    assert "password" in assert_error(await app_client.get("credentialTemplates", params={
        "$filter": f"password='{SECRET}'"}), 400)
    assert_error(await app_client.get("credentialTemplates", params={"$orderby": "password"}), 400)


def _stored(client, kind, id) -> dict:
    db = sqlite3.connect(client.app[DATABASE])
    try:
        return json.loads(db.execute("SELECT doc FROM resources WHERE kind = ? AND id = ?", (kind, id)).fetchone()[0])
    finally:
        db.close()


async def test_put_without_password_keeps_it(app_client):
    r = await app_client.post("credentialTemplates", {"name": "t", "userName": "admin", "password": SECRET})
    path = app_client.url(r.headers["Location"])
    id = path.rsplit("/", 1)[1]
    put = await app_client.put(path, {"name": "renamed", "userName": "root"})
    assert put.status == 200 and put.json["name"] == "renamed" and "password" not in put.json
    assert _stored(app_client, "CredentialTemplate", id)["password"] == SECRET
    put = await app_client.put(path, f'<CredentialTemplate xmlns="{CIMI}"><name>x</name>'
                                     "<userName>root</userName></CredentialTemplate>")
    assert put.status == 200
    assert _stored(app_client, "CredentialTemplate", id)["password"] == SECRET
    assert (await app_client.put(path, {"userName": "root", "password": "new-one"})).status == 200
    assert _stored(app_client, "CredentialTemplate", id)["password"] == "new-one"


async def test_write_only_password_is_in_resource_metadata(app_client):
    for fmt in ("json", "xml"):
        for type_name in ("Credential", "CredentialTemplate"):
            r = await app_client.get(f"resourceMetadata/{type_name}", fmt=fmt)
            assert r.status == 200
            if fmt == "json":
                attr = next(a for a in r.json["attributes"] if a["name"] == "password")
                assert "write-only" in attr["description"]
            else:
                attr = next(a for a in r.xml.iter("{urn:x-cimid:xml:1}attribute") if a.get("name") == "password")
                assert "write-only" in attr.get("description")


# ---------------------------------------------------------------- logging

async def test_4xx_log_lines_hold_no_body_and_no_password(auth_client, caplog):
    auth_client.app[CONFIG]["server"]["log_requests"] = True
    caplog.set_level(logging.DEBUG)
    marker, admin = "BODY-MARKER-93", basic("alice", "wonderland")
    await auth_client.get("cloudEntryPoint", headers=admin)  # cached: later 4xx are not rate-limited ones
    bodies = [
        {**CONFIG_BODY, "colour": marker},
        {**CONFIG_BODY, "cpu": marker},
        {**CONFIG_BODY, "name": marker + "\x00"},
    ]
    for body in bodies:
        assert_error(await auth_client.post("machineConfigs", body, headers=admin), 400)
    assert_error(await auth_client.post("credentials", {"credentialTemplate": {"password": marker, "x": 1}},
                                        headers=admin), 400)
    assert_error(await auth_client.post("machineConfigs", f"<MachineConfiguration><cpu>{marker}</cpu>"
                                        "</MachineConfiguration>", headers=admin), 400)
    assert_error(await post_raw_json(auth_client, "machineConfigs", marker.encode()), 401)
    assert_error(await auth_client.get("cloudEntryPoint", headers=basic("alice", marker)), 401)
    lines = [r for r in caplog.records if r.name.startswith("cimid")]
    assert sum(" 400 " in r.getMessage() for r in lines) == 5 and sum(" 401 " in r.getMessage() for r in lines) == 2
    text = caplog.text + "".join(str(r.args) + (r.exc_text or "") for r in caplog.records)
    assert marker not in text and "wonderland" not in text


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_5xx_logs_its_traceback_once_with_the_error_jobs_request_id(app_client, caplog, fmt):
    caplog.set_level(logging.DEBUG)
    db = sqlite3.connect(app_client.app[DATABASE])
    db.execute("UPDATE resources SET doc = 'not json' WHERE kind = 'MachineConfiguration' AND id = 'tiny'")
    db.commit()
    db.close()
    r = await app_client.get("machineConfigs/tiny", fmt=fmt)
    assert r.status == 500
    if fmt == "json":
        request_id, message = r.json["properties"]["requestId"], r.json["statusMessage"]
    else:
        request_id = r.xml.find("c:property[@key='requestId']", namespaces=NS).text
        message = r.xml.findtext("c:statusMessage", namespaces=NS)
    assert request_id and request_id in message and "Traceback" not in r.body.decode()
    with_traceback = [rec for rec in caplog.records if rec.exc_info]
    assert len(with_traceback) == 1 and request_id in with_traceback[0].getMessage()
    assert "JSONDecodeError" in caplog.text
    assert_valid_xml((await app_client.get("machineConfigs/tiny", fmt="xml")).body)


async def test_503_is_logged_once_under_the_request_id_its_job_carries(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = await make_client(tmp_path, {"compute": {"driver": "libvirt",
                                                      "uri": "qemu+unix:///system?socket=/nonexistent/sock"},
                                          "images": {"driver": "dir"}})
    try:
        caplog.clear()  # start-up may log that the hypervisor is unreachable
        before = await client.rows()
        template = {"href": client.base + "machineTemplates/small-tiny-linux"}
        r = await client.post("machines", {"machineTemplate": template})
        assert "hypervisor" in assert_error(r, 503)
        request_id = r.json["properties"]["requestId"]
        assert request_id in r.json["statusMessage"]
        with_traceback = [rec for rec in caplog.records if rec.exc_info]
        assert len(with_traceback) == 1 and request_id in with_traceback[0].getMessage()
        assert await client.rows() == before
    finally:
        await client.client.close()
