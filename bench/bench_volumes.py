"""Benchmark 9: Volumes. Three parts, each with its baseline measured side by side in the same run:

a. Create from an image: POST /cimi/volumes with a volumeImage, to the create Job's SUCCESS, from a 1 GiB
   and a 10 GiB VolumeImage (10 % of each written with data), interleaved, on the dir pool: the volume is
   a copy-on-write overlay, so 10 GiB over 1 GiB should be <= 1.2. Beside it, for scale, the full copy a
   copying driver would make (qemu-img convert of the same image file).
   The same on an lvm pool with a thin pool, in the LVM helper guest (--host only; cimid's LvmVolumes
   driven directly, its commands sent over the guest's serial shell): create_volume from a 1 GiB and a
   10 GiB image LV is a thin snapshot; beside it a dd of the images' data, for scale.
b. Hot-plug (host profile, a running TCG guest, --host only): POST a MachineVolume until the Event saying
   it is attached arrives on the Event stream (committed with the Job's SUCCESS: the first moment a client
   can know; a stream costs the server nothing while it waits, where polling the Job would load the very
   machine that attaches), against plain libvirt-python attachDeviceFlags of the same disk (the volume's own file, while
   cimid has it detached) on the same domain, timed until the call returns (libvirt has then hot-plugged it
   and saved the definition); target <= 1.3x. Detaching (the guest's ACPI acknowledgement) is not timed.
c. Scale: GET /cimi/volumes with a $filter on capacity among 2,000 Volumes (rows written straight into
   SQLite in the shape cimid writes them), listing 125 of them: median <= 15 ms, against GET
   cloudEntryPoint; and a wider $filter listing 500, for scale.

Parts a and b need root (QEMU's user must reach the files: they live under /var/lib/cimid-test/bench-*);
b needs libvirtd on qemu:///system and the test guest image, as bench_host does.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from common import Client, Figure, WrongAnswer, free_port, launch, median, percentile, query_string, \
    report_answers, start_cimid

TEST_ROOT = Path("/var/lib/cimid-test")
COUNT = 2_000
DIR_POOL = '[storage]\ndefault_pool = "files"\n[storage.pools.files]\ndriver = "dir"\npath = "{path}"\n'


def qemu(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()}")


def post(client: Client, path: str, body: dict) -> tuple[str, str]:
    status, headers, raw = client.request("POST", path, body)
    if status != 202 or "cimi-job-uri" not in headers:
        raise WrongAnswer(f"POST {path} answered {status} {raw[:300]!r}, not 202 with a Job")
    return urlsplit(headers["location"]).path, urlsplit(headers["cimi-job-uri"]).path


def wait_job(client: Client, job: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while (got := client.get_json(job))["state"] != "SUCCESS":
        if got["state"] in ("FAILED", "STOPPED"):
            raise WrongAnswer(f"Job {job} ({got.get('action')}) ended {got['state']}: {got.get('statusMessage')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Job {job} still {got['state']} after {timeout:.0f} s")
        time.sleep(0.005)


def delete(client: Client, path: str) -> None:
    status, headers, raw = client.request("DELETE", path)
    if status != 202:
        raise WrongAnswer(f"DELETE {path} answered {status} {raw[:300]!r}")
    wait_job(client, urlsplit(headers["cimi-job-uri"]).path)


# ---------------------------------------------------------------- a. create from an image

def run_create(workdir: Path, quick: bool) -> list[Figure]:
    rounds = 3 if quick else 7
    root = Path(tempfile.mkdtemp(prefix="bench-volumes-", dir=TEST_ROOT))
    root.chmod(0o755)
    figures = []
    with ExitStack() as stack:
        stack.callback(subprocess.run, ["rm", "-rf", str(root)])
        sources = {}
        for label, size, data in (("1 GiB", "1G", "100M"), ("10 GiB", "10G", "1G")):
            sources[label] = root / f"image-{size}.qcow2"
            qemu("qemu-img", "create", "-q", "-f", "qcow2", str(sources[label]), size)
            qemu("qemu-io", "-c", f"write -q -P 0x5a 0 {data}", str(sources[label]))
        server = start_cimid(workdir, "volumes-create", root / "state",
                             extra_config=DIR_POOL.format(path=root / "pool"))
        stack.callback(server.stop)
        client = Client(server.port, timeout=600)
        stack.callback(client.close)
        images = {}
        for label, source in sources.items():
            path, job = post(client, "/cimi/volumeImages", {"name": label, "imageLocation": source.as_uri()})
            wait_job(client, job)
            images[label] = f"http://127.0.0.1:{server.port}{path}"
        print(f"  dir pool in {root}; VolumeImages of 1 GiB (100 MiB of data) and 10 GiB (1 GiB of data)")
        overlay = {label: [] for label in images}
        copy = {label: [] for label in images}
        made = []
        labels = list(images)
        image_files = {label: next((root / "pool" / "images").glob(f"{image.rsplit('/', 1)[1]}.*"))
                       for label, image in images.items()}
        # The sizes alternate which goes first; the full copies run after all the creates, so the page
        # cache they dirty is not flushed under a create's commit.
        for round_number in range(1, rounds + 1):
            for label in labels if round_number % 2 else reversed(labels):
                started = time.perf_counter()
                volume, job = post(client, "/cimi/volumes", {"volumeTemplate": {
                    "volumeConfig": {"capacity": 1024}, "volumeImage": {"href": images[label]}}})
                wait_job(client, job)
                overlay[label].append((time.perf_counter() - started) * 1e3)
                made.append(volume)
            print(f"    round {round_number}: " + "   ".join(
                f"{label}: volume {overlay[label][-1]:6.1f} ms" for label in labels))
        for round_number in range(1, rounds + 1):
            for label in labels if round_number % 2 else reversed(labels):
                target = root / f"copy-{round_number}.qcow2"
                started = time.perf_counter()
                qemu("qemu-img", "convert", "-O", "qcow2", str(image_files[label]), str(target))
                copy[label].append((time.perf_counter() - started) * 1e3)
                target.unlink()
            print(f"    round {round_number}: " + "   ".join(
                f"{label}: full copy {copy[label][-1]:7.0f} ms" for label in labels))
        for volume in made:
            delete(client, volume)
        small, large = (median(overlay[label]) for label in images)
        copy_small, copy_large = (median(copy[label]) for label in images)
        print(f"  median: volume from 1 GiB {small:.1f} ms, from 10 GiB {large:.1f} ms (ratio {large / small:.2f});"
              f" full copy {copy_small:.0f} ms and {copy_large:.0f} ms")
        figures += [
            Figure.measured("Volume from image: POST -> Job SUCCESS, 1 GiB (dir overlay)", small, "ms", 1),
            Figure.measured("Volume from image: POST -> Job SUCCESS, 10 GiB (dir overlay)", large, "ms", 1),
            Figure.measured("Volume from image: 10 GiB / 1 GiB", large / small, "", 2, "<=", 1.2),
            Figure.measured("Volume from image: full copy 1 GiB (qemu-img convert, scale)", copy_small, "ms", 0),
            Figure.measured("Volume from image: full copy 10 GiB (qemu-img convert, scale)", copy_large, "ms", 0),
        ]
    return figures


def run_create_lvm(workdir: Path, quick: bool) -> list[Figure]:
    import asyncio
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "host"))
    from cimid_lvm import LvmVolumes
    from lvm_guest import helper_guest
    rounds = 3 if quick else 7

    async def measure() -> list[Figure]:
        async with helper_guest(disk_gib=4, memory_mib=512) as guest:
            print(f"  helper guest's shell up in {guest.boot_seconds:.1f} s")

            async def sh(*argv: str) -> None:
                done = await guest.run(list(argv))
                if done.returncode:
                    raise RuntimeError(f"{' '.join(argv)} in the helper guest: {done.stderr.strip()}")
            await sh("lvm", "pvcreate", "-q", "/dev/vda")
            await sh("lvm", "vgcreate", "-q", "bvg", "/dev/vda")
            await sh("lvm", "lvcreate", "-q", "-y", "--type", "thin-pool", "-L", "3g", "-n", "tp", "bvg")
            pool = LvmVolumes(SimpleNamespace(state_dir=workdir / "lvm-bench"), "bench",
                              {"volume_group": "bvg", "thin_pool": "tp", "thin_fill_limit": 100}, guest)
            await pool.open()
            sizes = {"1 GiB": (1024 * 1024, 100), "10 GiB": (10 * 1024 * 1024, 1024)}  # KiB, MiB of data
            for label, (size_kb, data_mib) in sizes.items():  # image LVs as an import leaves them, data on
                name = f"img{size_kb}"
                await sh("lvm", "lvcreate", "-q", "-y", "-n", f"cimid-i-{name}", "-V", f"{size_kb}k",
                         "--thinpool", "bvg/tp", "--addtag", "cimid")
                await sh("dd", "if=/dev/zero", f"of=/dev/bvg/cimid-i-{name}", "bs=1M", f"count={data_mib}",
                         "conv=fsync")
            snap = {label: [] for label in sizes}
            for round_number in range(1, rounds + 1):
                for label in list(sizes) if round_number % 2 else list(reversed(sizes)):
                    size_kb = sizes[label][0]
                    started = time.perf_counter()
                    await pool.create_volume(f"r{round_number}-{size_kb}", size_kb, f"img{size_kb}")
                    snap[label].append((time.perf_counter() - started) * 1e3)
                    await pool.delete_volume(f"r{round_number}-{size_kb}")
                print(f"    round {round_number}: " + "   ".join(
                    f"{label}: thin snapshot volume {snap[label][-1]:6.0f} ms" for label in sizes))
            copy = {}
            for label, (size_kb, data_mib) in sizes.items():  # once: a copy of the data is slow under TCG
                await sh("lvm", "lvcreate", "-q", "-y", "-n", "copy", "-V", f"{size_kb}k", "--thinpool", "bvg/tp")
                started = time.perf_counter()
                await sh("dd", f"if=/dev/bvg/cimid-i-img{size_kb}", "of=/dev/bvg/copy", "bs=1M",
                         f"count={data_mib}", "conv=fsync")
                copy[label] = (time.perf_counter() - started) * 1e3
                await sh("lvm", "lvremove", "-q", "-y", "bvg/copy")
                print(f"    {label}: dd of its {data_mib} MiB of data {copy[label]:7.0f} ms")
            small, large = median(snap["1 GiB"]), median(snap["10 GiB"])
            print(f"  median: thin snapshot volume from 1 GiB {small:.0f} ms, from 10 GiB {large:.0f} ms "
                  f"(ratio {large / small:.2f})")
            return [
                Figure.measured("LVM volume from image (helper guest): thin snapshot, 1 GiB", small, "ms", 0),
                Figure.measured("LVM volume from image (helper guest): thin snapshot, 10 GiB", large, "ms", 0),
                Figure.measured("LVM volume from image: 10 GiB / 1 GiB", large / small, "", 2, "<=", 1.2),
                Figure.measured("LVM volume from image: dd of 1 GiB image's data (scale)", copy["1 GiB"], "ms", 0),
                Figure.measured("LVM volume from image: dd of 10 GiB image's data (scale)", copy["10 GiB"], "ms", 0),
            ]
    return asyncio.run(measure())


# ---------------------------------------------------------------- b. hot-plug

class EventFollower:
    """The server's Event stream (/cimi/eventStream, Server-Sent Events) read on a thread of its own: each
    Event document with the moment it arrived, for the benchmark to wait on without polling."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=None)
        self.conn.request("GET", "/cimi/eventStream", headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise WrongAnswer(f"GET /cimi/eventStream answered {self.response.status}")
        self.events: queue.Queue[tuple[float, dict]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response:
                if line.startswith(b"data: "):
                    self.events.put((time.perf_counter(), json.loads(line[6:])))
        except Exception:  # noqa: BLE001 - the stream was closed under it (close())
            pass

    def wait(self, matches, timeout: float = 60) -> float:
        """The arrival time of the first Event from now on for which matches(event) is true."""
        deadline = time.monotonic() + timeout
        while True:
            arrived, event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if matches(event):
                return arrived

    def close(self) -> None:
        self.conn.sock.shutdown(socket.SHUT_RDWR)  # ends the reading thread's loop


# No default network: a hot-plug needs none, and the benchmark's cleanup removes domains and files, not the
# bridge, dnsmasq and rules a network leaves on the host.
HOST_CONFIG = ('profile = "host"\n[server]\nlog_requests = false\n[compute]\nuri = "qemu:///system"\n'
               'virt_type = "qemu"\n[catalogue]\nseed = true\n[network]\ncreate_default = false\n')


def run_hotplug(workdir: Path, quick: bool) -> list[Figure]:
    import libvirt

    import bench_host
    bench_host.ensure_host()
    # Single rounds swing 0.8x to 2x on a shared machine: a median of 20 still moved by +-0.1 from run to run
    # (its standard error, from the spread of the rounds); 60 bring that to about +-0.05.
    rounds = 5 if quick else 60
    root = Path(tempfile.mkdtemp(prefix="bench-hotplug-", dir=TEST_ROOT))
    root.chmod(0o755)
    with ExitStack() as stack:
        stack.callback(bench_host.cleanup, root)
        config = workdir / "volumes-hotplug.toml"
        config.write_text(HOST_CONFIG)
        port = free_port()
        server = launch("volumes-hotplug", [sys.executable, "-m", "cimid.cli", "serve", "--config", str(config),
                                            "--state-dir", str(root / "state"), "--listen", f"127.0.0.1:{port}"],
                        port, workdir / "volumes-hotplug.log", "/cimi/cloudEntryPoint")
        stack.callback(server.stop)
        client = Client(port, timeout=180)
        stack.callback(client.close)
        base = f"http://127.0.0.1:{port}/cimi/"
        image = bench_host.import_image(client, "guest", bench_host.GUEST)
        machine, job = post(client, "/cimi/machines", bench_host.machine_body(base, image, "STARTED"))
        wait_job(client, job)
        volume, job = post(client, "/cimi/volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024}}})
        wait_job(client, job)
        by_hand = root / "state" / "volumes" / f"{volume.rsplit('/', 1)[1]}.qcow2"  # the same disk
        if not by_hand.exists():
            raise RuntimeError(f"the volume's file is not where the dir pool keeps it: {by_hand}")
        conn = libvirt.open(bench_host.URI)
        stack.callback(conn.close)
        dom = conn.lookupByName("cimid-" + machine.rsplit("/", 1)[1])
        # The disk XML cimid's libvirt driver writes for a file volume (compute.volume_disk_xml), at vdb as cimid's.
        xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{by_hand}'/>"
               "<target dev='vdb' bus='virtio'/></disk>")
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE
        deadline = time.monotonic() + 180  # the guest acknowledges unplugs once its userspace runs
        while b"HVTEST: ready" not in client.request("GET", machine + "/console")[2]:
            if time.monotonic() > deadline:
                raise RuntimeError("the guest never printed HVTEST: ready")
            time.sleep(0.2)
        follower = EventFollower(port)
        stack.callback(follower.close)
        cimid_ms, plain_ms, answer_ms = [], [], []
        print(f"  {rounds} interleaved rounds on one running TCG guest; each detach waits for the guest, untimed")
        for round_number in range(1, rounds + 1):
            started = time.perf_counter()
            attachment, job = post(client, machine + "/volumes", {"volume": {"href": base + volume.split("/cimi/")[1]},
                                                                  "initialLocation": "vdb"})
            answer_ms.append((time.perf_counter() - started) * 1e3)
            href = base + attachment.split("/cimi/")[1]
            attached = follower.wait(lambda e: e.get("content", {}).get("resource", {}).get("href") == href
                                     and e["content"].get("change") == "changed")
            cimid_ms.append((attached - started) * 1e3)
            wait_job(client, job)  # it is SUCCESS already (the same commit), untimed
            delete(client, attachment)
            started = time.perf_counter()
            dom.attachDeviceFlags(xml, flags)
            plain_ms.append((time.perf_counter() - started) * 1e3)
            dom.detachDeviceFlags(xml, flags)
            deadline = time.monotonic() + 60
            while str(by_hand) in dom.XMLDesc(0):
                if time.monotonic() > deadline:
                    raise RuntimeError("the guest never released the plain libvirt disk")
                time.sleep(0.05)
            print(f"    round {round_number}: cimid POST -> 202 {answer_ms[-1]:6.1f} ms, -> attached {cimid_ms[-1]:6.1f} ms, "
                  f"attachDeviceFlags {plain_ms[-1]:6.1f} ms")
        cimid_median, plain_median = median(cimid_ms), median(plain_ms)
        print(f"  median: cimid {cimid_median:.1f} ms, plain libvirt {plain_median:.1f} ms, "
              f"ratio {cimid_median / plain_median:.2f}")
        return [
            Figure.measured("Hot-plug: attachDeviceFlags by hand (baseline)", plain_median, "ms", 1),
            Figure.measured("Hot-plug: POST MachineVolume -> 202", median(answer_ms), "ms", 1),
            Figure.measured("Hot-plug: POST MachineVolume -> attached", cimid_median, "ms", 1),
            Figure.measured("Hot-plug: cimid / plain libvirt", cimid_median / plain_median, "x", 2, "<=", 1.3),
        ]


# ---------------------------------------------------------------- c. 2,000 volumes

def populate(database: Path, template: tuple) -> None:
    """COUNT Volumes v-0..v-1999 of capacity 1024 * (i % 16 + 1) KB, cloned from the row cimid wrote for a
    volume made through the API (so the shape is cimid's own)."""
    kind, _id, parent, _name, created, updated, state, doc, internal, owner = template
    attrs = json.loads(doc)
    rows = []
    for i in range(COUNT):
        attrs.update(name=f"v-{i}", capacity=1024 * (i % 16 + 1))
        rows.append((kind, uuid.uuid4().hex, parent, f"v-{i}", created, updated, state, json.dumps(attrs),
                     internal, owner))
    conn = sqlite3.connect(database)
    try:
        with conn:
            conn.executemany("INSERT INTO resources (kind, id, parent, name, created, updated, state, doc, internal,"
                             " owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()


def run_scale(workdir: Path, quick: bool) -> list[Figure]:
    warmup, samples = (5, 50) if quick else (20, 200)
    state_dir = workdir / "volumes-2k"
    seeding = start_cimid(workdir, "volumes-2k-seed", state_dir)
    client = Client(seeding.port)
    volume, job = post(client, "/cimi/volumes", {"name": "v-seed", "volumeTemplate": {
        "volumeConfig": {"capacity": 1024}}})
    wait_job(client, job)
    client.close()
    seeding.stop()
    conn = sqlite3.connect(state_dir / "cimid.sqlite3")
    template = conn.execute("SELECT kind, id, parent, name, created, updated, state, doc, internal, owner "
                            "FROM resources WHERE kind = 'Volume'").fetchone()
    conn.execute("DELETE FROM resources WHERE kind = 'Volume'")
    conn.commit()
    conn.close()
    populate(state_dir / "cimid.sqlite3", template)
    # 125 volumes of 16 MiB (the target's figure), and 500 of 13..16 MiB (more to render, for scale).
    wanted = {"filter": 15360, "filter-500": 12288}
    expected = {kind: sum(1 for i in range(COUNT) if 1024 * (i % 16 + 1) > limit) for kind, limit in wanted.items()}
    queries = {kind: "/cimi/volumes?" + query_string({"$filter": f"capacity > {limit}"}) for kind, limit in wanted.items()}
    queries["cloudEntryPoint"] = "/cimi/cloudEntryPoint"
    latencies: dict[str, list[float]] = {kind: [] for kind in queries}
    problems: dict[str, str] = {}
    with ExitStack() as stack:
        server = start_cimid(workdir, "volumes-2k", state_dir, timeout=300)
        stack.callback(server.stop)
        client = Client(server.port)
        stack.callback(client.close)
        for round_number in range(warmup + samples):
            for kind, path in queries.items():
                started = time.perf_counter()
                status, _, body = client.request("GET", path)
                elapsed = (time.perf_counter() - started) * 1e3
                if round_number >= warmup:
                    latencies[kind].append(elapsed)
                if status != 200:
                    problems.setdefault(kind, f"GET {path} answered {status}")
                elif kind in wanted:
                    doc = json.loads(body)
                    got = [v["capacity"] for v in doc.get("volumes", [])]
                    if doc.get("count") != expected[kind] or len(got) != expected[kind] or min(got) <= wanted[kind]:
                        problems.setdefault(kind, f"GET {path}: count {doc.get('count')}, {len(got)} volumes, "
                                                  f"not {expected[kind]} all over {wanted[kind]} KB")
    for kind, path in queries.items():
        print(f"    {kind:16} median {median(latencies[kind]):6.2f}   p95 {percentile(latencies[kind], 95):6.2f}"
              f"   GET {path}")
    report_answers(problems, "each $filter gives exactly the volumes over its capacity")
    return [
        Figure.measured("2,000 Volumes: GET cloudEntryPoint median (baseline)", median(latencies["cloudEntryPoint"]),
                        "ms", 2),
        Figure.measured("2,000 Volumes: $filter=capacity > 15360 (125 listed) median", median(latencies["filter"]),
                        "ms", 2, "<=", 15),
        Figure.measured("2,000 Volumes: the same, p95", percentile(latencies["filter"], 95), "ms", 2),
        Figure.measured("2,000 Volumes: $filter=capacity > 12288 (500 listed) median",
                        median(latencies["filter-500"]), "ms", 2),
        Figure.answer("2,000 Volumes: answers of the $filter", list(problems.values())),
    ]
