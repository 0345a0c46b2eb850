"""cimid's pytest plugin (entry point `pytest11`): a throwaway CIMI provider for any test suite.

    def test_my_client(cimi_provider):
        client = MyCimiClient(cimi_provider.url)        # the CloudEntryPoint URL
        cimi_provider.add_fault("Machine", ["start"], message="no capacity")
        ...

`cimi_provider` is one `cimid serve --ephemeral --test-api --listen 127.0.0.1:0` subprocess per test
session, reset before each test (ini option `cimid_reset = false` turns that off). The marker
`@pytest.mark.cimi_fault(resource_type, kinds, effect="fail", message=..., seconds=..., count=1,
filter=...)` adds a fault rule for one test. A subprocess, not an in-process server: it works whatever
event loop (or none) the suite uses, and the suite needs nothing from cimid beyond the fixture's name.
Only the standard library talks to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest


class CimiProvider:
    """A running ephemeral sandbox: `url` (the CloudEntryPoint), `base` (its baseURI), and helpers for the
    test-control extension."""

    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url
        self.base = url.rsplit("cloudEntryPoint", 1)[0]

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict | None]:
        """(status, headers, JSON body or None) of a request to `path` (relative to base, or absolute)."""
        url = path if "://" in path else self.base + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {})}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                status, head, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, head, raw = error.code, dict(error.headers), error.read()
        return status, head, json.loads(raw) if raw.strip() else None

    def _ok(self, method: str, path: str, body: dict | None = None) -> dict | None:
        status, _, doc = self.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"cimid test-control {method} {path} answered {status}: "
                               f"{(doc or {}).get('statusMessage', doc)}")
        return doc

    def reset(self, id_seed: str | None = None, clock: str | None = None) -> dict:
        """Back to the seeded catalogue, no fault rule; ids from `id_seed`'s sequence and the clock fixed at
        `clock` (e.g. "2030-01-01T00:00:00Z") when given."""
        body = {k: v for k, v in (("idSeed", id_seed), ("clock", clock)) if v is not None}
        return self._ok("POST", "testControl/reset", body)

    def add_fault(self, resource_type: str, kinds: list[str] | str, effect: str = "fail", *,
                  message: str | None = None, seconds: float | None = None, count: int = 1,
                  filter: str | None = None) -> dict:
        """A fault rule: the next `count` operations of `kinds` on `resource_type` fail ("fail"), take
        `seconds` longer ("slow") or fail and leave the resource in ERROR ("error"). Returns the rule."""
        rule = {"resourceType": resource_type, "operationKinds": [kinds] if isinstance(kinds, str) else list(kinds),
                "effect": effect, "count": count}
        for key, value in (("message", message), ("seconds", seconds), ("filter", filter)):
            if value is not None:
                rule[key] = value
        return self._ok("POST", "testControl/faultRules", rule)

    def faults(self) -> list[dict]:
        return self._ok("GET", "testControl/faultRules").get("faultRules", [])

    def remove_fault(self, rule: dict | str) -> None:
        self._ok("DELETE", rule["id"] if isinstance(rule, dict) else rule)

    def advance_clock(self, seconds: float) -> dict:
        return self._ok("POST", "testControl/clock", {"advance": seconds})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_provider(log_path: Path | None = None) -> CimiProvider:
    """Start an ephemeral sandbox with the test API and return once its CloudEntryPoint answers."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cimid.cli", "serve", "--ephemeral", "--test-api",
                                "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log,
                               stdin=subprocess.DEVNULL, env=env, text=True)
    if log_path:
        log.close()
    line = process.stdout.readline()  # the one line it prints once it answers (EOF if it died)
    process.stdout.close()
    try:
        url = json.loads(line)["cloudEntryPoint"]
    except (ValueError, KeyError, TypeError):
        process.kill()
        process.wait()
        where = f"; its log is {log_path}" if log_path else ""
        raise RuntimeError(f"cimid serve --ephemeral did not start (exit {process.returncode}){where}") from None
    return CimiProvider(process, url)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("cimid_reset", "reset the cimi_provider sandbox before each test (default true)",
                  type="bool", default=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cimi_fault(resource_type, kinds, effect='fail', message=None, seconds=None, count=1, "
                   "filter=None): a fault rule on the cimi_provider sandbox for this test")


@pytest.fixture(scope="session")
def cimi_provider_session(tmp_path_factory: pytest.TempPathFactory):
    """The session's one sandbox process (use cimi_provider in tests)."""
    provider = start_provider(tmp_path_factory.mktemp("cimid") / "cimid.log")
    yield provider
    provider.stop()


@pytest.fixture
def cimi_provider(cimi_provider_session: CimiProvider, request: pytest.FixtureRequest) -> CimiProvider:
    """A running ephemeral CIMI sandbox, reset for this test, with this test's cimi_fault rules."""
    if request.config.getini("cimid_reset"):
        cimi_provider_session.reset()
    for marker in request.node.iter_markers("cimi_fault"):
        cimi_provider_session.add_fault(*marker.args, **marker.kwargs)
    return cimi_provider_session
