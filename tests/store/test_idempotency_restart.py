"""Idempotency keys live in the store: a real `cimid serve` killed with SIGKILL still replays the first
answer to a retry after it restarts, and makes no second machine."""

import sqlite3

import aiohttp
from test_restart import Daemon, machine_request


async def post(daemon: Daemon, path: str, body: dict, key: str):
    async with aiohttp.ClientSession() as s:
        async with s.post(daemon.base + path, json=body, headers={"Accept": "application/json",
                                                                  "Idempotency-Key": key}) as r:
            return r.status, dict(r.headers), await r.read()


async def test_a_retry_after_a_kill_and_restart_gets_the_first_answer(tmp_path):
    daemon = Daemon(tmp_path)
    await daemon.start()
    try:
        body = machine_request(daemon.base)
        status, headers, first = await post(daemon, "machines", body, "retry-me")
        assert status == 202
        await daemon.wait_state(headers["CIMI-Job-URI"], ("SUCCESS",))
        daemon.kill()
        await daemon.start()  # same port, so the same base URL and the same body
        again_status, again, replayed = await post(daemon, "machines", body, "retry-me")
        assert again_status == 202 and again.get("Idempotent-Replayed") == "true"
        assert (again["Location"], again["CIMI-Job-URI"], replayed) == (headers["Location"],
                                                                        headers["CIMI-Job-URI"], first)
        _, _, listing = await daemon.call("GET", "machines")
        assert listing["count"] == 1
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill()
    db = sqlite3.connect(tmp_path / "state" / "cimid.sqlite3")
    assert db.execute("SELECT count(*) FROM resources WHERE kind = 'Machine'").fetchone()[0] == 1
