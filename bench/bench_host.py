"""Benchmark 4 (host profile): real machines on qemu:///system under TCG, cimid against plain libvirt.

1. POST /cimi/machines: time to the 202, and to the create Job's SUCCESS, with a 100 MiB and a 10 GiB
   (sparse) image, interleaved. The overlay makes create cost the same for any image size.
2. POST (initialState STARTED) until the Machine is STARTED, against plain libvirt-python doing
   `qemu-img create` of an overlay, defineXML and create() of the very domain XML cimid defined.
3. Four machines created at once: time until the last is STARTED; every Job SUCCESS, no SQLite lock.

Needs root, libvirtd on qemu:///system (tests/host/setup-host.sh starts it) and the test guest image
(tests/host/build-guest-image.sh). Everything it makes lives in /var/lib/cimid-test/bench-* (QEMU's user
must traverse the path) or is a domain of its own, and is removed at the end, also after an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import libvirt

from common import BENCH_DIR, Client, Figure, Server, WrongAnswer, free_port, launch, median

URI = "qemu:///system"
TEST_ROOT = Path("/var/lib/cimid-test")
GUEST = TEST_ROOT / "guest" / "disk.qcow2"
HOST_DIR = BENCH_DIR.parent / "tests" / "host"
BASELINE_PREFIX = f"bench-host-{os.getpid()}-"  # the baseline's own domains
POLL = 0.01  # seconds between GETs while waiting for a state
CONFIG = """profile = "host"
[server]
log_requests = false
[compute]
uri = "qemu:///system"
virt_type = "qemu"
[catalogue]
seed = true
[network]
create_default = false
"""

libvirt.registerErrorHandler(lambda ctx, err: None, None)  # errors are raised; do not also print them


def ensure_host() -> None:
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, check=False).returncode != 0:
        print(f"  {URI} does not answer: running tests/host/setup-host.sh")
        subprocess.run(["bash", str(HOST_DIR / "setup-host.sh")], check=True)
    if not GUEST.exists():
        print(f"  building the test guest image in {GUEST.parent}")
        subprocess.run(["bash", str(HOST_DIR / "build-guest-image.sh"), str(GUEST.parent)], check=True)


def qemu_img(*args: str) -> str:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"qemu-img {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def virtual_size(path: Path) -> int:
    # -U: the disk may be in use by a running QEMU, which holds its write lock
    return json.loads(qemu_img("info", "-U", "--output=json", str(path)))["virtual-size"]


def start_cimid_host(workdir: Path, state_dir: Path) -> Server:
    config = workdir / "cimid-host.toml"
    config.write_text(CONFIG)
    port = free_port()
    argv = [sys.executable, "-m", "cimid.cli", "serve", "--config", str(config), "--state-dir", str(state_dir),
            "--listen", f"127.0.0.1:{port}"]
    return launch("host-cimid", argv, port, workdir / "host-cimid.log", "/cimi/cloudEntryPoint")


# ---------------------------------------------------------------- the API, synchronously

def post(client: Client, path: str, body: dict) -> tuple[float, str, str]:
    """POST that must answer 202 with a Job: (seconds to the answer, Location path, Job path)."""
    started = time.perf_counter()
    status, headers, raw = client.request("POST", path, body)
    elapsed = time.perf_counter() - started
    if status != 202 or "cimi-job-uri" not in headers or "location" not in headers:
        raise WrongAnswer(f"POST {path} answered {status} {raw[:300]!r}, not 202 with a Job and Location")
    return elapsed, urlsplit(headers["location"]).path, urlsplit(headers["cimi-job-uri"]).path


def wait_job(client: Client, job_path: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.get_json(job_path))["state"] != "SUCCESS":
        if job["state"] in ("FAILED", "STOPPED"):
            raise WrongAnswer(f"Job {job_path} ({job.get('action')}) ended {job['state']}: {job.get('statusMessage')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Job {job_path} still {job['state']} after {timeout:.0f} s")
        time.sleep(POLL)
    return job


def wait_state(client: Client, path: str, state: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (got := client.get_json(path)["state"]) != state:
        if got == "ERROR":
            raise WrongAnswer(f"{path} became ERROR while waiting for {state}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} still {got} after {timeout:.0f} s, not {state}")
        time.sleep(POLL)


def machine_body(base: str, image: str, initial: str) -> dict:
    return {"machineTemplate": {"machineImage": {"href": image},
                                "machineConfig": {"href": base + "machineConfigs/tiny"},
                                "initialState": initial}}


def delete_machines(client: Client, paths: list[str]) -> None:
    jobs = []
    for path in paths:
        status, headers, raw = client.request("DELETE", path)
        if status != 202 or "cimi-job-uri" not in headers:
            raise WrongAnswer(f"DELETE {path} answered {status} {raw[:300]!r}, not 202 with a Job")
        jobs.append(urlsplit(headers["cimi-job-uri"]).path)
    for job in jobs:
        wait_job(client, job)


def import_image(client: Client, name: str, source: Path) -> str:
    """Import `source` over file://; the MachineImage's URL once its Job succeeded."""
    _, path, job = post(client, "/cimi/machineImages", {"name": name, "imageLocation": source.as_uri()})
    wait_job(client, job)
    return f"http://127.0.0.1:{client.port}{path}"


