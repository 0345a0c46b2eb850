"""Networks: bridges made from a NetworkTemplate (by value, or by reference with overrides), started and
stopped; the IPv4 addresses of each (Address: static when asked, the next free one otherwise, every one
with a MAC reserved in the network's DHCP server so the lease and the resource agree); operator ports;
forwarding groups; and Machines' interfaces (at create from the MachineTemplate's networkInterfaces, or
the default network; hot-added and hot-removed through the Machine's networkInterfaces).

Every check (subnet overlaps, addresses inside and free, MTU, who uses a network) is made before any
host work; the host work is a Job, and a Job that fails leaves no row, bridge, port or reservation."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
from dataclasses import asdict, replace

from ..errors import BadRequest, Conflict, DriverError, Unavailable
from ..hookspecs import InterfaceSpec, MachineSpec, NetworkSpec, Reservation
from ..model import Action, ResourceType
from ..model.events import EventLog
from ..model.machines import Machine
from ..model.networks import (Address, AddressCreate, AddressTemplate, ForwardingGroup,
                              ForwardingGroupCreate, ForwardingGroupTemplate, MachineNetworkInterface, MachineNetworkInterfaceAddress,
                              MachineTemplateNetworkInterface,
                              Network, NetworkConfiguration, NetworkCreate, NetworkNetworkPort, NetworkPort,
                              NetworkPortCreate,
                              NetworkPortTemplate, NetworkTemplate)
from ..model.validate import require, validate
from ..store.db import Row, Transaction
from .events import Alarm, model_changed, state_changed
from .hrefs import href_to_id, new_id, now, path_of
from .present import Context, Result, check_if_match
from .resources import ResourceService
from .runner import JobKind, job_result

log = logging.getLogger("cimid.networks")
KIND = "network"  # the Job kind
MTU_MIN, MTU_MAX = 68, 65535
BRIDGE_PREFIX = "cimid"  # + 10 characters of the id: 15, the longest link name
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
STABLE_MACHINE = ("STARTED", "STOPPED", "PAUSED", "SUSPENDED")
DEFAULT_RECORD = "default-network-made"  # Meta row: made once; an admin who deletes it means it


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + re.sub(r"[^0-9a-zA-Z]", "", network_id)[:10]


def spec_of(network: Row) -> NetworkSpec:
    raw = dict(network.internal["spec"])
    raw["dns"] = tuple(raw.get("dns") or ())
    raw["reservations"] = tuple(Reservation(*r) for r in raw.get("reservations") or ())
    return NetworkSpec(**raw)


def _mtu(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MTU_MIN <= value <= MTU_MAX:
        raise BadRequest(f"{where}: the MTU must be from {MTU_MIN} to {MTU_MAX} bytes, not {value!r}")
    return value


def _ip(value: str, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value.strip())
    except (ValueError, AttributeError):
        raise BadRequest(f"{where}: '{value}' is not an IPv4 address") from None


class Networks(ResourceService):
    def __init__(self, family, parts):
        super().__init__(family, parts)
        self.driver = self.drivers.network
        self.jobs.register(KIND, JobKind(self.run_step, self.observe, self.finish, self.abandon))
        self.driver.watch(self.on_alarm)

    async def ensure_driver(self) -> None:
        try:
            await self.drivers.open("network")
        except DriverError as exc:
            raise Unavailable(f"the network driver is not available: {exc}") from None

    async def ensure_compute(self) -> None:
        if self.drivers.compute is None:
            raise Unavailable("this provider runs no machines")
        try:
            await self.drivers.open("compute")
        except DriverError as exc:
            raise Unavailable(f"the hypervisor is not available: {exc}") from None

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        """Rebuild what the host lacks from the store, resume or settle Jobs, and make the default network
        on the first start (network.create_default)."""
        async with self.store.write() as tx:  # ports made before networks listed them
            for port in await tx.all_of(NetworkPort.name):
                if await tx.get(NetworkNetworkPort.name, port.id) is None:
                    await tx.insert(network_port_link(port))
        try:
            await self.ensure_driver()
        except Unavailable as exc:
            log.warning("%s; network changes answer 503 until it is", exc)
            return
        networks = [(replace(spec_of(n), reservations=await self._reservations(self.store, n.id)),
                     n.state in ("STARTED", "STOPPING"))
                    for n in await self.store.all_of(Network.name) if n.state != "CREATING"]
        ports = {p.id: p.internal["network"] for p in await self.store.all_of(NetworkPort.name)
                 if p.state != "CREATING" and not p.internal.get("interface")}
        groups = {g.id: tuple(g.internal["networks"]) for g in await self.store.all_of(ForwardingGroup.name)
                  if g.internal.get("realised")}
        await self.driver.adopt(networks, ports, groups)
        await self.jobs.recover(KIND)
        await self._make_default_network()

    async def _make_default_network(self) -> None:
        settings = self.config["network"]
        name = settings["default_network"]
        if not settings["create_default"] or not name:
            return
        host = await self.driver.host_subnets()
        async with self.store.write() as tx:
            if await tx.get("Meta", DEFAULT_RECORD) is not None:
                return
            await tx.insert(Row("Meta", DEFAULT_RECORD, "", {"created": now()}))
            if await self._default_network(tx) is not None:
                return
            cidr, gateway, dns = await self._subnet(tx, {}, "the default network", host)
            network = await self._new_network(tx, "", {"name": name, "description": "made by cimid at first start"},
                                              {"networkType": "PUBLIC"}, cidr, gateway, dns, None)
            network.public = True  # every consumer may put machines on it
            await tx.update(network)
            await self._queue(tx, "", network, "add", [{"op": "create", "transitional": "CREATING"},
                                                       {"op": "start", "transitional": "STARTING"}],
                              target=Network.collection, success="default Network created, STARTED")
        log.info("made the default network '%s' (%s)", name, cidr)

    async def _default_network(self, tx: Transaction) -> Row | None:
        name = self.config["network"]["default_network"]
        for network in await tx.all_of(Network.name):
            if network.owner == "" and network.attrs.get("name") == name and network.state != "DELETING":
                return network
        return None

    async def usage(self, reader, owner: str) -> dict[str, int]:
        count, _ = await reader.usage(Network.name, owner)
        return {"networks": count}

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        if rtype is Network:
            return {"NetworkTemplateByValue": True, "NetworkConfigByValue": True, "DefaultInitialState": "STARTED",
                    "InitialStates": "STARTED,STOPPED"}
        if rtype is NetworkPort:
            return {"NetworkPortTemplateByValue": True, "NetworkPortConfigByValue": True}
        if rtype is ForwardingGroup:
            return {"MixedNetwork": True}
        return {}

    async def forget_host(self, tx: Transaction) -> None:
        await self.ensure_driver()
        await self.driver.forget()

    # ---------------------------------------------------------------- alarms from the driver

    def on_alarm(self, network_id: str, message: str) -> None:
        """The driver repaired a network by itself (its DHCP server died and was restarted)."""
        if self.store.is_open:
            asyncio.get_running_loop().create_task(self._alarm(network_id, message))

    async def _alarm(self, network_id: str, message: str) -> None:
        async with self.store.write() as tx:
            network = await tx.get(Network.name, network_id)
            if network is not None:
                tx.emit(Alarm(Network.name, f"networks/{network_id}", 1, message, owner=network.owner,
                              name=network.attrs.get("name", "")))

    # ---------------------------------------------------------------- create

    async def create(self, ctx: Context, rtype: ResourceType, body: dict, parent: str = "") -> Result:
        if rtype is Network:
            return await self._create_network(ctx, body)
        if rtype is NetworkPort:
            return await self._create_port(ctx, body)
        if rtype is Address:
            return await self._create_address(ctx, body)
        if rtype is ForwardingGroup:
            return await self._create_group(ctx, body)
        if rtype is MachineNetworkInterface:
            return await self._hot_add(ctx, body, parent)
        attrs = validate(rtype, body, creating=True)
        if rtype is NetworkConfiguration:
            self._check_configuration(attrs, "")
        if rtype is NetworkTemplate and isinstance(attrs.get("networkConfig"), dict) \
                and "href" not in attrs["networkConfig"]:
            self._check_configuration(attrs["networkConfig"], "networkConfig.")
        if rtype is AddressTemplate:
            self._check_address_template(attrs)
        if rtype is ForwardingGroupTemplate:
            body = await self._group_template(ctx, body, attrs)
        return await super().create(ctx, rtype, body, parent)

    async def _group_template(self, ctx: Context, body: dict, attrs: dict) -> dict:
        """A ForwardingGroupTemplate names Networks the caller sees; kept as relative hrefs, as references are."""
        refs = []
        for index, ref in enumerate(attrs.get("networks") or []):
            network_id = href_to_id(ref["href"], Network, f"networks[{index}]")
            if await self.store.get(Network.name, network_id, scope=ctx.scope) is None:
                raise BadRequest(f"networks[{index}]: '{ref['href']}' does not name an existing Network")
            refs.append({"href": f"networks/{network_id}"})
        return {**body, "networks": refs} if "networks" in attrs else body

    @staticmethod
    def _check_configuration(config: dict, where: str) -> None:
        """What a NetworkConfiguration may say, checked when it is stored and again when it is used."""
        _mtu(config.get("mtu"), f"{where}mtu")
        props = config.get("properties") or {}
        if props.get("cidr"):
            try:
                subnet = ipaddress.IPv4Network(props["cidr"].strip())
            except ValueError as exc:
                raise BadRequest(f"{where}properties.cidr: '{props['cidr']}' is not an IPv4 subnet ({exc})") from None
            if subnet.num_addresses < 4:
                raise BadRequest(f"{where}properties.cidr: {subnet} is too small (at least a /30)")
            if props.get("gateway"):
                gateway = _ip(props["gateway"], f"{where}properties.gateway")
                if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
                    raise BadRequest(f"{where}properties.gateway: {gateway} is not a host address of {subnet}")
        elif props.get("gateway"):
            raise BadRequest(f"{where}properties.gateway: give the subnet too (properties.cidr)")
        for server in filter(None, (s.strip() for s in (props.get("dns") or "").split(","))):
            _ip(server, f"{where}properties.dns")

    @staticmethod
    def _check_address_template(attrs: dict) -> None:
        if attrs.get("allocation") == "static" and not attrs.get("ip"):
            raise BadRequest("a static Address needs its ip")
        if attrs.get("ip"):
            _ip(attrs["ip"], "ip")

    async def _subnet(self, tx: Transaction, props: dict, where: str,
                      host: dict[str, str]) -> tuple[str, str, tuple[str, ...]]:
        """(cidr, gateway, dns) of a new network: as its configuration says, else the first /24 of the
        provider's pool that no network and no address of the host (`host`: {subnet: link}, from the driver)
        uses; 409 if it overlaps either."""
        taken = {n.id: ipaddress.IPv4Network(n.internal["spec"]["cidr"]) for n in await tx.all_of(Network.name)
                 if n.internal.get("spec", {}).get("cidr")}
        on_host = {ipaddress.IPv4Network(cidr): link for cidr, link in host.items()}
        if props.get("cidr"):
            subnet = ipaddress.IPv4Network(props["cidr"].strip())
            for other_id, other in taken.items():
                if other.overlaps(subnet):
                    raise Conflict(f"{where}: the subnet {subnet} overlaps {other} of Network '{other_id}' "
                                   f"(networks/{other_id})")
            for other, link in on_host.items():
                if other.overlaps(subnet):
                    raise Conflict(f"{where}: the subnet {subnet} overlaps {other} of the host's link {link}, "
                                   "which cimid did not make")
        else:
            pool = ipaddress.IPv4Network(self.config["network"]["subnet_pool"])
            candidates = pool.subnets(new_prefix=24) if pool.prefixlen <= 24 else iter((pool,))
            used = [*taken.values(), *on_host]
            subnet = next((s for s in candidates if not any(s.overlaps(o) for o in used)), None)
            if subnet is None:
                raise Conflict(f"{where}: every subnet of the provider's pool {pool} is in use; give "
                               "properties.cidr in the networkConfig")
        gateway = props.get("gateway", "").strip() or str(next(subnet.hosts()))
        dns = tuple(s.strip() for s in (props.get("dns") or "").split(",") if s.strip()) \
            or tuple(self.config["network"]["dns"])
        return str(subnet), gateway, dns

    async def _new_network(self, tx: Transaction, owner: str, request: dict, config: dict, cidr: str,
                           gateway: str, dns: tuple[str, ...], mtu: int | None) -> Row:
        """Store a new Network, CREATING, with its spec and EventLog."""
        network_id = new_id()
        settings = self.config["network"]
        public = config["networkType"] == "PUBLIC"
        spec = NetworkSpec(network_id=network_id, bridge=bridge_name(network_id), network_type=config["networkType"],
                           cidr=cidr, gateway=gateway, dns=dns, mtu=mtu,
                           uplink=(settings["uplink"] or None) if public else None,
                           bridged=public and settings["bridged"], dhcp=True)
        stamp = now()
        attrs = {"created": stamp, "updated": stamp, "state": "CREATING", "networkType": config["networkType"]}
        attrs.update({k: request[k] for k in ("name", "description") if k in request})
        if mtu is not None:
            attrs["mtu"] = mtu
        if config.get("classOfService"):
            attrs["classOfService"] = config["classOfService"]
        if request.get("properties"):
            attrs["properties"] = request["properties"]
        # What the provider chose, for the consumer to read (the store's spec is what counts).
        attrs["host"] = {"bridge": {"value": spec.bridge}, "cidr": {"value": cidr}, "gateway": {"value": gateway},
                         **({"dns": {"value": ",".join(dns)}} if dns else {})}
        network = Row(Network.name, network_id, "", attrs, owner=owner, internal={"spec": asdict(spec)})
        await tx.insert(network)
        tx.emit(model_changed(Network, network, "created", owner))
        return network

    async def _create_network(self, ctx: Context, body: dict) -> Result:
        request = validate(NetworkCreate, body, creating=True)
        require(NetworkCreate, request)
        await self.ensure_driver()
        host = await self.driver.host_subnets()
        async with self.store.write() as tx:
            template = await self.references.resolve(tx, NetworkCreate.attribute("networkTemplate"),
                                                     request["networkTemplate"], ctx.scope)
            if not template.get("networkConfig"):
                raise BadRequest("the networkTemplate needs a networkConfig")
            config = await self.references.resolve(tx, NetworkTemplate.attribute("networkConfig"),
                                                   template["networkConfig"], ctx.scope)
            require(NetworkConfiguration, config, "networkTemplate.networkConfig")
            self._check_configuration(config, "networkTemplate.networkConfig.")
            group = None
            if template.get("forwardingGroup"):
                group = await self._group_to_join(tx, ctx, template["forwardingGroup"])
            await self.check_quotas(tx, ctx, {"networks": 1})
            cidr, gateway, dns = await self._subnet(tx, config.get("properties") or {}, "networkTemplate.networkConfig",
                                                    host)
            network = await self._new_network(tx, ctx.user, request, config, cidr, gateway, dns, config.get("mtu"))
            persistence = None
            if template.get("eventLogTemplate"):
                persistence = (await self.references.resolve(tx, NetworkTemplate.attribute("eventLogTemplate"),
                                                             template["eventLogTemplate"], ctx.scope)).get("persistence")
            await self.parts.service_of(EventLog).open_log(tx, Network, network, persistence)
            initial = template.get("initialState") or "STARTED"
            steps = [{"op": "create", "transitional": "CREATING"}]
            if initial == "STARTED":
                steps.append({"op": "start", "transitional": "STARTING"})
            if group is not None:  # the group waits for it (no other change meanwhile)
                steps.append({"op": "join", "group": group.id})
                group.internal["busy"] = True
                await tx.update(group)
            job = await self._queue(tx, ctx.user, network, "add", steps, target=Network.collection,
                                    success=f"Network created, {initial}")
        return job_result(ctx, job, 202, location=f"networks/{network.id}")

    async def _group_to_join(self, tx: Transaction, ctx: Context, ref: dict) -> Row:
        group_id = href_to_id(ref["href"], ForwardingGroup, "networkTemplate.forwardingGroup")
        group = await tx.get(ForwardingGroup.name, group_id, ctx.scope)
        if group is None or not ctx.may_change(group):
            raise BadRequest(f"networkTemplate.forwardingGroup: '{ref['href']}' does not name a ForwardingGroup "
                             "of yours")
        if group.internal.get("busy"):
            raise Conflict(f"ForwardingGroup '{group_id}' is being changed; wait for its Job")
        return group

    # ---------------------------------------------------------------- actions and delete

    async def act(self, ctx: Context, rtype: ResourceType, id: str, action: Action, request: dict,
                  if_match: str | None) -> Result:
        if rtype is not Network:
            return await super().act(ctx, rtype, id, action, request, if_match)
        await self.ensure_driver()
        async with self.store.write() as tx:
            network = await self.changeable(tx, ctx, Network, id)
            check_if_match(network, if_match)
            if network.state not in action.from_states:
                raise Conflict(f"cannot {action.name} Network '{id}' while it is {network.state}; "
                               f"{action.name} needs {', '.join(action.from_states)}")
            job = await self._queue(tx, ctx.user, network, action.uri,
                                    [{"op": action.name, "transitional": action.transitional}],
                                    target=f"networks/{id}", success=f"Network {action.final}")
        return job_result(ctx, job, 202, location=f"networks/{id}")

    async def delete(self, ctx: Context, rtype: ResourceType, id: str, if_match: str | None,
                     parent: str | None = None) -> Result:
        if rtype is Network:
            return await self._delete_network(ctx, id, if_match)
        if rtype is NetworkPort:
            return await self._delete_port(ctx, id, if_match)
        if rtype is ForwardingGroup:
            return await self._delete_group(ctx, id, if_match)
        if rtype is MachineNetworkInterface:
            return await self._hot_remove(ctx, id, parent, if_match)
        return await super().delete(ctx, rtype, id, if_match, parent)

    async def _delete_network(self, ctx: Context, id: str, if_match: str | None) -> Result:
        await self.ensure_driver()
        async with self.store.write() as tx:
            network = await self.changeable(tx, ctx, Network, id)
            check_if_match(network, if_match)
            if network.state in Network.transitional_states:
                raise Conflict(f"Network '{id}' is {network.state}; wait for its Job to finish")
            users = [f"MachineNetworkInterface machines/{i.parent}/networkInterfaces/{i.id}"
                     for i in await tx.referring(MachineNetworkInterface.name, "network", id)]
            users += [f"NetworkPort networkPorts/{p.id}" for p in await tx.referring(NetworkPort.name, "network", id)]
            if users:
                raise Conflict(f"Network '{id}' is in use by {', '.join(users)}; remove them first")
            job = await self._queue(tx, ctx.user, network, "delete", [{"op": "delete", "transitional": "DELETING"}],
                                    target=f"networks/{id}", success="Network deleted")
        return job_result(ctx, job, 202, location=f"networks/{id}")

    async def before_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        if rtype is Address and row.internal.get("interface"):
            raise Conflict(f"Address '{row.id}' is held by {row.attrs['resource']['href']}; remove that interface "
                           "first")

    # ---------------------------------------------------------------- Jobs

    async def _queue(self, tx: Transaction, owner: str, network: Row, action: str, steps: list[dict], *,
                     target: str, success: str, affected: list[str] = ()) -> Row:
        job = await self.jobs.queue(tx, KIND, action=action, target=target,
                                    affected=[f"networks/{network.id}", *affected], steps=steps, success=success,
                                    owner=owner, network=network.id, prior=network.state)
        if network.state != "CREATING" and steps[0].get("transitional"):
            previous = network.state
            network.attrs["state"] = steps[0]["transitional"]
            await tx.update(network)
            tx.emit(state_changed(Network, network, previous, f"{action.rsplit('/', 1)[-1]} asked by {owner or 'cimid'}",
                                  owner))
        return job

    async def run_step(self, job: Row, step: dict):
        op = step["op"]
        if op in ("port-create", "port-delete"):
            port_id = job.internal["port"]
            if op == "port-delete":
                return await self.driver.delete_port(port_id)
            return await self.driver.create_port(job.internal["network"], port_id)
        if op in ("group-set", "group-delete"):
            if op == "group-delete":
                return await self.driver.delete_forwarding_group(job.internal["group"])
            return await self.driver.set_forwarding_group(job.internal["group"], tuple(step["networks"]))
        if op in ("attach", "detach"):
            return await self._run_interface(job, step)
        network_id = job.internal["network"]
        if op == "create":
            network = await self.store.get(Network.name, network_id)
            await self.driver.create_network(spec_of(network))
        elif op == "start":
            await self.driver.start_network(network_id)
        elif op == "stop":
            await self.driver.stop_network(network_id)
        elif op == "delete":
            await self.driver.delete_network(network_id)
        elif op == "join":
            group = await self.store.get(ForwardingGroup.name, step["group"])
            if group is None:
                raise DriverError(f"the ForwardingGroup {step['group']} is gone")
            await self.driver.set_forwarding_group(group.id, (*group.internal["networks"], network_id))
        else:
            raise DriverError(f"unknown step '{op}'")
        return None

    async def observe(self, job: Row):
        """What the host has for the Job's network now (None: nothing)."""
        if "port" in job.internal or "group" in job.internal or "interface" in job.internal:
            return None
        try:
            return await self.driver.network(job.internal["network"])
        except DriverError as exc:
            log.warning("cannot read network %s: %s", job.internal["network"], exc)
            return None

    async def finish(self, tx: Transaction, job: Row, outcome: str, message: str, observed) -> None:
        if "port" in job.internal:
            return await self._finish_port(tx, job, outcome, message)
        if "group" in job.internal:
            return await self._finish_group(tx, job, outcome, message)
        if "interface" in job.internal:
            return await self._finish_interface(tx, job, outcome, message)
        network = await tx.get(Network.name, job.internal["network"])
        if network is None:
            return
        steps = job.internal["steps"]
        if outcome == "STEP":
            transitional = message  # the state the step begins in
            if transitional and network.state != transitional:
                previous = network.state
                network.attrs["state"] = transitional
                await tx.update(network)
                tx.emit(state_changed(Network, network, previous, "its Job began a step", job.owner))
            return
        succeeded = outcome == "SUCCESS"
        group = await self._release_group(tx, steps)
        if steps[0]["op"] == "create" and not (succeeded or (observed is not None and job.internal.get("step", 0) > 0)):
            await self._remove_network(tx, network, job.owner, f"Network not made: {message}")
            try:
                await self.driver.delete_network(network.id)  # nothing half-made stays
            except DriverError as exc:
                log.warning("network %s: what its failed create made could not be removed: %s", network.id, exc)
            return
        if steps[-1]["op"] == "delete" and (succeeded or observed is None):
            return await self._remove_network(tx, network, job.owner)
        if group is not None and succeeded:
            if network.id not in group.internal["networks"]:
                group.internal["networks"].append(network.id)
                group.internal["realised"] = True
                group.attrs["networks"] = [{"href": f"networks/{n}"} for n in group.internal["networks"]]
                await tx.update(group)
                network.attrs["forwardingGroup"] = {"href": f"forwardingGroups/{group.id}"}
        previous = network.state
        network.attrs["state"] = "ERROR" if observed is None else "STARTED" if observed.get("link") == "up" else "STOPPED"
        await tx.update(network)
        tx.emit(state_changed(Network, network, previous, message, job.owner))

    @staticmethod
    async def _release_group(tx: Transaction, steps: list[dict]) -> Row | None:
        """The ForwardingGroup a new network was to join waits no more; returned for the caller to settle."""
        join = next((s for s in steps if s["op"] == "join"), None)
        group = await tx.get(ForwardingGroup.name, join["group"]) if join else None
        if group is not None:
            group.internal.pop("busy", None)
            await tx.update(group)
        return group

    async def _remove_network(self, tx: Transaction, network: Row, owner: str, detail: str = "") -> None:
        """The network is gone: its row, its free Addresses, and its place in forwarding groups."""
        for address in await tx.referring(Address.name, "network", network.id):
            await tx.delete(Address.name, address.id)
            tx.emit(model_changed(Address, address, "deleted", owner, "its Network was deleted"))
        for group in await tx.all_of(ForwardingGroup.name):
            if network.id in group.internal["networks"]:
                group.internal["networks"].remove(network.id)
                group.attrs["networks"] = [{"href": f"networks/{n}"} for n in group.internal["networks"]]
                await tx.update(group)
        await tx.delete(Network.name, network.id)
        tx.emit(model_changed(Network, network, "deleted", owner, detail))

    async def abandon(self, tx: Transaction, job: Row) -> None:
        """Stopped while QUEUED: nothing reached the host; undo what the request recorded."""
        if "port" in job.internal:
            return await self._finish_port(tx, job, "STOPPED", "its Job was stopped before it began")
        if "group" in job.internal:
            return await self._finish_group(tx, job, "STOPPED", "its Job was stopped before it began")
        if "interface" in job.internal:
            return await self._finish_interface(tx, job, "STOPPED", "its Job was stopped before it began")
        await self._release_group(tx, job.internal["steps"])
        network = await tx.get(Network.name, job.internal["network"])
        if network is None:
            return
        if job.internal["steps"][0]["op"] == "create":
            await self._remove_network(tx, network, job.owner, "Network not made: its Job was stopped")
        elif network.state != job.internal["prior"]:
            previous = network.state
            network.attrs["state"] = job.internal["prior"]
            await tx.update(network)
            tx.emit(state_changed(Network, network, previous, "its Job was stopped before it began", job.owner))

    # ---------------------------------------------------------------- ports

    async def _usable_network(self, tx: Transaction, ctx: Context, ref: dict, where: str) -> Row:
        """A Network the caller may put things on (an unknown href is a 400), in a stable state."""
        network_id = href_to_id(ref["href"], Network, where)
        network = await tx.get(Network.name, network_id, ctx.scope)
        if network is None:
            raise BadRequest(f"{where}: '{ref['href']}' does not name an existing Network")
        if network.state not in ("STARTED", "STOPPED"):
            raise Conflict(f"{where}: Network '{network_id}' is {network.state}, not STARTED or STOPPED")
        return network

    async def _create_port(self, ctx: Context, body: dict) -> Result:
        request = validate(NetworkPortCreate, body, creating=True)
        require(NetworkPortCreate, request)
        await self.ensure_driver()
        async with self.store.write() as tx:
            template = await self.references.resolve(tx, NetworkPortCreate.attribute("networkPortTemplate"),
                                                     request["networkPortTemplate"], ctx.scope)
            network = await self._usable_network(tx, ctx, template["network"], "networkPortTemplate.network")
            config = {}
            if template.get("networkPortConfig"):
                config = await self.references.resolve(tx, NetworkPortTemplate.attribute("networkPortConfig"),
                                                       template["networkPortConfig"], ctx.scope)
            if config.get("portType", "ACCESS") != "ACCESS":
                raise BadRequest(f"networkPortConfig.portType: a bridge port here is ACCESS, not {config['portType']}")
            stamp = now()
            attrs = {"created": stamp, "updated": stamp, "state": "CREATING", "network": {"href": f"networks/{network.id}"},
                     "portType": "ACCESS"}
            if config.get("classOfService"):
                attrs["classOfService"] = config["classOfService"]
            attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
            port = Row(NetworkPort.name, new_id(), "", attrs, owner=ctx.user, internal={"network": network.id})
            await insert_port(tx, port)
            tx.emit(model_changed(NetworkPort, port, "created", ctx.user))
            job = await self.jobs.queue(tx, KIND, action="add", target=NetworkPort.collection,
                                        affected=[f"networkPorts/{port.id}"], steps=[{"op": "port-create"}],
                                        success="NetworkPort created", owner=ctx.user, port=port.id, network=network.id)
        return job_result(ctx, job, 202, location=f"networkPorts/{port.id}")

    async def _delete_port(self, ctx: Context, id: str, if_match: str | None) -> Result:
        await self.ensure_driver()
        async with self.store.write() as tx:
            port = await self.changeable(tx, ctx, NetworkPort, id)
            check_if_match(port, if_match)
            if port.internal.get("interface"):
                raise Conflict(f"NetworkPort '{id}' is the port of {port.internal['interface_path']}; remove that "
                               "interface instead")
            if port.state in NetworkPort.transitional_states:
                raise Conflict(f"NetworkPort '{id}' is {port.state}; wait for its Job to finish")
            previous, port.attrs["state"] = port.state, "DELETING"
            await tx.update(port)
            tx.emit(state_changed(NetworkPort, port, previous, f"delete asked by {ctx.user}", ctx.user))
            job = await self.jobs.queue(tx, KIND, action="delete", target=f"networkPorts/{id}",
                                        affected=[f"networkPorts/{id}"], steps=[{"op": "port-delete"}],
                                        success="NetworkPort deleted", owner=ctx.user, port=id,
                                        network=port.internal["network"], prior=previous)
        return job_result(ctx, job, 202, location=f"networkPorts/{id}")

    async def _finish_port(self, tx: Transaction, job: Row, outcome: str, message: str) -> None:
        port = await tx.get(NetworkPort.name, job.internal["port"])
        if port is None or outcome == "STEP":
            return
        step = job.internal["steps"][0]
        previous = port.state
        if step["op"] == "port-create" and outcome == "SUCCESS":
            port.attrs["host"] = {k: {"value": v} for k, v in step["result"].items()}
            port.attrs["state"] = "STARTED"
        elif step["op"] == "port-create":  # failed, cut short or stopped: nothing half-made stays
            await delete_port(tx, port.id)
            tx.emit(model_changed(NetworkPort, port, "deleted", job.owner, f"NetworkPort not made: {message}"))
            if job.internal.get("begun"):
                try:
                    await self.driver.delete_port(port.id)
                except DriverError as exc:
                    log.warning("port %s: could not be removed after a failed create: %s", port.id, exc)
            return
        elif outcome == "SUCCESS":
            await delete_port(tx, port.id)
            tx.emit(model_changed(NetworkPort, port, "deleted", job.owner))
            return
        else:  # a delete that failed or was stopped: the port is still there
            port.attrs["state"] = job.internal.get("prior", "STARTED")
        await tx.update(port)
        tx.emit(state_changed(NetworkPort, port, previous, message, job.owner))

    # ---------------------------------------------------------------- forwarding groups

    async def _members(self, tx: Transaction, ctx: Context, refs: list[dict], where: str) -> list[str]:
        ids: list[str] = []
        for index, ref in enumerate(refs):
            network = await self._usable_network(tx, ctx, ref, f"{where}[{index}]")
            if not ctx.may_change(network):  # joining a network to a group opens it: its owner's decision
                raise BadRequest(f"{where}[{index}]: '{ref['href']}' does not name a Network of yours")
            if network.id in ids:
                raise BadRequest(f"{where}[{index}]: Network '{network.id}' is named twice")
            ids.append(network.id)
        return ids

    async def _create_group(self, ctx: Context, body: dict) -> Result:
        request = validate(ForwardingGroupCreate, body, creating=True)
        require(ForwardingGroupCreate, request)
        await self.ensure_driver()
        async with self.store.write() as tx:
            template = await self.references.resolve(tx, ForwardingGroupCreate.attribute("forwardingGroupTemplate"),
                                                     request["forwardingGroupTemplate"], ctx.scope)
            members = await self._members(tx, ctx, template.get("networks") or [], "forwardingGroupTemplate.networks")
            stamp = now()
            attrs = {"created": stamp, "updated": stamp, "networks": [{"href": f"networks/{n}"} for n in members]}
            attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
            group = Row(ForwardingGroup.name, new_id(), "", attrs, owner=ctx.user,
                        internal={"networks": members, "busy": True})
            await tx.insert(group)
            tx.emit(model_changed(ForwardingGroup, group, "created", ctx.user))
            job = await self.jobs.queue(tx, KIND, action="add", target=ForwardingGroup.collection,
                                        affected=[f"forwardingGroups/{group.id}"],
                                        steps=[{"op": "group-set", "networks": members, "new": True}],
                                        success="ForwardingGroup created", owner=ctx.user, group=group.id)
        return job_result(ctx, job, 202, location=f"forwardingGroups/{group.id}")

    async def update(self, ctx: Context, rtype: ResourceType, id: str, body: dict, select: set[str] | None,
                     if_match: str | None) -> Result:
        if rtype is NetworkConfiguration:
            self._check_configuration(validate(rtype, body, creating=False), "")
        if rtype is AddressTemplate:
            self._check_address_template(validate(rtype, body, creating=False))
        if rtype is ForwardingGroupTemplate:
            body = await self._group_template(ctx, body, validate(rtype, body, creating=False))
        if rtype is not ForwardingGroup:
            return await super().update(ctx, rtype, id, body, select, if_match)
        changes = validate(ForwardingGroup, body, creating=False)
        members_named = not select or "*" in select or "networks" in select
        await self.ensure_driver()
        async with self.store.write() as tx:
            group = await self.changeable(tx, ctx, ForwardingGroup, id)
            check_if_match(group, if_match)
            if group.internal.get("busy"):
                raise Conflict(f"ForwardingGroup '{id}' is being changed; wait for its Job")
            previous = list(group.internal["networks"])
            members = await self._members(tx, ctx, changes.get("networks") or [], "networks") \
                if members_named else previous
            for name in ("name", "description", "properties"):
                if not select or "*" in select or name in select:
                    if name in changes:
                        group.attrs[name] = changes[name]
                    else:
                        group.attrs.pop(name, None)
            group.attrs["updated"] = now()
            if members == previous:
                await tx.update(group)
                tx.emit(model_changed(ForwardingGroup, group, "changed", ctx.user))
                return Result(200, ForwardingGroup, self.present(ForwardingGroup, group, ctx))
            group.internal["busy"] = True
            await tx.update(group)
            job = await self.jobs.queue(tx, KIND, action="edit", target=f"forwardingGroups/{id}",
                                        affected=[f"forwardingGroups/{id}"],
                                        steps=[{"op": "group-set", "networks": members, "previous": previous}],
                                        success="ForwardingGroup changed", owner=ctx.user, group=id)
        return job_result(ctx, job, 202, location=f"forwardingGroups/{id}")

    async def _delete_group(self, ctx: Context, id: str, if_match: str | None) -> Result:
        await self.ensure_driver()
        async with self.store.write() as tx:
            group = await self.changeable(tx, ctx, ForwardingGroup, id)
            check_if_match(group, if_match)
            if group.internal.get("busy"):
                raise Conflict(f"ForwardingGroup '{id}' is being changed; wait for its Job")
            group.internal["busy"] = True
            await tx.update(group)
            job = await self.jobs.queue(tx, KIND, action="delete", target=f"forwardingGroups/{id}",
                                        affected=[f"forwardingGroups/{id}"], steps=[{"op": "group-delete"}],
                                        success="ForwardingGroup deleted", owner=ctx.user, group=id)
        return job_result(ctx, job, 202, location=f"forwardingGroups/{id}")

    async def _finish_group(self, tx: Transaction, job: Row, outcome: str, message: str) -> None:
        group = await tx.get(ForwardingGroup.name, job.internal["group"])
        if group is None or outcome == "STEP":
            return
        step = job.internal["steps"][0]
        group.internal.pop("busy", None)
        if step["op"] == "group-delete" and outcome == "SUCCESS":
            await tx.delete(ForwardingGroup.name, group.id)
            tx.emit(model_changed(ForwardingGroup, group, "deleted", job.owner))
            for network in await tx.all_of(Network.name):
                if network.attrs.get("forwardingGroup", {}).get("href") == f"forwardingGroups/{group.id}":
                    network.attrs.pop("forwardingGroup")
                    await tx.update(network)
            return
        if step["op"] == "group-set" and outcome != "SUCCESS":
            if step.get("new"):
                await tx.delete(ForwardingGroup.name, group.id)
                tx.emit(model_changed(ForwardingGroup, group, "deleted", job.owner,
                                      f"ForwardingGroup not made: {message}"))
                if job.internal.get("begun"):
                    try:
                        await self.driver.delete_forwarding_group(group.id)
                    except DriverError as exc:
                        log.warning("forwarding group %s: not removed after a failed create: %s", group.id, exc)
                return
            members = step["previous"]  # the host may have either; put back what the store said before
            if job.internal.get("begun"):
                try:
                    await self.driver.set_forwarding_group(group.id, tuple(members))
                except DriverError as exc:
                    log.warning("forwarding group %s: its members could not be put back: %s", group.id, exc)
        elif step["op"] == "group-set":
            members = step["networks"]
            group.internal["realised"] = True
            for network_id in members:  # a network shows the (last) group it joined
                network = await tx.get(Network.name, network_id)
                if network is not None:
                    network.attrs["forwardingGroup"] = {"href": f"forwardingGroups/{group.id}"}
                    await tx.update(network)
            tx.emit(model_changed(ForwardingGroup, group, "changed", job.owner, message))
        else:
            members = group.internal["networks"]
        group.internal["networks"] = list(members)
        group.attrs["networks"] = [{"href": f"networks/{n}"} for n in members]
        await tx.update(group)

    # ---------------------------------------------------------------- addresses

    async def _network_addresses(self, tx: Transaction, network_id: str) -> list[Row]:
        return await tx.referring(Address.name, "network", network_id)

    async def _allocate(self, tx: Transaction, network: Row, ip: str | None, where: str,
                        taken_now: set[str] = frozenset()) -> str:
        """An address of the network: `ip` if it is a free host address of its subnet (400 outside,
        409 taken), else the lowest free one."""
        spec = network.internal["spec"]
        subnet = ipaddress.IPv4Network(spec["cidr"])
        taken = {a.attrs["ip"] for a in await self._network_addresses(tx, network.id)} | set(taken_now)
        taken.add(spec["gateway"])
        if ip is not None:
            wanted = _ip(ip, where)
            if wanted not in subnet or wanted in (subnet.network_address, subnet.broadcast_address):
                raise BadRequest(f"{where}: {wanted} is not a host address of Network '{network.id}' ({subnet})")
            if str(wanted) in taken:
                held = "the network's gateway" if str(wanted) == spec["gateway"] else "another Address"
                raise Conflict(f"{where}: {wanted} of Network '{network.id}' is taken by {held}")
            return str(wanted)
        for host in subnet.hosts():
            if str(host) not in taken:
                return str(host)
        raise Conflict(f"{where}: Network '{network.id}' ({subnet}) has no free address left")

    def _address_attrs(self, network: Row, ip: str, allocation: str) -> dict:
        spec = network.internal["spec"]
        subnet = ipaddress.IPv4Network(spec["cidr"])
        attrs = {"ip": ip, "allocation": allocation, "defaultGateway": spec["gateway"], "protocol": "IPv4",
                 "mask": str(subnet.netmask), "network": {"href": f"networks/{network.id}"}}
        if spec.get("dns"):
            attrs["dns"] = ",".join(spec["dns"])
        return attrs

    async def _create_address(self, ctx: Context, body: dict) -> Result:
        """An Address reserved on a network, for a machine interface to take (made at once: nothing reaches
        the host until an interface holds it)."""
        request = validate(AddressCreate, body, creating=True)
        require(AddressCreate, request)
        async with self.store.write() as tx:
            template = await self.references.resolve(tx, AddressCreate.attribute("addressTemplate"),
                                                     request["addressTemplate"], ctx.scope)
            self._check_address_template(template)
            network = await self._usable_network(tx, ctx, template["network"], "addressTemplate.network")
            allocation = template.get("allocation") or ("static" if template.get("ip") else "dynamic")
            ip = await self._allocate(tx, network, template.get("ip") if allocation == "static" else None,
                                      "addressTemplate.ip")
            attrs = self._address_attrs(network, ip, allocation)
            if template.get("hostname"):
                attrs["hostname"] = template["hostname"]
            attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
            return await self.insert(tx, ctx, Address, attrs, internal={"network": network.id})

    async def _reservations(self, tx_or_store, network_id: str,
                            without: str | None = None) -> tuple[Reservation, ...]:
        """The DHCP reservations of a network: every Address held by an interface (less `without`'s)."""
        held = [a for a in await tx_or_store.referring(Address.name, "network", network_id)
                if a.internal.get("mac") and a.internal.get("interface") != without]
        return tuple(Reservation(a.internal["mac"], a.attrs["ip"], a.attrs.get("hostname")) for a in held)

    # ---------------------------------------------------------------- machine interfaces

    async def _new_mac(self, tx: Transaction, interface_id: str) -> str:
        used = {i.attrs.get("macAddress") for i in await tx.all_of(MachineNetworkInterface.name)}
        for salt in range(1000):
            digest = hashlib.sha256(f"{interface_id}:{salt}".encode()).digest()
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
            if mac not in used:
                return mac
        raise Conflict("no free MAC address could be found")

    async def _plan_interface(self, tx: Transaction, ctx: Context, machine: str, item: dict, where: str,
                              hostname: str, taken: dict[str, set[str]]) -> tuple[Row, InterfaceSpec]:
        """Record one interface of `machine`, CREATING: its row, its Addresses (the given ones, or one
        dynamic), their association rows and its NetworkPort. Checks come first; nothing is written on a
        refusal (the caller's transaction rolls back)."""
        network = await self._usable_network(tx, ctx, item["network"], f"{where}.network")
        spec = network.internal["spec"]
        mtu = _mtu(item.get("mtu"), f"{where}.mtu")
        interface_id = new_id()
        mac = item.get("macAddress")
        if mac is not None:
            mac = mac.strip().lower()
            if not MAC.match(mac) or int(mac[:2], 16) & 1:
                raise BadRequest(f"{where}.macAddress: '{mac}' is not a unicast MAC address (aa:bb:cc:dd:ee:ff)")
            if any(i.attrs.get("macAddress") == mac for i in await tx.all_of(MachineNetworkInterface.name)):
                raise Conflict(f"{where}.macAddress: {mac} is taken by another interface")
        else:
            mac = await self._new_mac(tx, interface_id)
        path = path_of(MachineNetworkInterface, interface_id, machine)
        addresses: list[Row] = []
        for index, ref in enumerate(item.get("addresses") or []):
            address_id = href_to_id(ref["href"], Address, f"{where}.addresses[{index}]")
            address = await tx.get(Address.name, address_id, ctx.scope)
            if address is None or not ctx.may_change(address):
                raise BadRequest(f"{where}.addresses[{index}]: '{ref['href']}' does not name an Address of yours")
            if address.internal.get("network") != network.id:
                raise BadRequest(f"{where}.addresses[{index}]: Address '{address_id}' is of another network")
            if address.internal.get("interface") or any(a.id == address.id for a in addresses):
                raise Conflict(f"{where}.addresses[{index}]: Address '{address_id}' is held already")
            addresses.append(address)
        if len(addresses) > 1:
            raise BadRequest(f"{where}.addresses: an interface takes one IPv4 Address here")
        stamp = now()
        if not addresses:  # a dynamic one
            ip = await self._allocate(tx, network, None, f"{where}.addresses", taken.setdefault(network.id, set()))
            taken[network.id].add(ip)
            attrs = {**self._address_attrs(network, ip, "dynamic"), "hostname": hostname, "created": stamp,
                     "updated": stamp, "name": f"{hostname} {ip}"}
            address = Row(Address.name, new_id(), "", attrs, owner=ctx.user,
                          internal={"network": network.id, "made_for_interface": True})
            await tx.insert(address)
            tx.emit(model_changed(Address, address, "created", ctx.user))
            addresses.append(address)
        for address in addresses:
            address.internal.update(interface=interface_id, mac=mac, machine=machine)
            address.attrs["resource"] = {"href": path}
            await tx.update(address)
        port = Row(NetworkPort.name, new_id(), "", {
            "created": stamp, "updated": stamp, "state": "CREATING", "network": {"href": f"networks/{network.id}"},
            "portType": "ACCESS", "name": f"port of {path}"}, owner=ctx.user,
            internal={"network": network.id, "interface": interface_id, "interface_path": path, "machine": machine})
        await insert_port(tx, port)
        row = Row(MachineNetworkInterface.name, interface_id, machine, {
            "created": stamp, "updated": stamp, "state": "CREATING", "network": {"href": f"networks/{network.id}"},
            "networkPort": {"href": f"networkPorts/{port.id}"}, "macAddress": mac,
            "mtu": mtu or spec.get("mtu") or 1500}, owner=ctx.user,
            internal={"network": network.id, "port": port.id, "addresses": [a.id for a in addresses]})
        row.attrs.update({k: item[k] for k in ("name", "description", "properties") if k in item})
        await tx.insert(row)
        for address in addresses:
            await tx.insert(Row(MachineNetworkInterfaceAddress.name, new_id(), f"{machine}/{interface_id}", {
                "created": stamp, "updated": stamp, "address": {"href": f"addresses/{address.id}"}}, owner=ctx.user,
                internal={"address": address.id, "interface": interface_id, "machine": machine}))
        static = next((a for a in addresses if a.attrs["allocation"] == "static"), None)
        prefix = ipaddress.IPv4Network(spec["cidr"]).prefixlen
        iface = InterfaceSpec(mac=mac, bridge=spec["bridge"], mtu=mtu or spec.get("mtu"),
                              address=f"{static.attrs['ip']}/{prefix}" if static else None,
                              gateway=spec["gateway"] if static else None,
                              dns=tuple(spec.get("dns") or ()) if static else ())
        return row, iface

    async def plan_for_machine(self, tx: Transaction, ctx: Context, machine_id: str, template: dict,
                               spec: MachineSpec) -> bool:
        """The interfaces of a new machine (its template's networkInterfaces, else one on the default
        network), recorded CREATING and put into its spec; True if the machine's Job has work for us."""
        items = template.get("networkInterfaces") or []
        if not items:
            default = await self._default_network(tx)
            if default is None or default.state not in ("STARTED", "STOPPED"):
                return False
            items = [{"network": {"href": f"networks/{default.id}"}}]
        hostname = re.sub(r"[^a-z0-9-]+", "-", (spec.name or machine_id).lower()).strip("-")[:63] or machine_id
        taken: dict[str, set[str]] = {}
        interfaces = []
        for index, item in enumerate(items):
            row, iface = await self._plan_interface(tx, ctx, machine_id, item,
                                                    f"machineTemplate.networkInterfaces[{index}]", hostname, taken)
            row.internal["pending_for"] = machine_id
            await tx.update(row)
            interfaces.append(iface)
        spec.interfaces = interfaces
        return True

    async def realise_for_machine(self, machine_id: str) -> None:
        """In the new machine's Job, after its domain is defined with its NICs: reserve their addresses."""
        await self.drivers.open("network")  # DriverError fails the Job with the driver's reason
        networks = {i.internal["network"]
                    for i in await self.store.referring(MachineNetworkInterface.name, "pending_for", machine_id)}
        for network_id in networks:
            await self.driver.set_reservations(network_id, await self._reservations(self.store, network_id))

    async def settle_for_machine(self, tx: Transaction, machine_id: str, succeeded: bool, owner: str) -> None:
        """The new machine's Job ended: its interfaces are ACTIVE, or (it failed or was stopped) removed
        with their addresses and reservations."""
        for interface in await tx.children(MachineNetworkInterface.name, machine_id):
            if not interface.internal.pop("pending_for", None):
                continue
            if succeeded:
                await self._activate(tx, interface)
            else:
                await self._remove_interface(tx, interface, owner)
                await self._sync_reservations(tx, interface.internal["network"])

    async def machine_deleted(self, tx: Transaction, machine_id: str, owner: str) -> None:
        """The machine is gone (its interface rows went with it): free its addresses and ports."""
        networks = set()
        for address in await tx.referring(Address.name, "machine", machine_id):
            networks.add(address.internal["network"])
            await self._release(tx, address, owner)
        for port in await tx.referring(NetworkPort.name, "machine", machine_id):
            await delete_port(tx, port.id)
        for link in await tx.referring(MachineNetworkInterfaceAddress.name, "machine", machine_id):
            await tx.delete(MachineNetworkInterfaceAddress.name, link.id)
        for network_id in networks:
            await self._sync_reservations(tx, network_id)

    async def _sync_reservations(self, tx: Transaction, network_id: str) -> None:
        network = await tx.get(Network.name, network_id)
        if network is None:
            return
        try:
            await self.driver.set_reservations(network_id, await self._reservations(tx, network_id))
        except DriverError as exc:
            log.warning("network %s: its DHCP reservations could not be updated: %s", network_id, exc)

    async def _activate(self, tx: Transaction, interface: Row, iface: dict | None = None) -> None:
        """The interface is on the guest; a hot-added one joins the machine's spec (a volatile backend
        rebuilds the machine from it)."""
        interface.attrs["state"] = "ACTIVE"
        interface.internal.pop("pending_for", None)
        await tx.update(interface)
        machine = await tx.get(Machine.name, interface.parent)
        if iface is not None and machine is not None:
            machine.internal["spec"].setdefault("interfaces", []).append(iface)
            await tx.update(machine)
        port = await tx.get(NetworkPort.name, interface.internal["port"])
        if port is not None:
            port.attrs["state"] = "STARTED"
            await tx.update(port)

    async def _release(self, tx: Transaction, address: Row, owner: str) -> None:
        """An interface let go of an Address: a dynamic one goes, a static one made beforehand is free again."""
        if address.internal.get("made_for_interface"):
            await tx.delete(Address.name, address.id)
            tx.emit(model_changed(Address, address, "deleted", owner, "its interface was removed"))
            return
        for key in ("interface", "mac", "machine"):
            address.internal.pop(key, None)
        address.attrs.pop("resource", None)
        await tx.update(address)

    async def _remove_interface(self, tx: Transaction, interface: Row, owner: str) -> None:
        for address_id in interface.internal["addresses"]:
            address = await tx.get(Address.name, address_id)
            if address is not None and address.internal.get("interface") == interface.id:
                await self._release(tx, address, owner)
        await delete_port(tx, interface.internal["port"])
        for link in await tx.children(MachineNetworkInterfaceAddress.name, f"{interface.parent}/{interface.id}"):
            await tx.delete(MachineNetworkInterfaceAddress.name, link.id)
        await tx.delete(MachineNetworkInterface.name, interface.id)
        tx.emit(model_changed(MachineNetworkInterface, interface, "deleted", owner))
        machine = await tx.get(Machine.name, interface.parent)
        if machine is not None:
            mac = interface.attrs["macAddress"]
            kept = [i for i in machine.internal["spec"].get("interfaces", []) if i["mac"] != mac]
            if len(kept) != len(machine.internal["spec"].get("interfaces", [])):
                machine.internal["spec"]["interfaces"] = kept
                await tx.update(machine)

    async def _hot_add(self, ctx: Context, body: dict, machine_id: str) -> Result:
        attrs = validate(MachineNetworkInterface, body, creating=True)
        require(MachineNetworkInterface, attrs)
        if "addresses" in body:  # Addresses made beforehand, as a MachineTemplate's interfaces take them
            attrs["addresses"] = validate(MachineTemplateNetworkInterface, {"addresses": body["addresses"]},
                                          creating=False).get("addresses")
        await self.ensure_driver()
        await self.ensure_compute()
        async with self.store.write() as tx:
            machine = await self.changeable(tx, ctx, Machine, machine_id)
            if machine.state not in STABLE_MACHINE:
                raise Conflict(f"Machine '{machine_id}' is {machine.state}; interfaces are added to a machine that "
                               "is STARTED, STOPPED, PAUSED or SUSPENDED")
            hostname = re.sub(r"[^a-z0-9-]+", "-", (machine.attrs.get("name") or machine_id).lower()).strip("-")[:63]
            row, iface = await self._plan_interface(tx, ctx, machine_id, attrs, "networkInterface",
                                                    hostname or machine_id, {})
            path = path_of(MachineNetworkInterface, row.id, machine_id)
            job = await self.jobs.queue(tx, KIND, action="add", target=f"machines/{machine_id}/networkInterfaces",
                                        # the machine first: a failure's alarm goes to its EventLog
                                        affected=[f"machines/{machine_id}", path,
                                                  f"networks/{row.internal['network']}"],
                                        steps=[{"op": "attach", "iface": asdict(iface)}],
                                        success="interface added", owner=ctx.user, interface=row.id,
                                        machine=machine_id, network=row.internal["network"])
        return job_result(ctx, job, 202, location=path)

    async def _hot_remove(self, ctx: Context, id: str, machine_id: str, if_match: str | None) -> Result:
        await self.ensure_driver()
        await self.ensure_compute()
        async with self.store.write() as tx:
            interface = await self.changeable(tx, ctx, MachineNetworkInterface, id, machine_id)
            check_if_match(interface, if_match)
            machine = await tx.get(Machine.name, machine_id)
            if machine.state not in STABLE_MACHINE:
                raise Conflict(f"Machine '{machine_id}' is {machine.state}; wait for its Job to finish")
            if interface.state != "ACTIVE":
                raise Conflict(f"MachineNetworkInterface '{id}' is {interface.state}; wait for its Job to finish")
            interface.attrs["state"] = "DELETING"
            await tx.update(interface)
            path = path_of(MachineNetworkInterface, id, machine_id)
            job = await self.jobs.queue(tx, KIND, action="delete", target=path,
                                        affected=[f"machines/{machine_id}", path],
                                        steps=[{"op": "detach", "mac": interface.attrs["macAddress"]}],
                                        success="interface removed", owner=ctx.user, interface=id,
                                        machine=machine_id, network=interface.internal["network"])
        return job_result(ctx, job, 202, location=path)

    async def _run_interface(self, job: Row, step: dict) -> None:
        await self.ensure_compute_for_job()
        network_id, machine_id, interface_id = job.internal["network"], job.internal["machine"], job.internal["interface"]
        if step["op"] == "attach":
            # Reserved first: the guest's DHCP request, as soon as it sees the link, gets its Address.
            await self.driver.set_reservations(network_id, await self._reservations(self.store, network_id))
            iface = dict(step["iface"])
            iface["dns"] = tuple(iface.get("dns") or ())
            await self.drivers.compute.attach_interface(machine_id, InterfaceSpec(**iface))
        else:
            await self.drivers.compute.detach_interface(machine_id, step["mac"])
            await self.driver.set_reservations(network_id, await self._reservations(self.store, network_id,
                                                                                    without=interface_id))

    async def ensure_compute_for_job(self) -> None:
        if self.drivers.compute is None:
            raise DriverError("this provider runs no machines")
        await self.drivers.open("compute")

    async def _finish_interface(self, tx: Transaction, job: Row, outcome: str, message: str) -> None:
        interface = await tx.get(MachineNetworkInterface.name, job.internal["interface"])
        if interface is None or outcome == "STEP":
            return
        step = job.internal["steps"][0]
        if step["op"] == "attach" and outcome == "SUCCESS":
            return await self._activate(tx, interface, step["iface"])
        if step["op"] == "attach":  # failed or stopped: undo whatever reached the host
            if job.internal.get("begun") and self.drivers.compute is not None:
                try:
                    await self.drivers.compute.detach_interface(interface.parent, interface.attrs["macAddress"])
                except DriverError as exc:
                    log.warning("machine %s: interface %s not removed after a failed add: %s", interface.parent,
                                interface.attrs["macAddress"], exc)
            await self._remove_interface(tx, interface, job.owner)
            return await self._sync_reservations(tx, interface.internal["network"])
        if outcome == "SUCCESS":
            await self._remove_interface(tx, interface, job.owner)
            return await self._sync_reservations(tx, interface.internal["network"])
        interface.attrs["state"] = "ACTIVE"  # not removed: still there
        await tx.update(interface)


# A NetworkPort is listed in its network's networkPorts (a NetworkNetworkPort of the same id) while it exists.

async def insert_port(tx: Transaction, port: Row) -> None:
    await tx.insert(port)
    await tx.insert(network_port_link(port))


async def delete_port(tx: Transaction, port_id: str) -> None:
    await tx.delete(NetworkPort.name, port_id)
    await tx.delete(NetworkNetworkPort.name, port_id)


def network_port_link(port: Row) -> Row:
    return Row(NetworkNetworkPort.name, port.id, port.internal["network"], owner=port.owner,
               attrs={"created": port.attrs["created"], "updated": port.attrs["created"],
                      "networkPort": {"href": f"networkPorts/{port.id}"}})
