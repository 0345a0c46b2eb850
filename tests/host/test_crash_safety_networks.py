"""Crash safety of Networks (the bridge driver, in the test network namespace): a host-profile cimid is
killed with SIGKILL in the middle of a network create and start, a stop, a port create, a forwarding-group
create and a delete, and restarted on the same state directory. After every restart, once the Jobs it
resumed have run: every Job is SUCCESS or FAILED with a statusMessage; each Network's state is what the host
has (a STARTED one: bridge up, its dnsmasq, its rules; a STOPPED one: bridge down, neither); and no bridge,
veth, dnsmasq, network directory or nftables rule of this cimid exists that no stored resource explains.

Also `cimid check --profile host` beside a running daemon: every network's parts present (exit 0), a bridge
removed by hand reported missing (exit 1), and present again once a restarted daemon rebuilt it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections import Counter

import pytest
from cimid_bridge import BridgeNetwork, dnsmasq, links, rules

from cimid.errors import DriverError

from .conftest import fresh_dir
from .netns import config, in_test_netns, off_loop  # noqa: F401 (fixture)
from .test_crash_safety import CIMI, Daemon, kill_when, last, poll

# A pool of its own: no other test's networks in this namespace overlap it.
BRIDGE = 'driver = "bridge"\nsubnet_pool = "10.232.0.0/16"\n'
STARTED_ON_HOST = {"bridge": "present", "link": "up", "dhcp": "present", "rules": "present"}
STOPPED_ON_HOST = {"bridge": "present", "link": "down", "dhcp": "off", "rules": "none"}


@pytest.fixture
async def root(libvirt_host):
    path = fresh_dir("crash-networks")
    yield path
    # A last driver adopting nothing removes whatever the daemon left, as cimid on an emptied store would.
    sweep = BridgeNetwork(config(path / "state"))
    await sweep.open()
    await sweep.adopt([], {}, {})
    await sweep.close()
    shutil.rmtree(path, ignore_errors=True)


def host_reader(d: Daemon) -> BridgeNetwork:
    """A driver on the daemon's state directory that reads the host alone (as `cimid check` does)."""
    return BridgeNetwork(config(d.state))


async def settled(d: Daemon) -> dict:
    """Wait until no Job is unfinished; every Job ended SUCCESS or FAILED with a reason."""
    async def idle():
        return not any(j["state"] in ("QUEUED", "RUNNING", "STOPPING") for j in (await d.get("jobs"))["jobs"])
    await poll(idle, "every Job ended", timeout=60)
    jobs = {last(j["id"]): j for j in (await d.get("jobs"))["jobs"]}
    for job in jobs.values():
        assert job["state"] in ("SUCCESS", "FAILED") and job.get("statusMessage"), job
    return jobs


async def check_networks(d: Daemon) -> dict:
    """Compare the store with the host (see the module's docstring); returns {"jobs", "networks", "ports",
    "groups"} keyed by id."""
    jobs = await settled(d)
    networks = {last(n["id"]): n for n in (await d.get("networks")).get("networks", [])}
    ports = {last(p["id"]): p for p in (await d.get("networkPorts")).get("networkPorts", [])}
    groups = {last(g["id"]): g for g in (await d.get("forwardingGroups")).get("forwardingGroups", [])}
    reader = host_reader(d)
    await reader.open()
    try:
        for id, network in networks.items():
            assert network["state"] in ("STARTED", "STOPPED"), network
            expected = STARTED_ON_HOST if network["state"] == "STARTED" else STOPPED_ON_HOST
            found = await reader.network(id)
            assert found == expected, (network["name"], network["state"], found, jobs)
        started = {id for id, n in networks.items() if n["state"] == "STARTED"}
        # Links: each one of this cimid's is a stored network's bridge or a stored port's veth end.
        for name, mark in off_loop(links.owned_links, reader.owner).items():
            kind, id = mark[len(reader.owner):].split(":", 1)
            if kind == "net":
                assert id in networks and networks[id]["host"]["bridge"]["value"] == name, f"orphan bridge {name}"
            else:
                assert kind == "port" and id in ports and name in links.port_names(id), f"orphan link {name} ({mark})"
        for id, port in ports.items():
            assert port["state"] == "STARTED", port
            inside = off_loop(links.link_state, links.port_names(id)[0])
            bridge = networks[last(port["network"]["href"])]["host"]["bridge"]["value"]
            assert inside is not None and inside["master"] == bridge, (port, inside)
        # Processes: one dnsmasq per started network, none else.
        serving = Counter(p.name for p in dnsmasq.running_under(reader.run_dir).values())
        assert serving == Counter(started), f"dnsmasq for {dict(serving)}, STARTED networks {started}"
        # Rules: each names a started network or a stored group of at least two started members.
        comments = set(await reader.nft.comments(reader.table))
        for comment in comments:
            kind, id = comment.split(":", 1)
            assert (kind == "net" and id in started) or (kind == "group" and id in groups), f"orphan rule {comment}"
        for id, group in groups.items():
            members = {last(n["href"]) for n in group.get("networks", [])}
            assert (f"group:{id}" in comments) == (len(members & started) >= 2), (group, comments)
        # The driver's own directories: one per stored network.
        assert {p.name for p in reader.run_dir.iterdir()} <= set(networks)
    finally:
        await reader.close()
    return {"jobs": jobs, "networks": networks, "ports": ports, "groups": groups}