# ---------------------------------------------------------------- the benchmarks

def bench_create(client: Client, base: str, images: dict[str, str], state_dir: Path, rounds: int) -> list[Figure]:
    answer: dict[str, list[float]] = {size: [] for size in images}
    done: dict[str, list[float]] = {size: [] for size in images}
    made = []
    print(f"  {rounds} interleaved rounds of POST /cimi/machines (machineConfigs/tiny, STOPPED), one at a time; "
          "each waits for its create Job")
    for round_number in range(1, rounds + 1):
        for size, image in images.items():
            started = time.perf_counter()
            seconds, machine, job = post(client, "/cimi/machines", machine_body(base, image, "STOPPED"))
            wait_job(client, job)
            done[size].append(time.perf_counter() - started)
            answer[size].append(seconds)
            made.append(machine)
            if round_number == 1:  # the boot disk is an overlay of the image's size (at least the config's 1 GiB)
                disk = state_dir / "disks" / machine.rsplit("/", 1)[1] / "disk0.qcow2"
                print(f"    {size} image: boot disk {disk.name} {virtual_size(disk) / 2**30:.2f} GiB virtual, "
                      f"{disk.stat().st_blocks * 512 / 2**10:.0f} KiB on disk")
        print(f"    round {round_number}: " + "   ".join(
            f"{size}: 202 in {answer[size][-1] * 1e3:5.1f} ms, Job SUCCESS in {done[size][-1] * 1e3:6.0f} ms"
            for size in images))
    delete_machines(client, made)
    small, large = images
    m = {size: (median(answer[size]) * 1e3, median(done[size]) * 1e3) for size in images}
    ratio_answer, ratio_done = m[large][0] / m[small][0], m[large][1] / m[small][1]
    print(f"  median: {small} 202 {m[small][0]:.1f} ms, Job {m[small][1]:.0f} ms; "
          f"{large} 202 {m[large][0]:.1f} ms, Job {m[large][1]:.0f} ms; "
          f"{large}/{small}: 202 {ratio_answer:.2f}, Job {ratio_done:.2f}")
    return [
        Figure.measured(f"Host create: POST -> 202, {small} image", m[small][0], "ms", 1),
        Figure.measured(f"Host create: POST -> 202, {large} image", m[large][0], "ms", 1),
        Figure.measured(f"Host create: 202 latency {large} / {small}", ratio_answer, "", 2, "<=", 1.2),
        Figure.measured(f"Host create: POST -> Job SUCCESS, {small} image", m[small][1], "ms", 0),
        Figure.measured(f"Host create: POST -> Job SUCCESS, {large} image", m[large][1], "ms", 0),
        Figure.measured(f"Host create: Job SUCCESS {large} / {small}", ratio_done, "", 2),
    ]


