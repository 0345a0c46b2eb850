"""A real `cimid serve` process killed with SIGKILL: Jobs are reconciled and nothing acknowledged is lost."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
from conftest import assert_state
from ports import free_port

CIMI = "http://schemas.dmtf.org/cimi/1"



class Daemon:
    def __init__(self, tmp_path: Path, **compute):
        self.tmp_path, self.port = tmp_path, free_port()
        self.base = f"http://127.0.0.1:{self.port}/cimi/"
        self.proc = None
        self.write_config(**compute)

    def write_config(self, delay=0.0, max_concurrent=4):
        (self.tmp_path / "cimid.toml").write_text(
            f'[compute]\noperation_delay = {delay}\n[jobs]\nmax_concurrent = {max_concurrent}\n')

    async def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cimid.cli", "serve", "--config", str(self.tmp_path / "cimid.toml"),
             "--state-dir", str(self.tmp_path / "state"), "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp_path / "cimid.log", "ab"))
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(self.base + "cloudEntryPoint") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("cimid did not start: " + (self.tmp_path / "cimid.log").read_text())

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def call(self, method, url, body=None):
        url = url if url.startswith("http") else self.base + url
        async with aiohttp.ClientSession() as s:
            async with s.request(method, url, json=body, headers={"Accept": "application/json"}) as r:
                return r.status, dict(r.headers), await r.json()

    async def wait_state(self, url, states, timeout=15.0):
        for _ in range(int(timeout / 0.05)):
            _, _, doc = await self.call("GET", url)
            if doc["state"] in states:
                return doc
            await asyncio.sleep(0.05)
        return assert_state(doc, *states)  # fails, saying why


def machine_request(base, initial="STOPPED"):
    return {"name": "m", "machineTemplate": {"href": base + "machineTemplates/small-tiny-linux",
                                             "initialState": initial}}


async def test_running_job_fails_and_queued_job_resumes_after_kill(tmp_path):
    daemon = Daemon(tmp_path)
    await daemon.start()
    try:
        machines = []
        for _ in range(2):
            status, headers, _ = await daemon.call("POST", "machines", machine_request(daemon.base))
            assert status == 202
            await daemon.wait_state(headers["CIMI-Job-URI"], ("SUCCESS",))
            machines.append(headers["Location"])
        daemon.kill()
        daemon.write_config(delay=3.0, max_concurrent=1)
        await daemon.start()
        _, running, _ = await daemon.call("POST", machines[0] + "/start", {"action": f"{CIMI}/action/start"})
        _, queued, _ = await daemon.call("POST", machines[1] + "/start", {"action": f"{CIMI}/action/start"})
        await daemon.wait_state(running["CIMI-Job-URI"], ("RUNNING",))
        assert_state((await daemon.call("GET", queued["CIMI-Job-URI"]))[2], "QUEUED")
        daemon.kill()  # SIGKILL while one Job runs and another waits
        daemon.write_config(delay=0.0)
        await daemon.start()
        failed = await daemon.wait_state(running["CIMI-Job-URI"], ("SUCCESS", "FAILED"))
        assert_state(failed, "FAILED")
        assert "interrupted" in failed["statusMessage"]
        # the sandbox host was rebuilt from the store; the start never happened there
        assert_state((await daemon.call("GET", machines[0]))[2], "STOPPED")
        resumed = await daemon.wait_state(queued["CIMI-Job-URI"], ("SUCCESS", "FAILED"))
        assert_state(resumed, "SUCCESS")
        assert_state((await daemon.call("GET", machines[1]))[2], "STARTED")
        # nothing stays transitional
        _, _, listing = await daemon.call("GET", "machines")
        for m in listing["machines"]:
            assert_state(m, "STARTED", "STOPPED")
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill()


async def test_acknowledged_writes_survive_kill_at_any_moment(tmp_path):
    daemon = Daemon(tmp_path)
    acknowledged = []
    for round_ in range(3):
        await daemon.start()

        async def writer(round_=round_):
            n = 0
            while True:
                status, headers, _ = await daemon.call("POST", "machineConfigs",
                                                       {"name": f"c-{round_}-{n}", "cpu": 1, "memory": 1024})
                assert status == 201
                acknowledged.append(headers["Location"].rsplit("/", 1)[1])
                n += 1

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.3 + 0.2 * round_)
        daemon.kill()
        try:
            await task
        except (aiohttp.ClientError, AssertionError, asyncio.CancelledError):
            pass
    db = sqlite3.connect(tmp_path / "state" / "cimid.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in db.execute("SELECT id FROM resources WHERE kind = 'MachineConfiguration'")}
    assert len(acknowledged) > 10
    assert set(acknowledged) <= stored
