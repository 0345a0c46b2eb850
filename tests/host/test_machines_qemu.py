"""Real machines on qemu:///system (TCG): images imported over file:// and http://127.0.0.1, copy-on-write
disks, the cloud-init seed seen by the guest, the whole lifecycle, capture/snapshot/restore, cleanup."""

import asyncio
import base64
import hashlib
import json
import subprocess
from pathlib import Path

import libvirt
import pytest
from conftest import assert_state

from cimid.http.keys import PROVIDER
from cimid.service.events import StateChanged

from .conftest import serve_bytes

CIMI = "http://schemas.dmtf.org/cimi/1"
ACTION = f"{CIMI}/action/"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostTierKey alice@cimid-test"


async def import_image(client, url, **attrs):
    r = await client.post("machineImages", {"name": "guest", "imageLocation": url, **attrs})
    assert r.status == 202, r
    return r, await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60)


async def wait_state(client, url, state, timeout=60.0):
    for _ in range(int(timeout / 0.1)):
        got = (await client.get(url)).json
        if got["state"] == state:
            return got
        await asyncio.sleep(0.1)
    return await client.assert_state(got, state)  # fails, saying why


async def act(client, machine, name, **extra):
    r = await client.post(f"{machine}/{name}", {"resourceURI": f"{CIMI}/Action", "action": ACTION + name,
                                                 **extra})
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90)
    assert_state(job, "SUCCESS")
    return job


async def console_until(client, machine, needle, timeout=60.0, times=1):
    """Wait until `needle` has appeared `times` times on the serial console (the log spans every boot)."""
    for _ in range(int(timeout / 0.2)):
        r = await client.get(f"{machine}/console")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.body.decode(errors="replace")
        if text.count(needle) >= times:
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared on the console:\n{text[-3000:]}")


def domain_names() -> set[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return {d.name() for d in conn.listAllDomains()}
    finally:
        conn.close()


@pytest.fixture
async def http_image(guest_image):
    """The guest image served by a web server of the test's own on 127.0.0.1: (base URL, sha256)."""
    data = guest_image.read_bytes()
    async with serve_bytes(data, "guest.qcow2") as url:
        yield url.rsplit("/", 1)[0], hashlib.sha256(data).hexdigest()


async def test_image_import_from_file_and_http(host_client, guest_image, http_image):
    r, job = await import_image(host_client, guest_image.as_uri())
    assert_state(job, "SUCCESS")
    assert job["progress"] == 100
    image = (await host_client.get(r.headers["Location"])).json
    await host_client.assert_state(image, "AVAILABLE")
    assert image["type"] == "IMAGE"
    base, digest = http_image
    r, job = await import_image(host_client, f"{base}/guest.qcow2", properties={"checksum": f"sha256:{digest}"})
    assert_state(job, "SUCCESS")
    stored = Path(host_client.state_dir) / "images" / (r.headers["Location"].rsplit("/", 1)[1] + ".qcow2")
    assert stored.exists() and stored.stat().st_mode & 0o004  # QEMU's user can read it
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(stored)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info


@pytest.mark.parametrize("case", ["404", "not-a-disk", "backing-file", "checksum"])
async def test_bad_images_fail_their_job_and_leave_nothing(host_client, guest_image, http_image, tmp_path, case):
    base, digest = http_image
    if case == "404":
        url, attrs, needle = f"{base}/missing.qcow2", {}, "404"
    elif case == "not-a-disk":
        page = tmp_path / "index.html"
        page.write_text("<html><body>" + "not a disk " * 10000 + "</body></html>")
        url, attrs, needle = page.as_uri(), {}, "not a disk image"
    elif case == "backing-file":
        sneaky = tmp_path / "sneaky.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(sneaky)],
                       check=True)
        url, attrs, needle = sneaky.as_uri(), {}, "backing file"
    else:
        url, attrs, needle = f"{base}/guest.qcow2", {"properties": {"checksum": "sha256:" + "0" * 64}}, "checksum"
    r, job = await import_image(host_client, url, **attrs)
    assert_state(job, "FAILED")
    assert needle in job["statusMessage"], job
    assert (await host_client.get(r.headers["Location"])).status == 404
    images = Path(host_client.state_dir) / "images"
    assert not images.exists() or list(images.iterdir()) == []


