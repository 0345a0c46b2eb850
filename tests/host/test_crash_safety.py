"""Crash safety on real QEMU: a host-profile cimid is killed with SIGKILL at several points of create,
delete, image import, capture and restore, and restarted on the same state directory. After every restart,
once the Jobs it resumed have run: every Job (nested ones too) is SUCCESS or FAILED with a statusMessage;
no cimid domain lacks a Machine, and a Machine without a domain is ERROR with a FAILED Job saying why;
every Machine's state is what libvirt says; no disk directory lacks a Machine and every disk stands on an
image that exists; no image file lacks a MachineImage, none is left CREATING.

One daemon, one state directory and one image serve every kill point (jobs.max_concurrent = 1, so a Job can
be caught QUEUED behind another); each point says which recovery path it exercises.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import libvirt
from conftest import assert_state

from .conftest import URI, domain_names, fresh_dir, remove_domains, serve_bytes
from .test_restart_host import free_port

CIMI = "http://schemas.dmtf.org/cimi/1"
UNFINISHED = ("QUEUED", "RUNNING", "STOPPING")
# libvirt's states as CIMI's (a shut-off domain with a managed save image is SUSPENDED)
HOST_STATES = {libvirt.VIR_DOMAIN_RUNNING: "STARTED", libvirt.VIR_DOMAIN_BLOCKED: "STARTED",
               libvirt.VIR_DOMAIN_PAUSED: "PAUSED", libvirt.VIR_DOMAIN_SHUTOFF: "STOPPED",
               libvirt.VIR_DOMAIN_PMSUSPENDED: "SUSPENDED", libvirt.VIR_DOMAIN_SHUTDOWN: "STOPPING",
               libvirt.VIR_DOMAIN_CRASHED: "ERROR", libvirt.VIR_DOMAIN_NOSTATE: "ERROR"}


class Daemon:
    """`cimid serve --profile host` as a subprocess that the test can kill and start again."""

    def __init__(self, root: Path, network: str = ""):
        """`network`: more lines of the [network] section (e.g. 'driver = "bridge"')."""
        self.root, self.state = root, root / "state"
        self.config = config = root / "cimid.toml"
        config.write_text('profile = "host"\n[server]\nlog_requests = false\n'
                          '[compute]\nuri = "qemu:///system"\nvirt_type = "qemu"\nstop_timeout = 30.0\n'
                          '[jobs]\nmax_concurrent = 1\n[network]\ncreate_default = false\n' + network)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}/cimi/"
        self.argv = [sys.executable, "-m", "cimid.cli", "serve", "--config", str(config), "--state-dir",
                     str(self.state), "--listen", f"127.0.0.1:{port}"]
        self.proc: subprocess.Popen | None = None
        self.session = aiohttp.ClientSession()

    async def start(self) -> None:
        with open(self.root / "log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=log)
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(self.base + "cloudEntryPoint") as r:
                    if r.status == 200:
                        return
            assert self.proc.poll() is None, (self.root / "log").read_text()[-5000:]
            await asyncio.sleep(0.05)
        raise AssertionError((self.root / "log").read_text()[-5000:])

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def restart(self) -> None:
        self.kill()
        await self.start()

    async def call(self, method: str, url: str, body=None) -> tuple[int, dict, dict]:
        url = url if "://" in url else self.base + url
        async with self.session.request(method, url, json=body, headers={"Accept": "application/json"}) as r:
            text = await r.text()
            return r.status, dict(r.headers), json.loads(text) if text else {}

    async def get(self, url: str) -> dict:
        status, _, body = await self.call("GET", url)
        assert status == 200, (url, status, body)
        return body

    async def post(self, url: str, body: dict) -> tuple[str, str]:
        """A request answered 202: (its Job's URL, Location)."""
        status, headers, reply = await self.call("POST", url, body)
        assert status == 202, (url, status, reply)
        return headers["CIMI-Job-URI"], headers.get("Location", "")

    async def wait_job(self, job_url: str, timeout: float = 120.0) -> dict:
        for _ in range(int(timeout / 0.1)):
            job = await self.get(job_url)
            if job["state"] not in UNFINISHED:
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(f"{job_url} still {job['state']} after {timeout}s: {job}")

    async def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        await self.session.close()


def host_domains(state: Path) -> dict[str, str]:
    """{machine id: CIMI state} of the cimid domains whose disks live in this state directory."""
    conn = libvirt.open(URI)
    try:
        found = {}
        for dom in conn.listAllDomains():
            if dom.name().startswith("cimid-") and str(state) + "/" in dom.XMLDesc():
                code = dom.state()[0]
                saved = code == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage()
                found[dom.name()[len("cimid-"):]] = "SUSPENDED" if saved else HOST_STATES[code]
        return found
    finally:
        conn.close()


def backing_file(disk: Path) -> str | None:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], check=True,
                                     capture_output=True, text=True).stdout)
    return info.get("full-backing-filename") or info.get("backing-filename")