def bridge_of(d: Daemon, network_id: str):
    """A predicate: the network's bridge exists (whatever its state)."""
    reader = host_reader(d)
    mark = links.alias(reader.owner, "net", network_id)
    return lambda: mark in links.owned_links(reader.owner).values()


def dnsmasq_of(d: Daemon, network_id: str):
    """A predicate: the network's dnsmasq runs."""
    run_dir = host_reader(d).run_dir
    return lambda: any(p.name == network_id for p in dnsmasq.running_under(run_dir).values())


def rules_of(d: Daemon, comment: str):
    """A predicate: a rule of the daemon's nftables table carries this comment."""
    reader = host_reader(d)
    reader.nft = rules.Nftables()
    listing = {"nftables": [{"list": {"table": {"family": "inet", "name": reader.table}}}]}

    def present() -> bool:
        try:
            found = reader.nft.run(listing).get("nftables", [])
        except DriverError:  # no table yet
            return False
        return any(item["rule"].get("comment") == comment for item in found if "rule" in item)
    return present


async def network(d: Daemon, name: str, initial: str = "STARTED") -> tuple[str, str]:
    """Ask for a network: (its Job, its URL)."""
    return await d.post("networks", {"name": name, "networkTemplate": {
        "initialState": initial, "networkConfig": {"networkType": "PRIVATE"}}})


async def made(d: Daemon, request) -> str:
    job, url = await request
    job = await d.wait_job(job)
    assert job["state"] == "SUCCESS", job
    return url