async def test_machine_boots_with_credential_and_user_data(host_client, guest_image):
    client = host_client
    r, _ = await import_image(client, guest_image.as_uri())
    image = r.headers["Location"]
    cred_tpl = await client.post("credentialTemplates", {"name": "alice", "userName": "alice", "key": KEY})
    cred = await client.post("credentials", {"credentialTemplate": {"href": cred_tpl.headers["Location"]}})
    assert cred.status == 201, cred
    user_data = b"#!/bin/sh\necho \"hello from $(hostname)\"\n"
    tpl = await client.post("machineTemplates", {
        "name": "t", "initialState": "STARTED", "machineImage": {"href": image},
        "machineConfig": {"href": client.base + "machineConfigs/tiny"},
        "credential": {"userName": "root"}, "userData": base64.b64encode(b"#!/bin/sh\necho old\n").decode()})
    assert tpl.status == 201, tpl
    r = await client.post("machines", {"name": "web-1", "machineTemplate": {
        "href": tpl.headers["Location"], "credential": {"href": cred.headers["Location"]},
        "userData": base64.b64encode(user_data).decode()}})
    assert r.status == 202, r
    machine = r.headers["Location"]
    job = await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90)
    assert_state(job, "SUCCESS")
    await client.assert_state(machine, "STARTED")
    text = await console_until(client, machine, "HVTEST: ready")
    machine_id = machine.rsplit("/", 1)[1]
    assert f"instance-id: {machine_id}" in text and "local-hostname: web-1" in text
    assert KEY in text and '"name": "alice"' in text  # the Credential, merged into the user-data
    assert 'echo "hello from $(hostname)"' in text  # the consumer's userData, delivered
    assert "BEGIN cimi/user-data" in text  # CIMI's "disk" method: cimi/user-data on the seed
    disks = (await client.get(machine + "/disks")).json
    assert disks["count"] == 1
    overlay = Path(client.state_dir) / "disks" / machine_id / "disk0.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(overlay)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["backing-filename"].endswith(image.rsplit("/", 1)[1] + ".qcow2")  # copy-on-write
    r = await client.delete(machine)
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")
    assert not overlay.parent.exists()


