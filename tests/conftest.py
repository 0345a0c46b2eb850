"""Fixtures: `app_client` (the sandbox profile over HTTP), `bare_app` (no drivers), XSD checking of every
XML body a test receives."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis.configuration import set_hypothesis_home_dir
from lxml import etree

from cimid.config import load
from cimid.daemon import build_app
from cimid.store.db import Store

pytest_plugins = ("pytester",)  # tests/test_pytest_plugin.py runs outside test files with cimid's plugin
# Hypothesis keeps its caches (and tests/fuzz's `fuzz` profile its examples) in the temp dir, not in the checkout.
HYPOTHESIS_HOME = Path(tempfile.gettempdir()) / "cimid-hypothesis"
set_hypothesis_home_dir(HYPOTHESIS_HOME)

DATABASE = web.AppKey("database", str)  # the store's file, for tests that read it directly
XSD = Path(__file__).resolve().parents[1] / "tests" / "data" / "dsp8009_1.0.2.xsd"
_SCHEMA = etree.XMLSchema(etree.parse(str(XSD), etree.XMLParser(no_network=True)))
NS = {"c": "http://schemas.dmtf.org/cimi/1"}


def assert_valid_xml(body: bytes) -> etree._Element:
    root = etree.fromstring(body)
    if not _SCHEMA.validate(root):
        raise AssertionError(f"XML does not validate against DSP8009: {_SCHEMA.error_log}\n{body.decode()}")
    return root


def state_message(doc: dict, expected: tuple[str, ...], jobs: list[dict] = ()) -> str:
    """Why a Job or resource is not in an expected state: its statusMessage (or, for a resource, those of
    its Jobs) first, since pytest's one-line summary cuts the rest off, then the whole document."""
    what = doc.get("id") or doc.get("name") or doc.get("resourceURI", "?")
    reasons = [doc["statusMessage"]] if doc.get("statusMessage") else []
    reasons += [f"{job['action']} Job {job['state']}: {job.get('statusMessage', '(no statusMessage)')}"
                for job in jobs]
    return (f"{what} is {doc.get('state')!r}, not {' or '.join(map(repr, expected))}: "
            f"{'; '.join(reasons) or 'no statusMessage'}\n{json.dumps(doc, indent=1)}")


def assert_state(doc: dict, *expected: str) -> dict:
    """`assert_state(job, "SUCCESS")`: the failure says the statusMessage. Returns doc. For a resource,
    `await client.assert_state(url, "STARTED")` also shows its Jobs' statusMessages."""
    if doc.get("state") not in expected:
        raise AssertionError(state_message(doc, expected))
    return doc


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body
        ctype = headers.get("Content-Type", "")
        self.xml = assert_valid_xml(body) if ctype.startswith("application/xml") and body else None
        self.json = json.loads(body) if ctype.startswith("application/json") and body else None

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:300]!r}>"


class CimiClient:
    """The aiohttp test client, speaking CIMI: bodies as dicts (JSON) or bytes (XML); XML answers validated."""

    def __init__(self, client: TestClient, app):
        self.client, self.app = client, app
        self.base = str(client.make_url("/cimi/"))
        self.default_headers: dict[str, str] = {}  # e.g. an admin's Authorization, under per-call headers

    def url(self, path: str) -> str:
        return path[len(self.base):] if path.startswith(self.base) else path

    async def request(self, method: str, path: str, body=None, *, fmt: str = "json", headers=None,
                      params=None) -> Reply:
        headers = {**self.default_headers, **(headers or {})}
        headers.setdefault("Accept", "application/xml" if fmt == "xml" else "application/json")
        data = None
        if isinstance(body, dict):
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, (bytes, str)):
            data = body.encode() if isinstance(body, str) else body
            headers.setdefault("Content-Type", "application/xml")
        target = path if path.startswith("/") else "/cimi/" + self.url(path)
        async with self.client.request(method, target, data=data, headers=headers, params=params) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def get(self, path, **kw):
        return await self.request("GET", path, **kw)

    async def post(self, path, body=None, **kw):
        return await self.request("POST", path, body, **kw)

    async def put(self, path, body=None, **kw):
        return await self.request("PUT", path, body, **kw)

    async def delete(self, path, **kw):
        return await self.request("DELETE", path, **kw)

    async def wait_job(self, job_url: str, timeout: float = 10.0) -> dict:
        import asyncio
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            job = (await self.get(job_url)).json
            if job["state"] in ("SUCCESS", "FAILED", "STOPPED"):
                return job
            if loop.time() > deadline:
                raise AssertionError(f"job still {job['state']} after {timeout}s: "
                                     f"{job.get('statusMessage', 'no statusMessage')}\n{job}")
            await asyncio.sleep(0.02)

    async def jobs_of(self, resource_id: str) -> list[dict]:
        """The Jobs whose targetResource is this resource, oldest first."""
        jobs = (await self.get("jobs", params={"$orderby": "created"})).json.get("jobs", [])
        return [job for job in jobs if job.get("targetResource", {}).get("href") == resource_id]

    async def assert_state(self, target: str | dict, *expected: str) -> dict:
        """The resource at `target` (a URL, or a document just read) is in one of `expected` states;
        otherwise the failure shows its statusMessage and those of its Jobs. Returns the document."""
        doc = (await self.get(target)).json if isinstance(target, str) else target
        if doc.get("state") not in expected:
            jobs = [] if doc.get("resourceURI", "").endswith("/Job") else await self.jobs_of(doc.get("id", ""))
            raise AssertionError(state_message(doc, expected, jobs))
        return doc

    async def rows(self) -> list[tuple]:
        """Every row of the store, for proving that a refused request changed nothing."""
        import sqlite3
        db = sqlite3.connect(self.app[DATABASE])
        try:
            return db.execute("SELECT kind, id, parent, name, description, state, doc, version FROM resources"
                              " ORDER BY seq").fetchall()
        finally:
            db.close()


