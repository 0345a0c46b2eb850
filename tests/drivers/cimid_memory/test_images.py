"""The in-memory image store: imports over file and http (loopback), inspection checked against qemu-img's
own files, checksums, captures through add_image, and nothing kept from a refused image."""

import hashlib
import subprocess

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cimid_memory import MemoryImageStore

from cimid.errors import DriverError

RAW = bytes(range(256)) * 256  # 64 KiB of whole sectors, not text


class Progress:
    def __init__(self):
        self.seen = []

    async def __call__(self, percent: int) -> None:
        self.seen.append(percent)


def qemu_img(*args) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


async def test_import_keeps_the_data_and_forgets_it_on_delete(tmp_path):
    store = MemoryImageStore()
    source = tmp_path / "disk.raw"
    source.write_bytes(RAW)
    progress = Progress()
    info = await store.import_image("i1", source.as_uri(), "sha256:" + hashlib.sha256(RAW).hexdigest(), progress)
    assert info == {"format": "raw", "virtual_size": len(RAW)}
    assert await store.image_info("i1") == info
    assert store.image_data("i1") == RAW
    assert store.image_path("i1") is None  # nothing a hypervisor could read
    assert progress.seen and progress.seen[-1] == 99
    assert "1 held in memory" in (await store.health())["images"]
    await store.delete_image("i1")
    assert await store.image_info("i1") is None
    await store.delete_image("i1")  # an unknown id is not an error


async def test_qcow2_is_read_as_qemu_img_wrote_it(tmp_path):
    store = MemoryImageStore()
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "10M")
    info = await store.import_image("q", disk.as_uri(), None, Progress())
    assert info == {"format": "qcow2", "virtual_size": 10 << 20}


@pytest.mark.parametrize("make, checksum, needle", [
    (lambda d: d.write_bytes(RAW), "sha256:" + "0" * 64, "checksum mismatch"),
    (lambda d: d.write_bytes(RAW), "md5:abc", "not sha256"),
    (lambda d: d.write_text("<html>" + "x" * 1018 + "</html>\n" * 64), None, "not a disk image"),
    (lambda d: d.write_bytes(RAW[:1000]), None, "not a disk image"),  # not whole sectors
    (lambda d: None, None, "cannot read"),  # no such file
])
async def test_refused_imports_keep_nothing(tmp_path, make, checksum, needle):
    store = MemoryImageStore()
    source = tmp_path / "disk"
    make(source)
    with pytest.raises(DriverError, match=needle):
        await store.import_image("bad", source.as_uri(), checksum, Progress())
    assert await store.image_info("bad") is None


async def test_a_qcow2_with_a_backing_file_is_refused(tmp_path):
    base, overlay = tmp_path / "base.qcow2", tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay))
    store = MemoryImageStore()
    with pytest.raises(DriverError, match="backing file"):
        await store.import_image("o", overlay.as_uri(), None, Progress())


async def test_only_http_https_and_file_locations():
    with pytest.raises(DriverError, match="http, https or file"):
        await MemoryImageStore().import_image("x", "ftp://127.0.0.1/disk.raw", None, Progress())


async def test_import_over_http_on_loopback():
    async def serve(request):
        if request.match_info["name"] != "disk.raw":
            raise web.HTTPNotFound()
        return web.Response(body=RAW, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        store = MemoryImageStore()
        progress = Progress()
        info = await store.import_image("h", str(server.make_url("/disk.raw")), None, progress)
        assert info["format"] == "raw" and store.image_data("h") == RAW
        assert progress.seen == sorted(progress.seen) and progress.seen[-1] == 99
        with pytest.raises(DriverError, match="404"):
            await store.import_image("m", str(server.make_url("/missing.raw")), None, Progress())
        assert await store.image_info("m") is None
    finally:
        await server.close()


async def test_add_image_keeps_what_the_compute_driver_writes(tmp_path):
    store = MemoryImageStore()

    async def write_raw(path):
        path.write_bytes(RAW)

    info = await store.add_image("c", write_raw)
    assert info == {"format": "raw", "virtual_size": len(RAW), "location": "urn:cimid:memory:image:c"}
    assert store.image_data("c") == RAW

    async def write_nothing(path):
        pass

    async def write_text(path):
        path.write_text("not a disk\n")

    for fill, needle in ((write_nothing, "nothing was written"), (write_text, "not a disk image")):
        with pytest.raises(DriverError, match=needle):
            await store.add_image("bad", fill)
        assert await store.image_info("bad") is None
