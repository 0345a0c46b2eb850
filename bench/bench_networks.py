"""Benchmark 9 (host, root): the bridge network driver on this kernel, in a network namespace of its own.

1. Network create -> STARTED through the driver (bridge, host address, dnsmasq serving DHCP, nftables
   rules) against the same bridge made with plain pyroute2 calls plus a dnsmasq start on the same
   configuration, interleaved. Target: <= 1.5x. Also, beside them, the whole way through the API (a
   `cimid serve --profile host` in the namespace: POST, the Job, its commits, polled every 5 ms).
2. Reconcile 100 started networks: a new driver's adopt() after a daemon restart (everything still there;
   the dnsmasq processes are replaced by children of the new daemon), and after a reboot (no bridge, no
   rules, no dnsmasq). Target: < 5 s.
3. Ping round trip between two namespaces joined through a cimid bridge (each the operator's end of a
   NetworkPort) against two namespaces joined by a plain veth pair. Guests are not used here: under TCG
   their emulation would be most of what is measured.

run() re-executes this file inside a namespace it makes (`ip netns exec`), so every bridge and address
exists there only, and removes the namespace afterwards, also after an error.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import Figure, median

ROUNDS_CREATE, ROUNDS_PING = 20, 50


def run(workdir: Path, quick: bool) -> list[Figure]:
    name = f"cimid-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, __file__, "--inner",
                               "--quick" if quick else "--full"], capture_output=True, text=True, check=False)
        print(done.stdout, end="")
        if done.returncode:
            raise RuntimeError(f"the benchmark failed inside {name}:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    ratio = result["driver_s"] / result["plain_s"]
    return [
        Figure.measured("Network create -> STARTED (driver)", result["driver_s"] * 1000, "ms", 1),
        Figure.measured("  same bridge + dnsmasq by hand (pyroute2)", result["plain_s"] * 1000, "ms", 1),
        Figure.measured("  driver / by hand", ratio, "x", 2, "<=", 1.5),
        Figure.measured("  one nft transaction alone (the network's rules)", result["nft_s"] * 1000, "ms", 1),
        Figure.measured("  through the API: POST -> Job SUCCESS (STARTED)", result["api_s"] * 1000, "ms", 1),
        Figure.measured("  API / by hand", result["api_s"] / result["plain_s"], "x", 2),
        Figure.measured("Reconcile 100 networks after a restart", result["adopt_restart_s"], "s", 2, "<=", 5),
        Figure.measured("Reconcile 100 networks after a reboot", result["adopt_reboot_s"], "s", 2, "<=", 5),
        Figure.measured("Ping RTT across a cimid bridge", result["rtt_bridge_ms"], "ms", 3),
        Figure.measured("  ping RTT across a plain veth pair", result["rtt_veth_ms"], "ms", 3),
    ]


# ---------------------------------------------------------------- inside the namespace

def spec(i: int, **kw):
    from cimid.hookspecs import NetworkSpec, Reservation
    return NetworkSpec(network_id=f"b{i}", bridge=f"cimidb{i}", cidr=f"10.{100 + i // 250}.{i % 250}.0/24",
                       gateway=f"10.{100 + i // 250}.{i % 250}.1",
                       reservations=(Reservation("52:54:00:00:00:01", f"10.{100 + i // 250}.{i % 250}.10"),), **kw)


def config(state_dir: Path):
    from cimid import config as cimid_config
    cfg = cimid_config.load(None, profile="host", state_dir=state_dir)
    cfg.sections["network"]["driver"] = "bridge"
    return cfg


async def driver_create(driver, i: int) -> float:
    started = time.perf_counter()
    await driver.create_network(spec(i))
    await driver.start_network(f"b{i}")
    elapsed = time.perf_counter() - started
    await driver.delete_network(f"b{i}")
    return elapsed


async def plain_create(i: int, directory: Path) -> float:
    """What the driver does for one network, with nothing around it: pyroute2 and a dnsmasq start."""
    from cimid_bridge import dnsmasq
    from pyroute2 import IPRoute
    s = spec(i)

    def bridge():
        with IPRoute() as ipr:
            ipr.link("add", ifname=s.bridge, kind="bridge")
            index = ipr.link_lookup(ifname=s.bridge)[0]
            ipr.addr("add", index=index, address=s.gateway, prefixlen=24)
            ipr.link("set", index=index, state="up")

    def remove():
        with IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=s.bridge)[0])

    conf = dnsmasq.write_files(s, directory / s.network_id, [])  # the same configuration, written beforehand
    started = time.perf_counter()
    await asyncio.to_thread(bridge)
    proc = await dnsmasq.start("dnsmasq", conf)
    elapsed = time.perf_counter() - started
    await proc.stop()
    await asyncio.to_thread(remove)
    return elapsed


API_CONFIG = "[compute]\ndriver = \"none\"\n[network]\ndriver = \"bridge\"\ncreate_default = false\n"


def api_server(state_dir: Path):
    """`cimid serve --profile host` with the bridge network driver (no compute), in this namespace."""
    from common import cimid_config, free_port, launch
    port = free_port()
    config = cimid_config(state_dir.parent, "networks-api", extra_config=API_CONFIG)
    argv = [sys.executable, "-m", "cimid.cli", "serve", "--config", str(config), "--profile", "host",
            "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}"]
    return launch("networks-api", argv, port, state_dir.parent / "networks-api.log", "/cimi/cloudEntryPoint")


def api_create(client, i: int) -> float:
    """POST a PRIVATE network (the same subnet as spec(i)) and wait, polling its Job, until it is STARTED;
    then delete it (not timed)."""
    from bench_volumes import delete, post, wait_job
    started = time.perf_counter()
    network, job = post(client, "/cimi/networks", {"name": f"b{i}", "networkTemplate": {"networkConfig": {
        "networkType": "PRIVATE", "properties": {"cidr": spec(i).cidr}}}})
    wait_job(client, job)
    elapsed = time.perf_counter() - started
    if (state := client.get_json(network)["state"]) != "STARTED":
        raise RuntimeError(f"network {network} is {state} after its create Job")
    delete(client, network)
    return elapsed


async def nft_alone(nft, i: int) -> float:
    """What the driver adds to the baseline: one nftables transaction installing a network's rules (the
    same table it writes), then its removal (not timed)."""
    started = time.perf_counter()
    await nft.apply("cimid_bench", [spec(i)], {})
    elapsed = time.perf_counter() - started
    await nft.apply("cimid_bench", [], {})
    return elapsed


async def reconcile(state_dir: Path, count: int) -> tuple[float, float]:
    from cimid_bridge import BridgeNetwork, dnsmasq, links
    specs = [(spec(i), True) for i in range(count)]
    first = BridgeNetwork(config(state_dir))
    await first.open()
    for s, _ in specs:
        await first.create_network(s)
        await first.start_network(s.network_id)
    await first.close()  # a restart: links, rules and dnsmasq processes stay
    second = BridgeNetwork(config(state_dir))
    await second.open()
    started = time.perf_counter()
    await second.adopt(specs, {}, {})
    after_restart = time.perf_counter() - started
    await check_all(second, specs)
    await second.close()
    # A reboot: nothing of it is left but the store (and the driver's files).
    for pid in dnsmasq.running_under(second.run_dir):
        await dnsmasq.kill(pid)
    for ifname in await asyncio.to_thread(links.owned_links, second.owner):
        await asyncio.to_thread(links.delete, ifname)
    subprocess.run(["nft", "delete", "table", "inet", second.table], check=True)
    third = BridgeNetwork(config(state_dir))
    await third.open()
    started = time.perf_counter()
    await third.adopt(specs, {}, {})
    after_reboot = time.perf_counter() - started
    await check_all(third, specs)
    await third.forget()
    await third.close()
    return after_restart, after_reboot


async def check_all(driver, specs) -> None:
    for s, _ in specs:
        got = await driver.network(s.network_id)
        if got != {"bridge": "present", "link": "up", "dhcp": "present", "rules": "present"}:
            raise RuntimeError(f"after adopt, network {s.network_id} is {got}")


def ping_rtt(namespace: str, address: str, count: int) -> float:
    done = subprocess.run(["ip", "netns", "exec", namespace, "busybox", "ping", "-c", str(count), "-i", "0.05",
                           "-q", address], capture_output=True, text=True, check=True)
    return float(re.search(r"= [\d.]+/([\d.]+)/", done.stdout).group(1))


async def rtt(state_dir: Path, count: int) -> tuple[float, float]:
    from cimid_bridge import BridgeNetwork
    from pyroute2 import IPRoute, netns
    spaces = [f"cimid-bench-{x}-{uuid.uuid4().hex[:4]}" for x in "abcd"]
    for n in spaces:
        netns.create(n)
    driver = BridgeNetwork(config(state_dir))
    await driver.open()
    try:
        from cimid.hookspecs import NetworkSpec
        await driver.create_network(NetworkSpec("rtt", "cimidrtt", cidr="10.99.0.0/24", gateway="10.99.0.1", dhcp=False))
        await driver.start_network("rtt")
        peers = [(await driver.create_port("rtt", f"rtt{i}"))["peer"] for i in range(2)]

        def wire():
            with IPRoute() as ipr:
                ipr.link("add", ifname="cimidbv0", kind="veth", peer="cimidbv1")
                for ifname, space in zip([*peers, "cimidbv0", "cimidbv1"], spaces, strict=True):
                    ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], net_ns_fd=space)
            for ifname, space, address in zip([*peers, "cimidbv0", "cimidbv1"], spaces,
                                              ("10.99.0.10", "10.99.0.11", "10.98.0.10", "10.98.0.11"), strict=True):
                with IPRoute(netns=space) as ipr:
                    index = ipr.link_lookup(ifname=ifname)[0]
                    ipr.addr("add", index=index, address=address, prefixlen=24)
                    ipr.link("set", index=index, state="up")
        await asyncio.to_thread(wire)
        ping_rtt(spaces[0], "10.99.0.11", 3)  # ARP and caches first
        ping_rtt(spaces[2], "10.98.0.11", 3)
        bridge, veth = [], []
        for _ in range(5):  # interleaved
            bridge.append(ping_rtt(spaces[0], "10.99.0.11", count))
            veth.append(ping_rtt(spaces[2], "10.98.0.11", count))
        return median(bridge), median(veth)
    finally:
        await driver.forget()
        await driver.close()
        for n in spaces:
            netns.remove(n)


async def inner(quick: bool) -> dict:
    from cimid_bridge import BridgeNetwork
    state_dir = Path(tempfile.mkdtemp(prefix="cimid-bench-net-"))
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        driver = BridgeNetwork(config(state_dir))
        await driver.open()
        rounds = 6 if quick else ROUNDS_CREATE
        by_driver, by_hand, by_nft, by_api = [], [], [], []
        from common import Client
        server = api_server(state_dir / "api")
        client = Client(server.port)
        try:
            for i in range(rounds):  # interleaved, so all see the same machine
                by_driver.append(await driver_create(driver, i))
                by_hand.append(await plain_create(i, state_dir / "plain"))
                by_nft.append(await nft_alone(driver.nft, i))
                by_api.append(await asyncio.to_thread(api_create, client, i))
        finally:
            client.close()
            server.stop()
        await driver.close()
        print(f"  create -> STARTED, medians of {rounds}: driver {median(by_driver) * 1000:.1f} ms, "
              f"by hand {median(by_hand) * 1000:.1f} ms; one nft transaction alone {median(by_nft) * 1000:.1f} ms; "
              f"through the API {median(by_api) * 1000:.1f} ms")
        restart, reboot = await reconcile(state_dir / "reconcile", 100)
        print(f"  reconcile 100 networks: after a restart {restart:.2f} s, after a reboot {reboot:.2f} s")
        rtt_bridge, rtt_veth = await rtt(state_dir / "rtt", 20 if quick else ROUNDS_PING)
        print(f"  ping RTT: across a cimid bridge {rtt_bridge:.3f} ms, across a veth pair {rtt_veth:.3f} ms")
        return {"driver_s": median(by_driver), "plain_s": median(by_hand), "nft_s": median(by_nft),
                "api_s": median(by_api),
                "adopt_restart_s": restart,
                "adopt_reboot_s": reboot, "rtt_bridge_ms": rtt_bridge, "rtt_veth_ms": rtt_veth}
    finally:
        from cimid_bridge import dnsmasq
        for pid in dnsmasq.running_under(state_dir):  # what an error left running (the namespace goes anyway)
            await dnsmasq.kill(pid)
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__" and "--inner" in sys.argv:
    print(json.dumps(asyncio.run(inner("--quick" in sys.argv))))
