"""The real-hypervisor tier: every test under tests/host is marked `host` (deselect with -m "not host") and
needs libvirtd on qemu:///system, which tests/host/setup-host.sh starts (`make test` runs it first).

Fixtures:
  guest_image  (session) Path of the test guest's disk.qcow2, built by build-guest-image.sh when missing or made
               by an older version of the script (the build downloads a kernel: run it outside the namespace)
  host_client  a CimiClient of the host profile (TCG guests, the starter catalogue) on a fresh state
               directory under /var/lib/cimid-test (QEMU's user must be able to traverse it, unlike
               /tmp/pytest-of-root); `host_client.state_dir` is cimid's state directory. Afterwards every
               cimid-* domain it left (its disks in that directory) is removed, with a warning, and so is
               the directory.
  wait_serial  `text = await wait_serial(path, needle, timeout=60)`: polls a serial log for a substring
               (the log holds \\r\\n and ANSI escapes, so match substrings, not lines)
The whole run shares one event loop (pyproject), which the module-scoped async fixtures live on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import libvirt
import pytest
from aiohttp import web
from conftest import make_client  # tests/conftest.py (tests/host is a package)

HERE = Path(__file__).resolve().parent
TEST_ROOT = Path("/var/lib/cimid-test")
GUEST_DIR = TEST_ROOT / "guest"
# Another libvirtd than setup-host.sh's (one in a namespace of your own, say) can be named here.
URI = os.environ.get("CIMID_TEST_LIBVIRT_URI", "qemu:///system")
# No default network: the host tier may run outside a test network namespace, where no bridge may get an
# address (the network tests make theirs, inside one).
HOST_OVERRIDES = {"compute": {"uri": URI, "virt_type": "qemu", "stop_timeout": 30.0}, "catalogue": {"seed": True},
                  "network": {"create_default": False}}

def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.host)


@pytest.fixture(autouse=True, scope="module")
def leaves_no_link():
    """No host test module may leave a link that a cimid made (its alias says "cimid:"): a daemon that made
    its default network and was killed, say, would leave its bridge and address in the namespace for good.
    (Per module: a module's shared daemon removes its networks when the module ends.)"""
    from cimid_bridge.links import owned_links
    before = owned_links("cimid:")
    yield
    left = set(owned_links("cimid:")) - set(before)
    assert not left, f"the module left links a cimid made: {sorted(left)}"


def domain_names(prefix: str = "cimid-", mentioning: str = "") -> set[str]:
    """Names of the domains called prefix*, only those whose XML mentions `mentioning` if given (a state
    directory: its machines' disks live there, so other test runs' domains are never touched)."""
    conn = libvirt.open(URI)
    try:
        return {d.name() for d in conn.listAllDomains()
                if d.name().startswith(prefix) and mentioning in d.XMLDesc()}
    finally:
        conn.close()


def remove_domains(names) -> None:
    """Destroy (if running) and undefine these domains, with their managed save and snapshot metadata."""
    conn = libvirt.open(URI)
    try:
        for name in names:
            try:
                dom = conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
    finally:
        conn.close()


def fresh_dir(prefix: str = "run") -> Path:
    """A new directory under /var/lib/cimid-test, mode 0755 (teardown-host.sh removes run-* leftovers)."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"{prefix}-{uuid.uuid4().hex[:12]}"
    path.mkdir(mode=0o755)
    path.chmod(0o755)  # whatever the umask
    return path


@pytest.fixture(scope="session")
def libvirt_host():
    """qemu:///system answers, or the whole tier fails with the way out."""
    try:
        domain_names()
    except libvirt.libvirtError as exc:
        pytest.fail(f"{URI} does not answer ({exc}): run `bash tests/host/setup-host.sh` as root first "
                    "(`make test` does), or deselect this tier with -m 'not host'", pytrace=False)
    return URI


@pytest.fixture(scope="session")
def guest_image() -> Path:
    # The script returns at once when the image there is its own (it rebuilds one an older script made).
    run = subprocess.run(["bash", str(HERE / "build-guest-image.sh"), str(GUEST_DIR)],
                         capture_output=True, text=True, check=False)
    if run.returncode:
        pytest.fail(f"build-guest-image.sh failed ({run.returncode}):\n{run.stdout}{run.stderr}", pytrace=False)
    return GUEST_DIR / "disk.qcow2"


@pytest.fixture
async def host_client(libvirt_host):
    root = fresh_dir()
    client = await make_client(root, copy.deepcopy(HOST_OVERRIDES), profile="host")
    client.state_dir = root / "state"  # make_client's state directory
    try:
        yield client
    finally:
        await client.client.close()
        left = await asyncio.to_thread(domain_names, "cimid-", str(root) + "/")
        if left:
            warnings.warn(f"host_client: cimid left domains {sorted(left)}; removed them", stacklevel=1)
            await asyncio.to_thread(remove_domains, left)
        shutil.rmtree(root, ignore_errors=True)


async def _wait_serial(path, needle: str, timeout: float = 60.0) -> str:
    loop = asyncio.get_running_loop()
    deadline, text = loop.time() + timeout, ""
    while True:
        try:
            text = Path(path).read_bytes().decode(errors="replace")
        except FileNotFoundError:
            pass
        if needle in text:
            return text
        if loop.time() > deadline:
            raise AssertionError(f"{needle!r} not in {path} after {timeout}s; it ends with:\n{text[-3000:]}")
        await asyncio.sleep(0.1)


@pytest.fixture
def wait_serial():
    return _wait_serial



@contextlib.asynccontextmanager
async def serve_bytes(data: bytes, name: str = "image.qcow2", chunk: int = 1 << 20, pause: float = 0.0):
    """Serve `data` at http://127.0.0.1:<port>/<name>, `chunk` bytes at a time with `pause` seconds
    between chunks (a slow download); yields the URL."""
    async def handler(request):
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        for start in range(0, len(data), chunk):
            await response.write(data[start:start + chunk])
            await asyncio.sleep(pause)
        return response

    app = web.Application()
    app.router.add_get(f"/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/{name}"
    finally:
        await runner.cleanup()