class PlainLibvirt:
    """The baseline: what cimid does to start a machine, by hand with libvirt-python: an overlay on the
    cached image (qemu-img create), then defineXML and create() of the domain XML cimid defined, renamed
    and pointed at files of our own. Not timed: the seed ISO (copied from cimid's machine, once)."""

    def __init__(self, own: Path, image_file: Path):
        self.own, self.image_file = own, image_file
        own.mkdir(mode=0o755)
        self.conn = libvirt.open(URI)
        self.template, self.disk_size = "", 0

    def learn(self, state_dir: Path, machine_id: str) -> None:
        disks = state_dir / "disks" / machine_id
        self.template = self.conn.lookupByName("cimid-" + machine_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        shutil.copy(disks / "seed.iso", self.own / "seed.iso")
        self.disk_size = virtual_size(disks / "disk0.qcow2")

    def xml(self, name: str) -> str:
        root = ET.fromstring(self.template)
        root.find("name").text = name
        for tag in ("uuid", "title"):
            if (element := root.find(tag)) is not None:
                root.remove(element)
        for disk in root.iter("disk"):
            source = self.own / (f"{name}.qcow2" if disk.get("device") == "disk" else "seed.iso")
            disk.find("source").set("file", str(source))
        for log in root.iter("log"):
            log.set("file", str(self.own / f"{name}.console.log"))
        return ET.tostring(root, encoding="unicode")

    def start(self, name: str) -> float:
        """Start a machine `name`; the seconds from qemu-img's start until create() returned."""
        xml = self.xml(name)
        started = time.perf_counter()
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(self.image_file), "-F", "qcow2",
                 str(self.own / f"{name}.qcow2"), str(self.disk_size))
        self.conn.defineXML(xml).create()
        return time.perf_counter() - started

    def remove(self, name: str) -> None:
        dom = self.conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        for path in self.own.glob(f"{name}.*"):
            path.unlink()

    def close(self) -> None:
        self.conn.close()


def bench_start(client: Client, base: str, image: str, plain: PlainLibvirt, state_dir: Path,
                rounds: int) -> tuple[list[Figure], float]:
    took: dict[str, list[float]] = {"libvirt": [], "cimid": []}

    def cimid() -> None:
        started = time.perf_counter()
        _, machine, job = post(client, "/cimi/machines", machine_body(base, image, "STARTED"))
        wait_state(client, machine, "STARTED")
        took["cimid"].append(time.perf_counter() - started)
        wait_job(client, job)
        if not plain.template:  # the first machine shows what to do by hand
            plain.learn(state_dir, machine.rsplit("/", 1)[1])
        delete_machines(client, [machine])

    def by_hand(round_number: int) -> None:
        name = f"{BASELINE_PREFIX}{round_number}"
        took["libvirt"].append(plain.start(name))
        plain.remove(name)

    print(f"  {rounds} interleaved rounds (alternating which goes first): cimid POST (STARTED) until GET says "
          f"STARTED (polled every {POLL * 1e3:.0f} ms), against qemu-img create + defineXML + create() of the "
          "same domain XML")
    cimid()  # warm-up: QEMU's binary and libvirt's caches; also yields the XML the baseline uses
    took["cimid"].clear()
    for round_number in range(1, rounds + 1):
        steps = [cimid, lambda n=round_number: by_hand(n)]
        for step in steps if round_number % 2 else reversed(steps):
            step()
        print(f"    round {round_number}: cimid {took['cimid'][-1] * 1e3:5.0f} ms   "
              f"libvirt {took['libvirt'][-1] * 1e3:5.0f} ms   ratio {took['cimid'][-1] / took['libvirt'][-1]:.2f}")
    cimid_ms, libvirt_ms = median(took["cimid"]) * 1e3, median(took["libvirt"]) * 1e3
    ratio = cimid_ms / libvirt_ms
    print(f"  median: cimid {cimid_ms:.0f} ms, plain libvirt {libvirt_ms:.0f} ms, cimid/libvirt {ratio:.2f}")
    return [
        Figure.measured("Host start: qemu-img + defineXML + create(), plain libvirt (baseline)", libvirt_ms, "ms", 0),
        Figure.measured("Host start: cimid POST -> STARTED", cimid_ms, "ms", 0),
        Figure.measured("Host start: cimid / plain libvirt", ratio, "", 2, "<=", 1.3),
    ], cimid_ms


def at_once(count: int, work) -> list[float]:
    """Run work(index) -> end time in `count` threads released together; the end times, from the release.
    A failure is raised once all threads are done."""
    barrier, begun, ended, errors = threading.Barrier(count), [0.0] * count, [0.0] * count, []

    def one(index: int) -> None:
        try:
            barrier.wait()
            begun[index] = time.perf_counter()
            ended[index] = work(index)
        except Exception as exc:  # noqa: BLE001 - raised below, after the others finished
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sorted(end - min(begun) for end in ended)


