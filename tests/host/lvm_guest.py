"""The LVM helper guest (hypervisor-ci.md §4): a TCG guest booted straight from the Debian cloud kernel and
a busybox initramfs carrying device-mapper and this host's lvm (build-lvm-guest-image.sh), with an empty
disk as /dev/vda, and a CommandRunner that runs commands in its root shell over its second serial port.
Used by tests/host and by bench/bench_volumes.py, so it needs neither pytest nor the test conftest."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import libvirt
from cimid_lvm import Completed

TEST_ROOT = Path("/var/lib/cimid-test")


LVM_GUEST_DIR = TEST_ROOT / "lvm-guest"


class GuestShellRunner:
    """A CommandRunner that runs each command in the helper guest's root shell (its second serial port,
    a unix socket on this host): stdout and stderr kept apart in guest files, the exit status echoed
    after a marker the command line itself cannot contain."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.lock = asyncio.Lock()  # one command at a time on one shell
        self.timings: list[tuple[str, float]] = []

    @classmethod
    async def connect(cls, socket_path: Path, timeout: float = 120.0) -> "GuestShellRunner":
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket_path))
                break
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        runner = cls(reader, writer)
        while True:  # the shell answers once its prompt comes back
            writer.write(b"\n")
            await writer.drain()
            try:
                if b"#" in await asyncio.wait_for(reader.read(4096), 1.0):
                    break
            except asyncio.TimeoutError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"the helper guest's shell never answered on {socket_path}")
        done = await runner.run(["stty", "-echo", "-onlcr"])
        assert done.returncode == 0, done
        return runner

    async def run(self, argv) -> Completed:
        tag = uuid.uuid4().hex
        mark, split = f"@@{tag}", f'"@@{tag[:6]}""{tag[6:]}"'  # the echoed line never holds `mark`
        line = (f"{shlex.join(argv)} >/tmp/out 2>/tmp/err; r=$?; echo {split}; cat /tmp/out; echo {split};"
                f" cat /tmp/err; echo {split} $r\n")
        async with self.lock:
            started = time.monotonic()
            self.writer.write(line.encode())
            await self.writer.drain()
            buf = ""
            while True:
                chunk = await asyncio.wait_for(self.reader.read(65536), 300)
                if not chunk:
                    raise AssertionError("the helper guest's shell went away")
                buf += chunk.decode(errors="replace").replace("\r\n", "\n")
                found = re.search(re.escape(mark) + r" (\d+)\n", buf)
                if found and buf.count(mark) >= 3:
                    break
            self.timings.append((" ".join(argv[:2]), time.monotonic() - started))
        parts = buf[:found.start()].split(mark)
        return Completed(int(found.group(1)), parts[-2].removeprefix("\n"), parts[-1].removeprefix("\n"))

    async def close(self) -> None:
        self.writer.close()


def guest_kernel() -> Path:
    """The helper guest's kernel and initramfs, built from Debian packages when missing."""
    if not (LVM_GUEST_DIR / "initrd.gz").exists():
        run = subprocess.run(["bash", str(Path(__file__).parent / "build-lvm-guest-image.sh"), str(LVM_GUEST_DIR)],
                             capture_output=True, text=True, check=False)
        if run.returncode:
            raise AssertionError(f"build-lvm-guest-image.sh failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return LVM_GUEST_DIR


@contextlib.asynccontextmanager
async def helper_guest(disk_gib: int = 1, memory_mib: int = 384):
    """Boot the LVM helper guest (TCG, direct kernel boot) with an empty `disk_gib` GiB virtio disk as
    /dev/vda; yields a GuestShellRunner on its shell. The guest and its files are removed afterwards."""
    kernel = guest_kernel()
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    root = TEST_ROOT / f"lvm-guest-{uuid.uuid4().hex[:12]}"  # QEMU's user must reach it (not /tmp/pytest-*)
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    disk, sock, log = root / "pv.qcow2", root / "shell.sock", root / "console.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{disk_gib}G"], check=True)
    disk.chmod(0o666)
    name = f"cimid-test-lvm-{uuid.uuid4().hex[:8]}"
    xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}/vmlinuz</kernel>
        <initrd>{kernel}/initrd.gz</initrd><cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
      <features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
          <target dev='vda' bus='virtio'/></disk>
        <serial type='file'><source path='{log}'/><target port='0'/></serial>
        <serial type='unix'><source mode='bind' path='{sock}'/><target port='1'/></serial>
      </devices></domain>"""
    conn = libvirt.open("qemu:///system")
    runner = None
    try:
        started = time.monotonic()
        dom = await asyncio.to_thread(conn.createXML, xml, 0)
        runner = await GuestShellRunner.connect(sock)
        runner.boot_seconds = time.monotonic() - started
        yield runner
    finally:
        if runner is not None:
            await runner.close()
        with contextlib.suppress(libvirt.libvirtError):
            await asyncio.to_thread(conn.lookupByName(name).destroy)
        conn.close()
        shutil.rmtree(root, ignore_errors=True)