async def test_lifecycle_self_poweroff_capture_snapshot_restore_delete(host_client, guest_image):
    client = host_client
    r, _ = await import_image(client, guest_image.as_uri())
    image = r.headers["Location"]
    # userData as a plain script (no Credential), so the guest runs it: it powers itself off when asked
    script = b"#!/bin/sh\nif [ ! -e /tmp/stay ]; then echo script-ran; fi\n"
    r = await client.post("machines", {"name": "life", "machineTemplate": {
        "machineImage": {"href": image}, "machineConfig": {"href": client.base + "machineConfigs/tiny"},
        "userData": base64.b64encode(script).decode()}})
    machine = r.headers["Location"]
    machine_id = machine.rsplit("/", 1)[1]
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90), "SUCCESS")
    await console_until(client, machine, "HVTEST: user-data: script-ran")
    await act(client, machine, "pause")
    await client.assert_state(machine, "PAUSED")
    await act(client, machine, "start")
    await act(client, machine, "suspend")
    await client.assert_state(machine, "SUSPENDED")
    await act(client, machine, "start")
    await client.assert_state(machine, "STARTED")
    await act(client, machine, "stop")  # graceful: ACPI, the guest's acpid powers it off
    await client.assert_state(machine, "STOPPED")
    boots = (await client.get(f"{machine}/console")).body.decode(errors="replace").count("HVTEST: ready")
    await act(client, machine, "restart")
    await console_until(client, machine, "HVTEST: ready", times=boots + 1)  # acpid runs again
    # the guest powers itself off (as after `poweroff` inside it): cimid sees it, nobody asked
    events = []
    client.app[PROVIDER].store.subscribe(events.append)
    conn = libvirt.open("qemu:///system")
    try:
        conn.lookupByName(f"cimid-{machine_id}").shutdown()  # the ACPI button, pressed outside cimid
    finally:
        conn.close()
    await wait_state(client, machine, "STOPPED")
    assert any(isinstance(e, StateChanged) and e.current == "STOPPED" and "shut itself down" in e.reason
               for e in events), events
    await act(client, machine, "start")
    # capture: a flattened IMAGE
    r = await client.post(f"{machine}/capture", {"resourceURI": f"{CIMI}/MachineImage", "name": "golden"})
    assert r.status == 202
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90), "SUCCESS")
    golden = (await client.get(r.headers["Location"])).json
    path = Path(golden["imageLocation"][len("file://"):])
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)
    await client.assert_state(golden, "AVAILABLE")
    assert "backing-filename" not in info
    await client.assert_state(machine, "STARTED")
    # snapshot, then restore it
    r = await client.post("machineImages", {"name": "snap", "type": "SNAPSHOT", "imageLocation": machine})
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90), "SUCCESS")
    snap = r.headers["Location"]
    assert (await client.get(machine)).json["latestSnapshot"]["href"] == snap
    boots = (await client.get(f"{machine}/console")).body.decode(errors="replace").count("HVTEST: ready")
    job = await act(client, machine, "restore", image={"href": snap})
    await client.assert_state(machine, "STARTED")
    assert_state(job, "SUCCESS")
    await console_until(client, machine, "HVTEST: ready", times=boots + 1)  # it booted from the snapshot
    # a machine made from the captured image boots too
    r = await client.post("machines", {"name": "clone", "machineTemplate": {
        "machineImage": {"href": golden["id"]}, "machineConfig": {"href": client.base + "machineConfigs/tiny"},
        "initialState": "STOPPED"}})
    clone = r.headers["Location"]
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90), "SUCCESS")
    # action not allowed in the current state: 409, nothing changes
    before = await client.rows()
    assert (await client.post(f"{clone}/pause", {"action": ACTION + "pause"})).status == 409
    assert await client.rows() == before
    # delete leaves no file, domain or row behind
    for url in (machine, clone):
        r = await client.delete(url)
        assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")
        mid = url.rsplit("/", 1)[1]
        assert (await client.get(url)).status == 404
        assert not (Path(client.state_dir) / "disks" / mid).exists()
        assert f"cimid-{mid}" not in domain_names()
    rows = [r for r in await client.rows() if r[0] in ("Machine", "Disk", "MachineSnapshot")]
    assert rows == []


async def test_unknown_configuration_and_by_value_image_are_400(host_client, guest_image):
    r, _ = await import_image(host_client, guest_image.as_uri())
    before = await host_client.rows()
    bad = await host_client.post("machines", {"machineTemplate": {
        "machineImage": {"href": r.headers["Location"]},
        "machineConfig": {"href": host_client.base + "machineConfigs/none"}}})
    assert bad.status == 400 and "machineConfig" in bad.json["statusMessage"]
    by_value = await host_client.post("machines", {"machineTemplate": {
        "machineImage": {"imageLocation": guest_image.as_uri()},
        "machineConfig": {"href": host_client.base + "machineConfigs/tiny"}}})
    assert by_value.status == 400 and "by reference" in by_value.json["statusMessage"]
    assert await host_client.rows() == before