def cimid_at_once(server: Server, base: str, image: str, count: int) -> tuple[list[float], list[float]]:
    """`count` cimid machines POSTed at once: when each was STARTED for the API, and when libvirt already
    had it running (polled every 20 ms beside the clients); then they are deleted."""
    machines, running, done = [""] * count, {}, threading.Event()

    def work(index: int) -> float:
        client = Client(server.port, timeout=180)
        try:
            _, machines[index], job = post(client, "/cimi/machines", machine_body(base, image, "STARTED"))
            wait_state(client, machines[index], "STARTED")
            ended = time.perf_counter()
            wait_job(client, job)
            return ended
        finally:
            client.close()

    def watch(conn: libvirt.virConnect) -> None:
        while not done.wait(0.02):
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
                running.setdefault(dom.name(), time.perf_counter())

    conn = libvirt.open(URI)
    watcher = threading.Thread(target=watch, args=(conn,))
    watcher.start()
    released = time.perf_counter()
    try:
        started = at_once(count, work)
    finally:
        done.set()
        watcher.join()
        conn.close()
        client = Client(server.port)
        try:
            delete_machines(client, [m for m in machines if m])
        finally:
            client.close()
    ours = {"cimid-" + m.rsplit("/", 1)[1] for m in machines}
    return started, sorted(t - released for name, t in running.items() if name in ours)


def bench_concurrent(server: Server, base: str, image: str, plain: PlainLibvirt, alone_ms: float,
                     rounds: int, count: int = 4) -> list[Figure]:
    print(f"  {rounds} interleaved rounds: {count} POSTs (STARTED) at once, one thread and connection each, "
          f"until each is STARTED; against {count} threads starting by hand on one libvirt connection")
    took: dict[str, list[float]] = {"libvirt": [], "cimid": []}
    for round_number in range(1, rounds + 1):
        names = [f"{BASELINE_PREFIX}c{round_number}-{i}" for i in range(count)]
        for who in (["cimid", "libvirt"] if round_number % 2 else ["libvirt", "cimid"]):
            if who == "cimid":
                started, running = cimid_at_once(server, base, image, count)
                took["cimid"].append(started[-1])
                shown = (f"cimid STARTED after {', '.join(f'{t * 1e3:.0f}' for t in started)} ms "
                         f"(running in libvirt after {', '.join(f'{t * 1e3:.0f}' for t in running)} ms)")
            else:
                def by_hand(index: int, names: list[str] = names) -> float:
                    plain.start(names[index])
                    return time.perf_counter()
                try:
                    ended = at_once(count, by_hand)
                finally:
                    for name in names:
                        try:
                            plain.remove(name)
                        except libvirt.libvirtError:
                            pass  # never defined: its start failed, and that is raised
                took["libvirt"].append(ended[-1])
                shown_libvirt = f"libvirt {', '.join(f'{t * 1e3:.0f}' for t in ended)} ms"
        print(f"    round {round_number}: {shown}; {shown_libvirt}")
    cimid_ms, libvirt_ms = median(took["cimid"]) * 1e3, median(took["libvirt"]) * 1e3
    print(f"  median time until the last is STARTED: cimid {cimid_ms:.0f} ms, plain libvirt {libvirt_ms:.0f} ms, "
          f"ratio {cimid_ms / libvirt_ms:.2f} (one machine alone, cimid: {alone_ms:.0f} ms)")
    server.log.flush()
    locked = server.log_path.read_text(errors="replace").count("database is locked")
    problems = [f"the cimid log says 'database is locked' {locked} times"] if locked else []
    print(f"  every machine STARTED and every Job SUCCESS (or this benchmark failed); "
          f"'database is locked' in cimid's log: {locked} times")
    return [
        Figure.measured(f"Host: {count} at once, last started, plain libvirt (baseline)", libvirt_ms, "ms", 0),
        Figure.measured(f"Host: {count} at once, last STARTED, cimid", cimid_ms, "ms", 0),
        Figure.measured(f"Host: {count} at once, cimid / plain libvirt", cimid_ms / libvirt_ms, "", 2),
        Figure.answer(f"Host: {count} at once, all STARTED, Jobs SUCCESS, no 'database is locked'", problems),
    ]


