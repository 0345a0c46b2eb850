"""How the LVM pool runs its commands: a swappable command runner, so the same driver drives the host's
LVM (a local subprocess) or another machine's (a test's helper guest, through its serial shell).

`LvmCommands` builds every lvm command line (the pool's own `--config` added to each) and reads the
reports as JSON (`--reportformat json`, sizes in bytes without suffix): nothing is screen-scraped."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cimid.errors import DriverError

# lvm complains on stderr about every file descriptor it inherits (asyncio's, a test runner's).
LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one command (no shell) where the volume group lives, and returns when it has ended."""

    async def run(self, argv: Sequence[str]) -> Completed: ...


class LocalRunner:
    """The default: a subprocess on this host, with LVM's environment."""

    async def run(self, argv: Sequence[str]) -> Completed:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env={**os.environ, **LVM_ENV})
        except FileNotFoundError:
            raise DriverError(f"{argv[0]} is not installed (Debian: apt install lvm2)", unavailable=True) from None
        out, err = await proc.communicate()
        return Completed(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def parse_report(text: str, kind: str) -> list[dict[str, str]]:
    """The rows of an lvm JSON report ({"report": [{"lv": [...]}]}), `kind` "lv", "vg" or "pv". Text
    around the JSON document (a remote shell's echo) is ignored."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise DriverError(f"lvm gave no JSON report: {text.strip()[:300]!r}")
    try:
        report = json.loads(text[start:end + 1])["report"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"lvm's report is not the JSON expected ({exc}): {text.strip()[:300]!r}") from None
    return [row for part in report for row in part.get(kind, [])]


def percent(value: str) -> float:
    """An lvm percentage column ("12.50", or "" where it does not apply)."""
    return float(value) if value.strip() else 0.0


class LvmCommands:
    """The lvm command lines the pool needs, each run through the runner; DriverError with lvm's own
    words when one fails."""

    REPORT = ("--reportformat", "json", "--units", "b", "--nosuffix")
    LV_FIELDS = "lv_name,lv_size,lv_attr,lv_tags,pool_lv,origin,data_percent,metadata_percent"

    def __init__(self, runner: CommandRunner, config: str = "", devices: Sequence[str] = ()):
        self.runner = runner
        # Given to every command: --config (e.g. global{activation=0}) and --devices (only these PVs).
        self.options = [*(["--config", config] if config else []),
                        *(a for d in devices for a in ("--devices", d))]

    def argv(self, command: str, *args: str) -> list[str]:
        return ["lvm", command, *self.options, *args]

    async def run(self, command: str, *args: str) -> str:
        done = await self.runner.run(self.argv(command, *args))
        if done.returncode != 0:
            words = " ".join(line.strip() for line in done.stderr.splitlines()
                             if line.strip() and "WARNING" not in line)
            raise DriverError(f"lvm {command} failed ({done.returncode}): {words[:500] or done.stdout.strip()[:500]}")
        return done.stdout

    async def lvs(self, vg: str) -> list[dict[str, str]]:
        return parse_report(await self.run("lvs", *self.REPORT, "-o", self.LV_FIELDS, vg), "lv")

    async def vg(self, vg: str) -> dict[str, str]:
        rows = parse_report(await self.run("vgs", *self.REPORT, "-o", "vg_name,vg_size,vg_free,vg_extent_size", vg),
                            "vg")
        if not rows:
            raise DriverError(f"volume group {vg} not found")
        return rows[0]

    async def create(self, vg: str, name: str, size_kb: int, *, thin_pool: str = "", tag: str) -> None:
        if thin_pool:
            await self.run("lvcreate", "-q", "-y", "-n", name, "-V", f"{size_kb}k", "--thinpool",
                           f"{vg}/{thin_pool}", "--addtag", tag)
        else:  # thick: zeroed head (-Z y, the default), no signature prompts (-y)
            await self.run("lvcreate", "-q", "-y", "-n", name, "-L", f"{size_kb}k", "--addtag", tag, vg)

    async def snapshot(self, vg: str, origin: str, name: str, *, tag: str, read_only: bool = False) -> None:
        """A thin snapshot (no size: it shares the thin pool); activated with it (-k n), unless read_only."""
        await self.run("lvcreate", "-q", "-y", "-s", "-n", name, "--addtag", tag,
                       *(["-p", "r"] if read_only else ["-k", "n"]), f"{vg}/{origin}")

    async def extend(self, vg: str, name: str, size_kb: int) -> None:
        await self.run("lvextend", "-q", "-L", f"{size_kb}k", f"{vg}/{name}")

    async def rename(self, vg: str, old: str, new: str) -> None:
        await self.run("lvrename", "-q", vg, old, new)

    async def activate(self, vg: str, name: str) -> None:
        await self.run("lvchange", "-q", "-a", "y", "-K", f"{vg}/{name}")

    async def remove(self, vg: str, name: str) -> None:
        await self.run("lvremove", "-q", "-y", f"{vg}/{name}")

    async def copy(self, source: str, dest: str, source_format: str = "raw") -> None:
        """Copy disk data onto a block device: qemu-img where it is a file in another format, else dd."""
        if source_format != "raw":
            argv = ["qemu-img", "convert", "-q", "-n", "-f", source_format, "-O", "raw", source, dest]
        else:
            argv = ["dd", f"if={source}", f"of={dest}", "bs=1M", "conv=fsync"]
        done = await self.runner.run(argv)
        if done.returncode != 0:
            raise DriverError(f"{argv[0]} onto {dest} failed: {done.stderr.strip()[:500]}")
