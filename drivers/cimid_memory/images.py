"""An image store in memory: the sandbox's twin of the directory store.

Image data is held as bytes and inspected the same way (raw or self-contained qcow2 only). Its
`imports_images` is false, so the sandbox keeps MachineImages as catalogue entries and never downloads;
what is imported or added through the contract is really read, checked and kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from cimid.errors import DriverError

MAX_IMAGE_BYTES = 256 << 20  # every byte stays in this process's memory
CHUNK = 1 << 16
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_EXTERNAL_DATA_FILE = 1 << 2  # incompatible feature bit (qcow2 version 3)

Progress = Callable[[int], Awaitable[None]]


def inspect(data: bytes) -> dict:
    """{"format", "virtual_size"} of an image, refused unless it is a self-contained raw or qcow2 disk."""
    if data[:4] == QCOW2_MAGIC:
        if len(data) < 104:
            raise DriverError("the image is a truncated qcow2 (its header is incomplete)")
        version, backing_offset = struct.unpack_from(">IQ", data, 4)
        (virtual_size,) = struct.unpack_from(">Q", data, 24)
        if backing_offset:
            raise DriverError("the image is a qcow2 with a backing file; flatten it (qemu-img convert) first")
        if version >= 3 and struct.unpack_from(">Q", data, 72)[0] & QCOW2_EXTERNAL_DATA_FILE:
            raise DriverError("the image is a qcow2 with an external data file; that is refused")
        return {"format": "qcow2", "virtual_size": virtual_size}
    if not data or len(data) % 512 or _is_text(data[:4096]):
        raise DriverError("the data is not a disk image (not qcow2, and not a raw disk of whole sectors)")
    return {"format": "raw", "virtual_size": len(data)}


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(head.strip()) and b"\0" not in head


def _expected_digest(checksum: str | None) -> tuple[str, str] | None:
    """'sha256:<hex>' or 'sha512:<hex>' (the algorithm may be left out) -> (algorithm, hex digest)."""
    if not checksum:
        return None
    algorithm, _, digest = checksum.strip().lower().rpartition(":")
    algorithm = algorithm or {64: "sha256", 128: "sha512"}.get(len(digest), "")
    if algorithm not in ("sha256", "sha512") or not digest or any(c not in "0123456789abcdef" for c in digest):
        raise DriverError(f"checksum '{checksum}' is not sha256:<hex> or sha512:<hex>")
    return algorithm, digest


class MemoryImageStore:
    name = "memory"
    imports_images = False

    def __init__(self):
        self._images: dict[str, tuple[bytes, dict]] = {}  # id -> (data, {"format", "virtual_size"})

    async def open(self) -> None:
        """Always ready."""

    async def close(self) -> None:
        self._images.clear()

    async def health(self) -> dict[str, str]:
        held = sum(len(data) for data, _ in self._images.values())
        return {"images": f"{len(self._images)} held in memory ({held} bytes)"}

    async def import_image(self, image_id: str, location: str, checksum: str | None, progress: Progress) -> dict:
        expected = _expected_digest(checksum)
        scheme = urlsplit(location).scheme
        if scheme in ("http", "https"):
            data = await _read_http(location, progress)
        elif scheme == "file":
            data = await _read_file(Path(unquote(urlsplit(location).path)), progress)
        else:
            raise DriverError(f"imageLocation must be an http, https or file URL, not '{location}'")
        if expected:
            actual = hashlib.new(expected[0], data).hexdigest()
            if actual != expected[1]:
                raise DriverError(f"checksum mismatch: the download has {expected[0]} {actual}, "
                                  f"the properties say {expected[1]}")
        info = inspect(data)
        self._images[image_id] = (data, info)
        return dict(info)

    async def add_image(self, image_id: str, fill: Callable[[Path], Awaitable[None]]) -> dict:
        # fill() writes a file (a compute driver copying a disk); its bytes are read in and the file goes.
        with tempfile.TemporaryDirectory(prefix="cimid-image-") as scratch:
            path = Path(scratch) / image_id
            await fill(path)
            if not path.exists():
                raise DriverError(f"nothing was written for image {image_id}")
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise DriverError(f"image {image_id} is larger than the {MAX_IMAGE_BYTES} bytes held in memory")
            data = await asyncio.to_thread(path.read_bytes)
        info = inspect(data)
        self._images[image_id] = (data, info)
        return {**info, "location": f"urn:cimid:memory:image:{image_id}"}

    async def image_info(self, image_id: str) -> dict | None:
        kept = self._images.get(image_id)
        return dict(kept[1]) if kept else None

    def image_path(self, image_id: str) -> Path | None:
        return None  # held in memory: no file a hypervisor could read

    def image_data(self, image_id: str) -> bytes | None:
        kept = self._images.get(image_id)
        return kept[0] if kept else None

    async def delete_image(self, image_id: str) -> None:
        self._images.pop(image_id, None)


async def _read_http(url: str, progress: Progress) -> bytes:
    data = bytearray()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            if response.status != 200:
                raise DriverError(f"GET {url} answered {response.status} {response.reason}")
            async for chunk in response.content.iter_chunked(CHUNK):
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:
                    raise DriverError(f"{url} is larger than the {MAX_IMAGE_BYTES} bytes held in memory")
                if response.content_length:
                    await progress(min(99, len(data) * 100 // response.content_length))
    except aiohttp.ClientError as exc:
        raise DriverError(f"cannot download {url}: {exc}") from None
    return bytes(data)


async def _read_file(path: Path, progress: Progress) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DriverError(f"cannot read {path}: {exc.strerror}") from None
    if size > MAX_IMAGE_BYTES:
        raise DriverError(f"{path} is larger than the {MAX_IMAGE_BYTES} bytes held in memory")
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise DriverError(f"cannot read {path}: {exc.strerror}") from None
    await progress(99)
    return data
