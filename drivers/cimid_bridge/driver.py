"""The `bridge` network driver: a Network is a Linux bridge cimid owns (pyroute2), with one supervised
dnsmasq for DHCP, and its share of cimid's nftables table (isolation, NAT, forwarding groups).

State the host forgets on reboot (links, processes, rules) is rebuilt by `adopt` from the specs the
service keeps in the store; what the driver keeps itself is only a directory per network (dnsmasq's
configuration, reservations and leases) under `<state_dir>/networks`."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cimid.errors import DriverError

from . import dnsmasq, links, rules

Alarm = Callable[[str, str], None]  # (network id, what happened)
RESTART_BACKOFF = 1.0  # seconds between restarts of a dnsmasq that keeps dying


class BridgeNetwork:
    name = "bridge"

    def __init__(self, config):
        self.run_dir = Path(config.state_dir).resolve() / "networks"
        # What this cimid makes is marked with its instance (its state directory), so two cimids on one
        # host (tests, a second daemon) never take each other's links or rules for orphans of their own.
        instance = hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:8]
        self.owner = f"cimid:{instance}:"  # the alias prefix of its links
        self.table = f"cimid_{instance}"  # its nftables table (inet)
        self.dnsmasq = "dnsmasq"
        self.nft: rules.Nftables | None = None  # libnftables, loaded by open()
        self._specs: dict = {}  # network id -> NetworkSpec
        self._running: set[str] = set()
        self._ports: dict[str, str] = {}  # port id -> network id
        self._groups: dict[str, list[str]] = {}
        self._daemons: dict[str, asyncio.subprocess.Process] = {}
        self._supervisors: dict[str, asyncio.Task] = {}
        self._watchers: list[Alarm] = []
        self._lock = asyncio.Lock()  # one change of links, processes and rules at a time

    # ---------------------------------------------------------------- lifecycle of the driver

    async def open(self) -> None:
        if shutil.which(self.dnsmasq) is None:
            raise DriverError(f"the bridge network driver needs {self.dnsmasq} (Debian: dnsmasq-base)", unavailable=True)
        try:
            self.nft = rules.Nftables()
        except DriverError as exc:
            raise DriverError(f"the bridge network driver needs libnftables: {exc}", unavailable=True) from None
        try:
            await asyncio.to_thread(links.owned_links, self.owner)
        except OSError as exc:
            raise DriverError(f"netlink refused: {exc} (the bridge driver needs CAP_NET_ADMIN)", unavailable=True) from None
        try:  # a kernel without nf_tables fails here, not in the middle of start-up
            await self.nft.comments(self.table)
        except DriverError as exc:
            raise DriverError(f"nftables does not answer: {exc}", unavailable=True) from None
        self.run_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Stop supervising; bridges, rules and dnsmasq stay up for the guests (adopt takes them back)."""
        for task in self._supervisors.values():
            task.cancel()
        self._supervisors.clear()

    async def health(self) -> dict[str, str]:
        owned = await asyncio.to_thread(links.owned_links, self.owner)
        found = await self.nft.comments(self.table)
        return {"bridges": f"{sum(1 for a in owned.values() if a.startswith(self.owner + 'net:'))} made by cimid",
                # read from /proc: `cimid check` runs beside the daemon whose children they are
                "dnsmasq": f"{len(await asyncio.to_thread(dnsmasq.running_under, self.run_dir))} running",
                "nftables": f"table inet {self.table}, {len(found)} rules" if found else f"table inet {self.table} absent"}

    def watch(self, callback: Alarm) -> None:
        self._watchers.append(callback)

    # ---------------------------------------------------------------- networks

    def started_bridges(self) -> dict[str, str]:
        """{bridge name: network id} of the started networks (what BridgeTraffic measures)."""
        return {self._specs[n].bridge: n for n in self._running if n in self._specs}

    def _dir(self, network_id: str) -> Path:
        return self.run_dir / network_id

    def _spec(self, network_id: str):
        spec = self._specs.get(network_id)
        if spec is None:
            raise DriverError(f"there is no network {network_id}")
        return spec

    async def host_subnets(self) -> dict[str, str]:
        return await asyncio.to_thread(links.foreign_subnets, {spec.bridge for spec in self._specs.values()})

    async def create_network(self, spec) -> None:
        """Make the bridge (down) and dnsmasq's files (its rules come with its start); refuses a clashing
        link name, leaving nothing."""
        async with self._lock:
            if self._specs.get(spec.network_id) == spec:  # a Job run again after a restart
                await self._make(spec)
                return
            if spec.network_id in self._specs:
                raise DriverError(f"there is already a network {spec.network_id}")
            clash = next((s for s in self._specs.values() if s.bridge == spec.bridge), None)
            if clash is not None:
                raise DriverError(f"the bridge name {spec.bridge} is taken by network {clash.network_id}")
            await self._make(spec)
            self._specs[spec.network_id] = spec

    async def _make(self, spec) -> None:
        made = await asyncio.to_thread(links.make_bridge, spec.bridge, links.alias(self.owner, "net", spec.network_id),
                                       spec.mtu, spec.gateway, spec.cidr)
        try:
            if spec.bridged and spec.uplink:
                await asyncio.to_thread(links.enslave, spec.uplink, spec.bridge)
            if _serves_dhcp(spec):
                await self._write_dnsmasq(spec)
        except BaseException:
            if made:
                await asyncio.to_thread(links.delete, spec.bridge)
            raise

    async def start_network(self, network_id: str) -> None:
        async with self._lock:
            spec = self._spec(network_id)
            daemon = self._daemons.get(network_id)
            if network_id in self._running and (daemon is not None and daemon.alive() or not _serves_dhcp(spec)):
                await asyncio.to_thread(links.set_up, spec.bridge, True)
                return  # started already (a Job run again after a restart)
            self._running.add(network_id)
            # dnsmasq starts beside the rules and the link (it binds to the bridge's address, down or up),
            # and the link comes up only once its rules are in place.
            jobs = [self._rules_then_up(spec.bridge)] + ([self._start_dnsmasq(spec)] if _serves_dhcp(spec) else [])
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                self._running.discard(network_id)
                await asyncio.gather(self._stop_dnsmasq(network_id), self._apply_rules(), return_exceptions=True)
                await asyncio.to_thread(links.set_up, spec.bridge, False)
                raise failure

    async def _rules_then_up(self, bridge: str) -> None:
        await self._apply_rules()
        await asyncio.to_thread(links.set_up, bridge, True)

    async def stop_network(self, network_id: str) -> None:
        async with self._lock:
            spec = self._spec(network_id)
            self._running.discard(network_id)
            await asyncio.gather(self._stop_dnsmasq(network_id), self._apply_rules())
            await asyncio.to_thread(links.set_up, spec.bridge, False)

    async def delete_network(self, network_id: str) -> None:
        """Remove the bridge, its dnsmasq, its rules and its ports; an unknown id is not an error."""
        async with self._lock:
            spec = self._specs.pop(network_id, None)
            self._running.discard(network_id)
            await self._stop_dnsmasq(network_id)
            for port_id in [p for p, n in self._ports.items() if n == network_id]:
                del self._ports[port_id]
                await asyncio.to_thread(links.delete, links.port_names(port_id)[0])
            await self._apply_rules()
            await self._announce_routes()
            if spec is not None:
                if spec.bridged and spec.uplink:
                    await asyncio.to_thread(links.enslave, spec.uplink, None)
                await self._delete_own_bridge(spec.bridge, network_id)
            await asyncio.to_thread(shutil.rmtree, self._dir(network_id), True)

    async def _delete_own_bridge(self, bridge: str, network_id: str) -> None:
        if await asyncio.to_thread(links.link_alias, bridge) == links.alias(self.owner, "net", network_id):
            await asyncio.to_thread(links.delete, bridge)

    async def network(self, network_id: str) -> dict | None:
        """What the host has of the network, for `cimid check` and after a Job: each part "present" or
        "missing". Read from the host alone when this driver was not told of the network (`cimid check`
        runs in a process of its own): then a network with no part up (bridge down or gone, no dnsmasq, no
        rules) is a stopped one."""
        spec = self._specs.get(network_id)
        mark = links.alias(self.owner, "net", network_id)
        if spec is not None:  # its bridge's name is known: that link alone is read (every Job ends here)
            state = await asyncio.to_thread(links.link_state, spec.bridge)
            if state is not None and state["alias"] != mark:
                state = None  # a link of that name cimid did not make for this network
            bridge = spec.bridge if state is not None else None
        else:
            owned = await asyncio.to_thread(links.owned_links, self.owner)
            bridge = next((name for name, alias in owned.items() if alias == mark), None)
        directory = self._dir(network_id)
        if spec is None and bridge is None and not directory.exists():
            return None
        if spec is None:
            state = await asyncio.to_thread(links.link_state, bridge) if bridge else None
        up = bool(state and state["up"])
        found = await self.nft.comments(self.table)
        if spec is not None:
            started = network_id in self._running
            wanted = _serves_dhcp(spec) and started
            daemon = self._daemons.get(network_id)
            serving = daemon is not None and daemon.alive()
        else:  # started: any part of a started network still there (a bridge removed by hand leaves the others)
            serving = directory in (await asyncio.to_thread(dnsmasq.running_under, self.run_dir)).values()
            started = up or serving or f"net:{network_id}" in found
            wanted = started and (directory / "dnsmasq.conf").exists()
        return {
            "bridge": "present" if bridge else "missing",
            "link": "up" if up else "down",
            "dhcp": ("present" if serving else "missing") if wanted else "off",
            "rules": ("present" if f"net:{network_id}" in found else "missing") if started else "none",
        }

    # ---------------------------------------------------------------- addresses

    async def set_reservations(self, network_id: str, reservations) -> None:
        """Replace the network's host reservations ((mac, ip, hostname) ...); dnsmasq re-reads them."""
        async with self._lock:
            spec = self._spec(network_id)
            spec = replace(spec, reservations=tuple(reservations))
            self._specs[network_id] = spec
            if _serves_dhcp(spec):
                await self._write_dnsmasq(spec)
                daemon = self._daemons.get(network_id)
                if daemon is not None:
                    daemon.reload()

    async def leases(self, network_id: str) -> dict[str, str]:
        self._spec(network_id)
        return await asyncio.to_thread(dnsmasq.leases, self._dir(network_id))

    # ---------------------------------------------------------------- ports

    async def create_port(self, network_id: str, port_id: str) -> dict:
        """A veth pair: one end on the network's bridge, the other ({"peer"}) for the operator."""
        async with self._lock:
            spec = self._spec(network_id)
            if port_id in self._ports:
                raise DriverError(f"there is already a port {port_id}")
            names = links.port_names(port_id)
            await asyncio.to_thread(links.make_veth, spec.bridge, names, links.alias(self.owner, "port", port_id), spec.mtu)
            self._ports[port_id] = network_id
            return {"peer": names[1]}

    async def delete_port(self, port_id: str) -> None:
        async with self._lock:
            self._ports.pop(port_id, None)
            inside = links.port_names(port_id)[0]
            if await asyncio.to_thread(links.link_alias, inside) == links.alias(self.owner, "port", port_id):
                await asyncio.to_thread(links.delete, inside)

    # ---------------------------------------------------------------- forwarding groups

    async def set_forwarding_group(self, group_id: str, network_ids) -> None:
        async with self._lock:
            unknown = [n for n in network_ids if n not in self._specs]
            if unknown:
                raise DriverError(f"no such network(s): {', '.join(unknown)}")
            previous = self._groups.get(group_id)
            self._groups[group_id] = list(network_ids)
            try:
                await self._apply_rules()
            except BaseException:
                if previous is None:
                    self._groups.pop(group_id, None)
                else:
                    self._groups[group_id] = previous
                raise
            await self._announce_routes()

    async def delete_forwarding_group(self, group_id: str) -> None:
        async with self._lock:
            if self._groups.pop(group_id, None) is not None:
                await self._apply_rules()
                await self._announce_routes()

    async def _apply_rules(self) -> None:
        """The rules of the started networks (a stopped one's bridge is down: nothing to filter)."""
        networks = [self._specs[n] for n in sorted(self._running) if n in self._specs]
        groups = {g: [m for m in members if m in self._running] for g, members in self._groups.items()}
        await self.nft.apply(self.table, networks, groups)

    # ---------------------------------------------------------------- dnsmasq, supervised

    def _routes(self, network_id: str) -> list[str]:
        """The subnets of the networks that share a forwarding group with this one."""
        return sorted({self._specs[m].cidr for members in self._groups.values() if network_id in members
                       for m in members if m != network_id and m in self._specs and self._specs[m].cidr})

    async def _write_dnsmasq(self, spec) -> Path:
        return await asyncio.to_thread(dnsmasq.write_files, spec, self._dir(spec.network_id),
                                       self._routes(spec.network_id))

    async def _announce_routes(self) -> None:
        """After a group changed: each running dnsmasq re-reads its routes (guests take them at renewal)."""
        for network_id, daemon in list(self._daemons.items()):
            if network_id in self._specs and daemon.alive():
                await self._write_dnsmasq(self._specs[network_id])
                daemon.reload()

    async def _start_dnsmasq(self, spec) -> None:
        conf = await self._write_dnsmasq(spec)
        self._supervise(spec.network_id, await dnsmasq.start(self.dnsmasq, conf))

    def _supervise(self, network_id: str, daemon: dnsmasq.Daemon) -> None:
        self._daemons[network_id] = daemon
        self._supervisors[network_id] = asyncio.create_task(self._restart_when_dead(network_id, daemon),
                                                            name=f"dnsmasq {network_id}")

    async def _stop_dnsmasq(self, network_id: str) -> None:
        task = self._supervisors.pop(network_id, None)
        if task is not None:
            task.cancel()
        daemon = self._daemons.pop(network_id, None)
        if daemon is not None:
            await daemon.stop()

    async def _restart_when_dead(self, network_id: str, daemon: dnsmasq.Daemon) -> None:
        """Restart the network's dnsmasq whenever it dies, and raise an alarm each time."""
        while True:
            how = await daemon.wait()
            await asyncio.sleep(0)  # a stop in progress cancels us here
            if network_id not in self._running:
                return
            try:
                daemon = await dnsmasq.start(self.dnsmasq, self._dir(network_id) / "dnsmasq.conf")
            except DriverError as exc:
                self._alarm(network_id, f"dnsmasq {how} and could not be restarted: {exc}")
                await asyncio.sleep(RESTART_BACKOFF)
                continue
            self._daemons[network_id] = daemon
            self._alarm(network_id, f"dnsmasq {how}; restarted (pid {daemon.pid})")

    def _alarm(self, network_id: str, message: str) -> None:
        for callback in self._watchers:
            callback(network_id, message)

    # ---------------------------------------------------------------- after a restart

    async def adopt(self, networks, ports, groups) -> None:
        """Rebuild from the store after a restart or a reboot: every network in `networks` ((spec,
        started) pairs) gets its bridge, dnsmasq and rules back; ports {port id: network id} and groups
        {group id: member ids} likewise. A dnsmasq an earlier cimid left serving a network as it is now
        is taken over (DHCP goes on); every other link, process and directory cimid made for anything
        else is removed (orphans of an interrupted Job); nothing cimid did not make is touched."""
        async with self._lock:
            self._specs = {spec.network_id: spec for spec, _ in networks}
            self._running = {spec.network_id for spec, started in networks if started}
            self._ports = dict(ports)
            self._groups = {g: list(m) for g, m in groups.items()}
            kept = await self._take_over_dnsmasq()
            await self._remove_orphan_links()
            for directory in self.run_dir.iterdir() if self.run_dir.exists() else ():
                if directory.name not in self._specs:
                    await asyncio.to_thread(shutil.rmtree, directory, True)
            problems = await asyncio.to_thread(links.make_bridges, [
                (s.bridge, links.alias(self.owner, "net", s.network_id), s.mtu, s.gateway, s.cidr, s.network_id in self._running)
                for s in self._specs.values()])
            failed = {s.network_id: problems[s.bridge] for s in self._specs.values() if s.bridge in problems}
            self._running -= set(failed)
            for spec in self._specs.values():
                if spec.bridged and spec.uplink and spec.network_id not in failed:
                    await asyncio.to_thread(links.enslave, spec.uplink, spec.bridge)
            starts = [self._start_dnsmasq(self._specs[n]) for n in sorted(self._running)
                      if _serves_dhcp(self._specs[n]) and n not in kept]
            for network_id, outcome in zip([n for n in sorted(self._running) if _serves_dhcp(self._specs[n])
                                            and n not in kept], await asyncio.gather(*starts, return_exceptions=True)):
                if isinstance(outcome, BaseException):
                    failed[network_id] = str(outcome)
            await self._restore_ports(failed)
            await self._apply_rules()
            for network_id, problem in failed.items():
                self._alarm(network_id, f"could not be rebuilt after a restart: {problem}")

    async def _take_over_dnsmasq(self) -> set[str]:
        """Keep each dnsmasq an earlier cimid left that serves a started network with today's
        configuration (its reservations are rewritten and re-read); end all others. :return: the kept."""
        kept, ending = set(), []
        for pid, directory in (await asyncio.to_thread(dnsmasq.running_under, self.run_dir)).items():
            spec = self._specs.get(directory.name)
            current = spec is not None and spec.network_id in self._running and _serves_dhcp(spec) \
                and spec.network_id not in kept and await asyncio.to_thread(dnsmasq.configured_as, spec, directory)
            if current:
                await self._write_dnsmasq(spec)
                daemon = dnsmasq.Daemon(pid)
                daemon.reload()
                self._supervise(spec.network_id, daemon)
                kept.add(spec.network_id)
            else:
                ending.append(dnsmasq.kill(pid))
        await asyncio.gather(*ending)
        return kept

    async def _remove_orphan_links(self) -> None:
        wanted = {s.bridge: links.alias(self.owner, "net", s.network_id) for s in self._specs.values()}
        for port_id in self._ports:
            for name in links.port_names(port_id):
                wanted[name] = links.alias(self.owner, "port", port_id)
        for ifname, mark in (await asyncio.to_thread(links.owned_links, self.owner)).items():
            if wanted.get(ifname) != mark:
                await asyncio.to_thread(links.delete, ifname)

    async def _restore_ports(self, failed: dict[str, str]) -> None:
        owned = await asyncio.to_thread(links.owned_links, self.owner)
        for port_id, network_id in self._ports.items():
            spec = self._specs.get(network_id)
            names = links.port_names(port_id)
            if spec is None or network_id in failed or names[0] in owned:
                continue
            try:
                await asyncio.to_thread(links.make_veth, spec.bridge, names, links.alias(self.owner, "port", port_id), spec.mtu)
            except DriverError as exc:
                failed[network_id] = f"port {port_id}: {exc}"

    async def forget(self) -> None:
        """Remove every network, port and group this driver made (the test-control reset)."""
        for network_id in list(self._specs):
            await self.delete_network(network_id)
        async with self._lock:
            self._groups.clear()
            self._ports.clear()
            await self._apply_rules()


def _serves_dhcp(spec) -> bool:
    return spec.dhcp and spec.cidr is not None
