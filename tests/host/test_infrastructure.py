"""The host tier's plumbing, without cimid's machine code: libvirtd answers on qemu:///system, and the test
guest boots by BIOS from a qcow2 overlay, reads cimid's cloud-init seed, and powers off on ACPI."""

import asyncio
import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import libvirt

from cimid_libvirt.seed import build_seed

KEY = "ssh-ed25519 AAAATEST alice@x"
TEST_ROOT = Path("/var/lib/cimid-test")


def test_libvirtd_answers_with_tcg_and_the_host_fix_ups(libvirt_host):
    conn = libvirt.open(libvirt_host)
    try:
        assert conn.getLibVersion() >= 9_000_000
        assert "<domain type='qemu'" in conn.getCapabilities()  # TCG: what the tier runs guests on
    finally:
        conn.close()
    kvm = Path("/dev/kvm")
    if kvm.exists():  # root:kvm 0660, or libvirt re-probes QEMU on every start
        assert kvm.stat().st_mode & 0o777 == 0o660 and kvm.group() == "kvm"
    groups = subprocess.run(["id", "-nG", "libvirt-qemu"], capture_output=True, text=True, check=True).stdout
    assert "kvm" in groups.split()  # QEMU's user, made by setup-host.sh


def domain_xml(name: str, disk: Path, seed: Path, log: Path) -> str:
    """pc machine, BIOS boot (no <kernel>), the seed on IDE (the cloud kernel has no AHCI), no NIC."""
    return f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file='{seed}'/><target dev='hdc' bus='ide'/><readonly/></disk>
    <serial type='pty'><log file='{log}' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>"""


async def test_guest_boots_from_an_overlay_reads_the_seed_and_powers_off(libvirt_host, guest_image,
                                                                         wait_serial):
    tag = uuid.uuid4().hex[:8]
    name, iid = f"cimid-test-infra-{tag}", f"iid-infra-{tag}"  # cimid-*: teardown-host.sh removes leftovers
    work = TEST_ROOT / f"run-infra-{tag}"
    work.mkdir(mode=0o755)
    work.chmod(0o755)
    disk, seed, log = work / "disk.qcow2", work / "seed.iso", work / "serial.log"
    await asyncio.to_thread(subprocess.run, ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest_image),
                                             "-F", "qcow2", str(disk), "1G"], check=True)
    build_seed(seed, instance_id=iid, hostname="infra-guest", credential={"userName": "alice", "key": KEY},
               user_data_b64=base64.b64encode(b"#!/bin/sh\necho hello-from-user-data\n").decode())
    conn = await asyncio.to_thread(libvirt.open, libvirt_host)
    dom = None
    try:
        dom = await asyncio.to_thread(conn.defineXML, domain_xml(name, disk, seed, log))
        t0 = time.monotonic()
        await asyncio.to_thread(dom.create)
        text = await wait_serial(log, "HVTEST: ready", 60)
        ready = time.monotonic() - t0
        assert f"instance-id: {iid}" in text and f"HVTEST: instance-id={iid} hostname=infra-guest" in text
        assert "HVTEST: ----- BEGIN meta-data -----" in text and "HVTEST: ----- END meta-data -----" in text
        assert KEY in text  # the Credential, in user-data's #cloud-config part
        begin = text.index("HVTEST: ----- BEGIN cimi/user-data -----")
        assert "echo hello-from-user-data" in text[begin:text.index("HVTEST: ----- END cimi/user-data -----")]
        assert "HVTEST: user-data: hello-from-user-data" in text  # the x-shellscript part ran
        t0 = time.monotonic()
        await asyncio.to_thread(dom.shutdown)  # ACPI power button: the guest's acpid powers off
        while (await asyncio.to_thread(dom.state))[0] != libvirt.VIR_DOMAIN_SHUTOFF:
            assert time.monotonic() - t0 < 30, "the guest ignored the ACPI power button"
            await asyncio.sleep(0.1)
        print(f"{name}: HVTEST: ready {ready:.2f}s after create(); ACPI shutdown {time.monotonic() - t0:.2f}s")
    finally:
        if dom is not None:
            try:
                if await asyncio.to_thread(dom.isActive):
                    await asyncio.to_thread(dom.destroy)
                await asyncio.to_thread(dom.undefine)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        await asyncio.to_thread(conn.close)
        shutil.rmtree(work, ignore_errors=True)