def last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


async def check_consistent(d: Daemon) -> dict:
    """Wait until the Jobs the restart resumed have run, then compare cimid with the host (see the module's
    docstring); returns {"jobs", "machines", "images"} keyed by id."""
    for _ in range(1200):
        jobs = (await d.get("jobs"))["jobs"]
        if not any(j["state"] in UNFINISHED for j in jobs):
            break
        await asyncio.sleep(0.1)
    listing = await d.get("jobs")
    assert listing["count"] == len(listing["jobs"])
    jobs = {last(j["id"]): j for j in listing["jobs"]}
    for job in jobs.values():  # nested Jobs are in the collection too
        assert_state(job, "SUCCESS", "FAILED")
        assert job.get("statusMessage"), job
    machines = {last(m["id"]): m for m in (await d.get("machines")).get("machines", [])}
    images = {last(i["id"]): i for i in (await d.get("machineImages")).get("machineImages", [])}
    domains = await asyncio.to_thread(host_domains, d.state)
    assert set(domains) <= set(machines), f"domains without a Machine: {set(domains) - set(machines)}"
    for id, machine in machines.items():
        if id in domains:
            assert machine["state"] == domains[id], (machine, domains[id])
        else:  # only a machine that failed may have lost its domain, and a Job says why
            failed = [j for j in jobs.values() if j["state"] == "FAILED"
                      and any(last(a["href"]) == id for a in j.get("affectedResources", []))]
            assert machine["state"] == "ERROR" and failed, (machine, domains)
    disk_dir, image_dir = d.state / "disks", d.state / "images"
    left = {p.name for p in disk_dir.iterdir()} if disk_dir.exists() else set()
    assert left <= set(machines), f"disk directories without a Machine: {left - set(machines)}"
    for id in set(domains):
        backing = backing_file(disk_dir / id / "disk0.qcow2")
        assert backing and Path(backing).exists() and Path(backing).parent == image_dir, (id, backing)
        assert Path(backing).stem in images, f"{id}'s disk stands on {backing}, which no MachineImage owns"
    for path in image_dir.iterdir():
        assert re.fullmatch(r"[0-9a-f-]+\.(qcow2|raw)", path.name), f"a partial image file: {path}"
        assert path.stem in images, f"an image file without a MachineImage: {path}"
    for id, image in images.items():
        assert_state(image, "AVAILABLE")
        assert any(image_dir.glob(f"{id}.*")), f"MachineImage {id} has no file"
    return {"jobs": jobs, "machines": machines, "images": images}


