"""A host-profile daemon killed with SIGKILL in the middle of an image import: after the restart the Job
has FAILED with the reason, and neither the image nor a partial download is left."""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys

import aiohttp
from conftest import assert_state

from ports import free_port

from .conftest import fresh_dir, serve_bytes



async def test_import_interrupted_by_sigkill(guest_image):
    root = fresh_dir("restart")
    config = root / "cimid.toml"
    config.write_text('profile = "host"\n[server]\nlog_requests = false\n'
                      '[compute]\nuri = "qemu:///system"\nvirt_type = "qemu"\n[network]\ncreate_default = false\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}/cimi/"
    argv = [sys.executable, "-m", "cimid.cli", "serve", "--config", str(config), "--state-dir",
            str(root / "state"), "--listen", f"127.0.0.1:{port}"]
    # a download long enough to be killed in the middle
    slow = contextlib.AsyncExitStack()
    image_url = await slow.enter_async_context(serve_bytes(guest_image.read_bytes(), "slow.qcow2",
                                                           chunk=1 << 18, pause=0.2))
    procs = []

    async def start():
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(root / "log", "ab")))
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                try:
                    async with s.get(base + "cloudEntryPoint") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError((root / "log").read_text())

    async def call(method, url, body=None):
        async with aiohttp.ClientSession() as s, s.request(method, url, json=body,
                                                           headers={"Accept": "application/json"}) as r:
            return r.status, dict(r.headers), await r.json()

    try:
        await start()
        status, headers, _ = await call("POST", base + "machineImages",
                                        {"imageLocation": image_url})
        assert status == 202
        job_url, image = headers["CIMI-Job-URI"], headers["Location"]
        for _ in range(200):
            job = (await call("GET", job_url))[2]
            if job["state"] == "RUNNING" and job["progress"] > 0:
                break
            await asyncio.sleep(0.05)
        assert_state(job, "RUNNING")
        os.kill(procs[-1].pid, signal.SIGKILL)
        procs[-1].wait()
        assert any((root / "state" / "images").iterdir())  # a partial download is there
        await start()
        job = (await call("GET", job_url))[2]
        assert_state(job, "FAILED")
        assert "interrupted" in job["statusMessage"], job
        assert (await call("GET", image))[0] == 404
        assert list((root / "state" / "images").iterdir()) == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        await slow.aclose()
        shutil.rmtree(root, ignore_errors=True)


async def test_stopping_a_queued_import_leaves_nothing(guest_image):
    """With one Job at a time, a second import waits QUEUED; stopping it removes its image at once."""
    from conftest import make_client
    root = fresh_dir("queue")
    client = await make_client(root, {"compute": {"uri": "qemu:///system", "virt_type": "qemu"},
                                      "jobs": {"max_concurrent": 1}, "network": {"create_default": False}},
                             profile="host")
    try:
        async with serve_bytes(guest_image.read_bytes(), "slow.qcow2", chunk=1 << 18, pause=0.1) as url:
            first = await client.post("machineImages", {"imageLocation": url})
            second = await client.post("machineImages", {"imageLocation": guest_image.as_uri()})
            job = second.headers["CIMI-Job-URI"]
            await client.assert_state(job, "QUEUED")
            stop = await client.post(f"{job}/stop", {"action": "http://schemas.dmtf.org/cimi/1/action/stop"})
            assert stop.status == 202
            await client.assert_state(job, "STOPPED")
            assert (await client.get(second.headers["Location"])).status == 404
            assert_state(await client.wait_job(first.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")
        stored = list((client.state_dir / "images").iterdir())
        assert [p.name for p in stored] == [first.headers["Location"].rsplit("/", 1)[1] + ".qcow2"]
    finally:
        await client.client.close()
        shutil.rmtree(root, ignore_errors=True)
