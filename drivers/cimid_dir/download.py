"""Streamed image downloads (http, https, file) with progress and a checksum check."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from cimid.errors import DriverError

CHUNK = 1 << 20
Progress = Callable[[int], Awaitable[None]]  # percent done


def parse_checksum(text: str | None) -> tuple[str, str] | None:
    """'sha256:<hex>' (or sha512, or bare hex of either length) -> (algorithm, hex digest)."""
    if not text:
        return None
    algo, _, digest = text.strip().lower().rpartition(":")
    algo = algo or {64: "sha256", 128: "sha512"}.get(len(digest), "")
    if algo not in ("sha256", "sha512") or not all(c in "0123456789abcdef" for c in digest):
        raise DriverError(f"checksum '{text}' is not sha256:<hex> or sha512:<hex>")
    return algo, digest


async def fetch(url: str, dest: Path, checksum: str | None, progress: Progress, max_bytes: int) -> None:
    """Stream `url` (http, https or file) into `dest`, reporting progress and verifying the checksum."""
    expected = parse_checksum(checksum)
    digest = hashlib.new(expected[0] if expected else "sha256")
    scheme = urlsplit(url).scheme
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as out:
            if scheme in ("http", "https"):
                await _fetch_http(url, out, digest, progress, max_bytes)
            elif scheme == "file":
                await _fetch_file(Path(unquote(urlsplit(url).path)), out, digest, progress, max_bytes)
            else:
                raise DriverError(f"imageLocation must be an http, https or file URL, not '{url}'")
        if expected and digest.hexdigest() != expected[1]:
            raise DriverError(f"checksum mismatch: the download has {expected[0]} {digest.hexdigest()}, "
                              f"the properties say {expected[1]}")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


async def _fetch_http(url, out, digest, progress: Progress, max_bytes: int) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            if response.status != 200:
                raise DriverError(f"GET {url} answered {response.status} {response.reason}")
            total = response.content_length
            done, reported = 0, -1
            loop = asyncio.get_running_loop()
            async for chunk in response.content.iter_chunked(CHUNK):
                done += len(chunk)
                if done > max_bytes:
                    raise DriverError(f"{url} is larger than the {max_bytes} bytes allowed for an image")
                await loop.run_in_executor(None, out.write, chunk)  # disk writes stay off the event loop
                digest.update(chunk)
                if total:
                    percent = min(99, done * 100 // total)
                    if percent != reported:
                        reported = percent
                        await progress(percent)
    except aiohttp.ClientError as exc:
        raise DriverError(f"cannot download {url}: {exc}") from None


async def _fetch_file(source: Path, out, digest, progress: Progress, max_bytes: int) -> None:
    try:
        total = source.stat().st_size
        handle = open(source, "rb")
    except OSError as exc:
        raise DriverError(f"cannot read {source}: {exc.strerror}") from None
    if total > max_bytes:
        raise DriverError(f"{source} is larger than the {max_bytes} bytes allowed for an image")
    loop = asyncio.get_running_loop()
    with handle:
        done, reported = 0, -1
        while chunk := await loop.run_in_executor(None, handle.read, CHUNK):
            await loop.run_in_executor(None, out.write, chunk)
            digest.update(chunk)
            done += len(chunk)
            percent = min(99, done * 100 // max(total, 1))
            if percent != reported:
                reported = percent
                await progress(percent)