async def poll(predicate, what: str, timeout: float = 60.0) -> None:
    """Wait until the async predicate() is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"never saw {what}"
        await asyncio.sleep(0.002)


async def kill_when(d: Daemon, predicate, what: str, timeout: float = 60.0) -> None:
    """SIGKILL cimid the moment predicate() (a quick look at the host) is true: a thread spins on it, so the
    kill lands inside driver calls of a few milliseconds."""
    def watch() -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
        os.kill(d.proc.pid, signal.SIGKILL)
        return True
    assert await asyncio.to_thread(watch), f"never saw {what}"
    d.proc.wait()


def has_domain(state: Path, machine: str):
    """A predicate: libvirt defines cimid-<machine> (one connection, reused)."""
    libvirt.registerErrorHandler(lambda *_: None, None)  # "domain not found" is the answer, not an error
    conn = libvirt.open(URI)

    def defined() -> bool:
        try:
            conn.lookupByName(f"cimid-{last(machine)}")
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            return False
    return defined


def big_image(guest: Path, root: Path) -> Path:
    """The test guest with 256 MiB of data past its partitions, so that flattening it for a capture takes
    long enough to be killed in the middle."""
    path = root / "big.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(guest), str(path)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", str(path), "512M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -q -P 0x5a 128M 256M", str(path)], check=True)
    path.chmod(0o644)
    return path


async def test_sigkill_at_every_point_of_create_delete_import_capture_restore(libvirt_host, guest_image):
    root = fresh_dir("crash")
    d = Daemon(root)
    slow = contextlib.AsyncExitStack()
    try:
        image_file = await asyncio.to_thread(big_image, guest_image, root)
        await d.start()
        job, image = await d.post("machineImages", {"name": "big", "imageLocation": image_file.as_uri()})
        assert_state(await d.wait_job(job), "SUCCESS")

        status, headers, body = await d.call("POST", "machineConfigs", {"name": "tiny", "cpu": 1,
                                                                        "memory": 256 * 1024})
        assert status == 201, body
        config = headers["Location"]

        async def create(name: str) -> tuple[str, str]:
            return await d.post("machines", {"name": name, "machineTemplate": {
                "machineImage": {"href": image}, "machineConfig": {"href": config}}})

        job, a = await create("a")
        assert_state(await d.wait_job(job), "SUCCESS")

        # 1. An import killed while it downloads (interrupted import: FAILED, row and partial file removed),
        #    with a create QUEUED behind it that never began (resumed after the restart, and succeeds).
        url = await slow.enter_async_context(serve_bytes(guest_image.read_bytes(), "slow.qcow2",
                                                         chunk=1 << 18, pause=0.2))
        import_job, slow_image = await d.post("machineImages", {"imageLocation": url})

        async def downloading():
            got = await d.get(import_job)
            return got["state"] == "RUNNING" and got["progress"] > 0
        await poll(downloading, "the download under way")
        create_job, b = await create("b")
        assert_state(await d.get(create_job), "QUEUED")
        await d.restart()
        seen = await check_consistent(d)
        assert_state(seen["jobs"][last(import_job)], "FAILED")
        assert "interrupted" in seen["jobs"][last(import_job)]["statusMessage"]
        assert last(slow_image) not in seen["images"]
        assert_state(seen["jobs"][last(create_job)], "SUCCESS")
        assert seen["machines"][last(b)]["state"] == "STARTED"
        await slow.aclose()

        # 2. A create killed in its driver call, once its disk directory exists and before its domain is
        #    defined (interrupted, nothing on the host: the Machine is ERROR, its Jobs say why; deleting it
        #    removes its disks).
        create_job, c = await create("c")
        c_dir = d.state / "disks" / last(c)

        await kill_when(d, c_dir.exists, "c's disk directory")
        await d.start()
        seen = await check_consistent(d)
        assert_state(seen["jobs"][last(create_job)], "FAILED")
        if last(c) not in await asyncio.to_thread(host_domains, d.state):
            assert seen["machines"][last(c)]["state"] == "ERROR"
        status, headers, _ = await d.call("DELETE", c)
        assert status == 202
        assert_state(await d.wait_job(headers["CIMI-Job-URI"]), "SUCCESS")
        assert not c_dir.exists()

        # 3. A create killed once its domain is defined, while it starts (interrupted with a domain: the
        #    Machine takes what libvirt says, STOPPED or STARTED).
        create_job, e = await create("e")

        e_defined = has_domain(d.state, e)
        await kill_when(d, e_defined, "e's domain")
        await d.start()
        seen = await check_consistent(d)
        assert seen["machines"][last(e)]["state"] in ("STOPPED", "STARTED")

        # 4. A delete killed while libvirt destroys the running guest (interrupted, the domain is still
        #    defined: the Machine stays, in the state libvirt reports).
        status, headers, _ = await d.call("DELETE", b)
        assert status == 202
        delete_job = headers["CIMI-Job-URI"]

        async def deleting():
            return (await d.get(delete_job))["state"] == "RUNNING"
        await poll(deleting, "b's delete running")
        await d.restart()
        seen = await check_consistent(d)
        assert_state(seen["jobs"][last(delete_job)], "FAILED")
        assert last(b) in seen["machines"]

        # 5. A delete killed once libvirt has forgotten the domain (interrupted, nothing left on the host:
        #    the Machine row and its disks go).
        status, headers, _ = await d.call("DELETE", e)
        assert status == 202

        await kill_when(d, lambda: not e_defined(), "e's domain undefined")
        await d.start()
        seen = await check_consistent(d)
        assert last(e) not in seen["machines"]
        assert not (d.state / "disks" / last(e)).exists()

        # 6. A capture killed while qemu-img flattens the disk of the running machine (interrupted: the
        #    MachineImage and its partial file go, the machine is in libvirt's state).
        capture_job, lost = await d.post(f"{a}/capture", {"resourceURI": f"{CIMI}/MachineImage", "name": "x"})
        part = d.state / "images" / f"{last(lost)}.capture.part"

        await kill_when(d, part.exists, "the capture's partial file")
        await d.start()
        seen = await check_consistent(d)
        assert_state(seen["jobs"][last(capture_job)], "FAILED")
        assert last(lost) not in seen["images"]

        # 7. Killed just after a capture finished (nothing to recover: the image and the machine are kept).
        if seen["machines"][last(a)]["state"] != "STARTED":
            job, _ = await d.post(f"{a}/start", {"resourceURI": f"{CIMI}/Action", "action": f"{CIMI}/action/start"})
            assert_state(await d.wait_job(job), "SUCCESS")
        capture_job, golden = await d.post(f"{a}/capture", {"resourceURI": f"{CIMI}/MachineImage",
                                                            "name": "golden"})
        assert_state(await d.wait_job(capture_job), "SUCCESS")
        await d.restart()
        seen = await check_consistent(d)
        assert seen["images"][last(golden)]["state"] == "AVAILABLE"
        assert seen["machines"][last(a)]["state"] == "STARTED"

        # 8. A restore killed once the boot disk has been replaced by an overlay on the new image, while the
        #    guest starts again (interrupted: the machine is in libvirt's state, and the image its disk now
        #    stands on is known to be in use).
        disk = d.state / "disks" / last(a) / "disk0.qcow2"
        before = disk.stat().st_ino
        restore_job, _ = await d.post(f"{a}/restore", {"resourceURI": f"{CIMI}/Action",
                                                       "action": f"{CIMI}/action/restore",
                                                       "image": {"href": golden}})

        def replaced() -> bool:
            with contextlib.suppress(FileNotFoundError):
                return disk.stat().st_ino != before
            return False
        await kill_when(d, replaced, "a's new boot disk")
        await d.start()
        seen = await check_consistent(d)
        assert_state(seen["jobs"][last(restore_job)], "FAILED", "SUCCESS")
        assert Path(backing_file(disk)).stem == last(golden)
        status, _, body = await d.call("DELETE", golden)
        assert status == 409, (status, body)  # a's disk stands on it
        await check_consistent(d)
    finally:
        await d.close()
        await slow.aclose()
        left = await asyncio.to_thread(domain_names, "cimid-", str(root) + "/")
        await asyncio.to_thread(remove_domains, left)
        shutil.rmtree(root, ignore_errors=True)