async def make_client(tmp_path: Path, overrides: dict | None = None, extra_plugins: tuple = (),
                      profile: str = "sandbox"):
    # The sampler writes in the background; a test that writes the database file itself, from the event
    # loop's own thread, would wait on it while blocking the loop it needs. Meter tests switch it on.
    overrides = {**(overrides or {}), "meters": {"sampling": False, **(overrides or {}).get("meters", {})}}
    config = load(profile=profile, state_dir=tmp_path / "state", overrides=overrides)
    config["server"]["log_requests"] = False
    app = build_app(config, extra_plugins)
    app[DATABASE] = str(config.database)
    client = TestClient(TestServer(app))
    await client.start_server()
    cimi = CimiClient(client, app)
    cimi.state_dir = config.state_dir
    return cimi


@pytest.fixture
async def app_client(tmp_path):
    client = await make_client(tmp_path)
    yield client
    await client.client.close()


@pytest.fixture
async def bare_app(tmp_path):
    """The protocol machinery with no driver: the catalogue only, Machines not served."""
    client = await make_client(tmp_path, {"compute": {"driver": "none"}})
    yield client
    await client.client.close()


# Consumers for the tests of tenancy (and of what is scoped by it): name -> (role, password).
CONSUMERS = {"root": ("admin", "r00t"), "alice": ("user", "a1ice"), "bob": ("user", "b0b"),
             "carol": ("reader", "car0l")}


def who(name: str) -> dict:
    """The Authorization header of one of CONSUMERS."""
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{CONSUMERS[name][1]}".encode()).decode()}


@pytest.fixture
async def consumers_client(tmp_path):
    """The sandbox with CONSUMERS in its store; requests go as root unless they say otherwise."""
    from cimid.http.auth import hash_password
    from cimid.http.keys import PROVIDER
    from cimid.store import consumers
    client = await make_client(tmp_path)
    for name, (role, password) in CONSUMERS.items():
        await consumers.add(client.app[PROVIDER].store, name, role, hash_password(password, 1000))
    client.default_headers = who("root")  # for the waits and reads a test does not make as someone
    yield client
    await client.client.close()


def assert_error(r: Reply, status: int) -> str:
    """`r` is CIMI's error document (a Job with an empty id, in JSON or XML) with this status, and no
    traceback; returns its statusMessage."""
    assert r.status == status, r
    assert "Traceback" not in r.body.decode(errors="replace")
    if r.json is None:  # XML error Job
        assert r.xml.findtext("c:id", namespaces=NS) == ""
        return r.xml.findtext("c:statusMessage", namespaces=NS)
    doc = r.json
    assert doc["resourceURI"] == "http://schemas.dmtf.org/cimi/1/Job" and doc["id"] == "" and doc["state"] == "FAILED"
    assert doc["returnCode"] == status and doc["statusMessage"]
    return doc["statusMessage"]


@pytest.fixture
async def store(tmp_path):
    """A real store in a fresh SQLite file, for the tests that drive the store itself."""
    s = Store(tmp_path / "db.sqlite3", "FULL")
    await s.open()
    yield s
    await s.close()