async def test_sigkill_in_network_create_start_stop_port_group_and_delete(root):
    d = Daemon(root, BRIDGE)
    try:
        await d.start()
        keep = await made(d, network(d, "keep"))

        # 1. A create killed once its bridge exists, before or while it starts (interrupted in its first
        #    or second step: the Network is gone with its bridge, or stands as the host has it).
        job, n1 = await network(d, "n1")
        await kill_when(d, bridge_of(d, last(n1)), "n1's bridge")
        await d.start()
        seen = await check_networks(d)
        if seen["jobs"][last(job)]["state"] == "FAILED":
            assert last(n1) not in seen["networks"] or seen["networks"][last(n1)]["state"] == "STOPPED"

        # 2. A create killed once its dnsmasq runs (in its start step: rules and link maybe not yet).
        job, n2 = await network(d, "n2")
        await kill_when(d, dnsmasq_of(d, last(n2)), "n2's dnsmasq")
        await d.start()
        await check_networks(d)

        # 3. A stop killed once the dnsmasq is gone (rules and link maybe not yet changed).
        job, _ = await d.post(f"{keep}/stop", {"resourceURI": f"{CIMI}/Action", "action": f"{CIMI}/action/stop"})
        keep_dnsmasq = dnsmasq_of(d, last(keep))
        await kill_when(d, lambda: not keep_dnsmasq(), "keep's dnsmasq stopped")
        await d.start()
        seen = await check_networks(d)
        if seen["networks"][last(keep)]["state"] == "STOPPED":  # the next steps want it STARTED
            await made(d, d.post(f"{keep}/start", {"resourceURI": f"{CIMI}/Action",
                                                    "action": f"{CIMI}/action/start"}))

        # 4. A port create killed once its veth pair exists (interrupted: the NetworkPort and its veth go,
        #    or it stands with its veth on the bridge).
        job, port = await d.post("networkPorts", {"networkPortTemplate": {"network": {"href": keep}}})
        inside = links.port_names(last(port))[0]
        await kill_when(d, lambda: links.link_alias(inside) is not None, "the port's veth")
        await d.start()
        seen = await check_networks(d)
        if seen["jobs"][last(job)]["state"] == "FAILED":
            assert last(port) not in seen["ports"]

        # 5. A forwarding-group create killed once its rules are in the table.
        n3 = await made(d, network(d, "n3"))
        job, group = await d.post("forwardingGroups", {"forwardingGroupTemplate": {
            "networks": [{"href": keep}, {"href": n3}]}})
        await kill_when(d, rules_of(d, f"group:{last(group)}"), "the group's rules")
        await d.start()
        await check_networks(d)

        # 6. A delete killed once the network's dnsmasq is gone (its rules and bridge maybe not yet).
        status, headers, body = await d.call("DELETE", n3)
        assert status == 202, body
        n3_dnsmasq = dnsmasq_of(d, last(n3))
        await kill_when(d, lambda: not n3_dnsmasq(), "n3's dnsmasq stopped")
        await d.start()
        seen = await check_networks(d)
        if seen["jobs"][last(headers["CIMI-Job-URI"])]["state"] == "SUCCESS":
            assert last(n3) not in seen["networks"]

        # Whatever survived can still be cleaned up through the API, leaving nothing.
        for url in [f"networkPorts/{p}" for p in seen["ports"]] + [f"forwardingGroups/{g}" for g in seen["groups"]]:
            await made(d, _deleted(d, url))
        for id in list(seen["networks"]):
            await made(d, _deleted(d, f"networks/{id}"))
        seen = await check_networks(d)
        assert seen["networks"] == {} and off_loop(links.owned_links, host_reader(d).owner) == {}
    finally:
        await d.close()


async def _deleted(d: Daemon, url: str) -> tuple[str, str]:
    status, headers, body = await d.call("DELETE", url)
    assert status == 202, (url, status, body)
    return headers["CIMI-Job-URI"], url


def check(d: Daemon) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cimid.cli", "check", "--profile", "host", "--config",
                           str(d.config), "--state-dir", str(d.state)], capture_output=True, text=True, timeout=120)


async def test_cimid_check_reports_each_networks_bridge_dnsmasq_and_rules(root):
    d = Daemon(root, BRIDGE)
    try:
        await d.start()
        a, b = await made(d, network(d, "a")), await made(d, network(d, "b"))
        c = await made(d, network(d, "c", initial="STOPPED"))
        ran = await asyncio.to_thread(check, d)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        for name, url in (("a", a), ("b", b)):
            assert (f"network {name} ({last(url)}, STARTED): bridge present, link up, dhcp present, "
                    "rules present") in ran.stdout, ran.stdout
        assert f"network c ({last(c)}, STOPPED): bridge present, link down, dhcp off, rules none" in ran.stdout
        assert "dnsmasq: 2 running" in ran.stdout, ran.stdout

        # a's bridge removed behind the daemon's back (what a reboot does before cimid starts again).
        bridge = (await d.get(a))["host"]["bridge"]["value"]
        off_loop(links.delete, bridge)
        ran = await asyncio.to_thread(check, d)
        assert ran.returncode == 1, ran.stdout + ran.stderr
        assert (f"network a ({last(a)}, STARTED): bridge missing, link down, dhcp present, rules present"
                in ran.stdout), ran.stdout
        assert (f"network b ({last(b)}, STARTED): bridge present, link up, dhcp present, "
                "rules present") in ran.stdout, ran.stdout

        # A restart rebuilds it from the store.
        await d.restart()
        await settled(d)
        ran = await asyncio.to_thread(check, d)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert (f"network a ({last(a)}, STARTED): bridge present, link up, dhcp present, "
                "rules present") in ran.stdout, ran.stdout
        for url in (a, b, c):
            await made(d, _deleted(d, url))
    finally:
        await d.close()