# ---------------------------------------------------------------- set-up and clean-up

def remove_our_domains(state_dir: Path) -> list[str]:
    """Destroy and undefine the baseline's domains and cimid's domains on this state dir (only ours:
    other cimid instances, e.g. the host tests, may run meanwhile)."""
    removed = []
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains():
            name = dom.name()
            if name.startswith(BASELINE_PREFIX) or (name.startswith("cimid-") and str(state_dir) in dom.XMLDesc(0)):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
                removed.append(name)
    finally:
        conn.close()
    return removed


def other_domains(state_dir: Path) -> list[str]:
    conn = libvirt.open(URI)
    try:
        return [dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
                if not dom.name().startswith(BASELINE_PREFIX) and str(state_dir) not in dom.XMLDesc(0)]
    finally:
        conn.close()


def cleanup(state_dir: Path) -> None:
    removed = remove_our_domains(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    if removed:
        print(f"  (cleaned up the domains {', '.join(removed)})")


def run(workdir: Path, quick: bool) -> list[Figure]:
    ensure_host()
    rounds_create, rounds_start, rounds_together = (4, 3, 1) if quick else (10, 5, 3)
    state_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=TEST_ROOT))
    state_dir.chmod(0o755)
    figures: list[Figure] = []
    with ExitStack() as stack:
        stack.callback(cleanup, state_dir)  # last: after cimid stopped
        sources = {}
        for size in ("100M", "10G"):  # the guest image, grown (sparse) to the size
            sources[size] = state_dir / f"guest-{size}.qcow2"
            qemu_img("convert", "-O", "qcow2", str(GUEST), str(sources[size]))
            qemu_img("resize", "-q", str(sources[size]), size)
        server = start_cimid_host(workdir, state_dir)
        stack.callback(server.stop)

        def show_log(kind, exc, tb) -> None:  # on the way out of an error, while the log still exists
            if exc is not None:
                print(f"  cimid's log, last lines:\n{server.log_tail(30)}")
        stack.push(show_log)
        others = other_domains(state_dir)
        if others:
            print(f"  note: {len(others)} other domains run on this host meanwhile (noise): {', '.join(others)}")
        client = Client(server.port, timeout=180)
        stack.callback(client.close)
        base = f"http://127.0.0.1:{server.port}/cimi/"
        names = {"100M": "100 MiB", "10G": "10 GiB"}
        images = {names[size]: import_image(client, f"bench-{size}", src) for size, src in sources.items()}
        print(f"  cimid (host profile, {URI}, TCG) on {state_dir}; imported "
              + ", ".join(f"{size} ({sources[s].stat().st_size / 2**20:.1f} MiB on disk)"
                          for s, size in names.items()))

        print("\n  4a. POST /cimi/machines -> 202 and -> create Job SUCCESS, by image size")
        figures += bench_create(client, base, images, state_dir, rounds_create)
        small = images["100 MiB"]
        plain = PlainLibvirt(state_dir / "by-hand", state_dir / "images" / f"{small.rsplit('/', 1)[1]}.qcow2")
        stack.callback(plain.close)
        print("\n  4b. POST -> STARTED, cimid against plain libvirt")
        got, alone_ms = bench_start(client, base, small, plain, state_dir, rounds_start)
        figures += got
        print("\n  4c. Four machines created at once")
        figures += bench_concurrent(server, base, small, plain, alone_ms, rounds_together)

        jobs = client.get_json("/cimi/jobs").get("jobs", [])
        unsuccessful = [f"{j.get('action')} {j['state']}: {j.get('statusMessage')}" for j in jobs
                        if j["state"] != "SUCCESS"]
        print(f"\n  Jobs of the whole run: {len(jobs)}, not SUCCESS: {len(unsuccessful)}"
              + "".join(f"\n    {u}" for u in unsuccessful))
        others = other_domains(state_dir)
        if others:
            print(f"  note: {len(others)} other domains run on this host now: {', '.join(others)}")
        left = remove_our_domains(state_dir) + [f"disks/{p.name}" for p in (state_dir / "disks").iterdir()]
        if left:
            print(f"  !!!!! left behind after every Machine was deleted: {', '.join(left)}")
    return figures