async def test_crash_becomes_error_with_a_reason(host_client, guest_image):
    """QEMU dies under a running guest: the Machine becomes ERROR, a Job says why, and it can be cleaned."""
    import os
    import signal
    client = host_client
    r, _ = await import_image(client, guest_image.as_uri())
    r = await client.post("machines", {"name": "doomed", "machineTemplate": {
        "machineImage": {"href": r.headers["Location"]},
        "machineConfig": {"href": client.base + "machineConfigs/tiny"}}})
    machine = r.headers["Location"]
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90), "SUCCESS")
    events = []
    client.app[PROVIDER].store.subscribe(events.append)
    pid = int(Path(f"/run/libvirt/qemu/cimid-{machine.rsplit('/', 1)[1]}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    got = await wait_state(client, machine, "ERROR", timeout=30)
    assert {o["rel"] for o in got["operations"]} >= {"delete"}
    errors = [e for e in events if isinstance(e, StateChanged) and e.current == "ERROR"]
    assert len(errors) == 1 and errors[0].previous == "STARTED" and errors[0].severity == "critical", events
    # recorded in the machine's EventLog: the state change with its previous state, and an alarm
    log = got["eventLog"]["href"] + "/events"
    (state,) = (await client.get(log, params={"$filter": "severity='critical' and name='state'"})).json["events"]
    assert (state["content"]["previous"], state["content"]["state"]) == ("STARTED", "ERROR")
    (alarm,) = (await client.get(log, params={"$filter": "name='alarm'"})).json["events"]
    assert alarm["severity"] == "critical" and alarm["outcome"] == "Failure"
    r = await client.delete(machine)
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")


async def test_force_stop_and_what_the_host_profile_advertises(host_client, guest_image):
    client = host_client
    rm = (await client.get("resourceMetadata/Machine")).json
    caps = {c["name"]: c["value"] for c in rm["capabilities"]}
    assert caps["UserData"] == "disk" and caps["MachineImageByValue"] is False and caps["MachineStopForce"]
    r, _ = await import_image(client, guest_image.as_uri())
    two_disks = {"cpu": 1, "memory": 262144, "disks": [{"capacity": 1048576, "format": "ext4"},
                                                       {"capacity": 4 * 1048576, "format": "raw"}]}
    r = await client.post("machines", {"machineTemplate": {
        "machineImage": {"href": r.headers["Location"]}, "machineConfig": two_disks}})
    machine = r.headers["Location"]
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90), "SUCCESS")
    text = await console_until(client, machine, "HVTEST: disks:")
    assert "vdb" in text.split("HVTEST: disks:")[1].split("\n")[0]  # the extra disk, seen by the guest
    extra = client.state_dir / "disks" / machine.rsplit("/", 1)[1] / "disk1.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(extra)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["virtual-size"] == 4 * 2**30 and info["actual-size"] < 2**20  # 4 GiB, sparse
    assert (await client.get(machine + "/disks")).json["count"] == 2
    await act(client, machine, "stop", force=True)  # power off, no ACPI
    await client.assert_state(machine, "STOPPED")
    r = await client.delete(machine)
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")


def test_check_reports_the_host(tmp_path):
    import sys
    state = Path("/var/lib/cimid-test") / f"check-{tmp_path.name}"
    try:
        r = subprocess.run([sys.executable, "-m", "cimid.cli", "check", "--profile", "host", "--state-dir",
                            str(state)], capture_output=True, text=True, timeout=60)
    finally:
        import shutil
        shutil.rmtree(state, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "compute: libvirt: ok" in r.stdout and "qemu:///system answers" in r.stdout
    assert "qemu offered by libvirt" in r.stdout and "MiB free" in r.stdout
    # per guest where libvirtd's root is a mount point, else off (setup-host.sh's private qemu.conf)
    assert "guest_mount_namespaces: per guest" in r.stdout or "guest_mount_namespaces: off" in r.stdout


async def test_import_progress_advances(host_client, guest_image):
    """A slow download: the Job's progress is seen between 0 and 100, never going back."""
    async with serve_bytes(guest_image.read_bytes(), "slow.qcow2", pause=0.05) as url:
        r = await host_client.post("machineImages", {"imageLocation": url})
        seen = []
        while True:
            job = (await host_client.get(r.headers["CIMI-Job-URI"])).json
            seen.append(job["progress"])
            if job["state"] in ("SUCCESS", "FAILED"):
                break
            await asyncio.sleep(0.02)
        assert_state(job, "SUCCESS")
        assert any(0 < p < 100 for p in seen) and seen == sorted(seen), seen
