"""nftables: one table, `inet cimid_<instance>`, that this cimid owns and nothing else touches. It is rebuilt whole from
what should be (networks, NAT, forwarding groups) in one atomic `nft` transaction, so there is never a
half-applied rule set and rebuilding after a restart is the same call as any change.

Driven through `nft -j` (JSON in and out) as a subprocess: JSON keeps link names and comments out of a
command language, the CLI is the interface nftables keeps stable (the libnftables Python binding is a
Debian package that a virtualenv cannot install, and pyroute2's nftables support is still partial).
Every rule carries a comment naming what it is for ("net:<id>", "group:<id>"), which is how `network()`
tells whether a network's rules are present."""

from __future__ import annotations

import asyncio
import ipaddress
import json

from cimid.errors import DriverError

FAMILY = "inet"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def _is(key: str, value) -> dict:
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": value}}


def _rule(table: str, chain: str, comment: str, *expr) -> dict:
    return {"add": {"rule": {"family": FAMILY, "table": table, "chain": chain, "comment": comment,
                             "expr": list(expr)}}}


ACCEPT, DROP = {"accept": None}, {"drop": None}
RETURN_TRAFFIC = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}


def _port(protocol: str, port: int) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": "dport"}}, "right": port}}


def _not_in(key: str, names: list[str]) -> dict:
    return {"match": {"op": "!=", "left": {"meta": {"key": key}}, "right": {"set": names}}}


def ruleset(table: str, networks: list, groups: dict[str, list[str]]) -> dict:
    """The whole table for the `networks` (NetworkSpecs) and forwarding `groups` {id: [network ids]}:
    guests on one bridge reach each other; a group's members route to each other; a NATed network reaches
    its uplink (or, with none named, any link that is not a cimid bridge: the default route's) masqueraded
    and gets the answers; everything else to or from a cimid bridge is dropped, and a PRIVATE network's
    guests reach nothing on the host but its DHCP and DNS."""
    by_id = {n.network_id: n for n in networks}
    bridges = sorted(n.bridge for n in networks)
    whole = {"family": FAMILY, "name": table}
    cmds: list[dict] = [{"add": {"table": whole}}, {"delete": {"table": whole}}]
    if not networks:
        return {"nftables": cmds}
    cmds.append({"add": {"table": whole}})

    def rule(chain, comment, *expr):
        return _rule(table, chain, comment, *expr)

    for name, hook, kind, prio in (("forward", "forward", "filter", 0), ("input", "input", "filter", 0),
                                   ("postrouting", "postrouting", "nat", 100)):
        cmds.append({"add": {"chain": {"family": FAMILY, "table": table, "name": name, "type": kind,
                                       "hook": hook, "prio": prio, "policy": "accept"}}})
    # Order matters: every accept comes before the drops that would otherwise catch it.
    for n in networks:  # bridged traffic (br_netfilter shows it with the bridge as in and out link)
        cmds.append(rule("forward", f"net:{n.network_id}", _is("iifname", n.bridge), _is("oifname", n.bridge), ACCEPT))
    for group_id, members in sorted(groups.items()):
        present = [by_id[m] for m in members if m in by_id]  # a member deleted meanwhile has no bridge
        for a in present:
            for b in present:
                if a is not b:
                    cmds.append(rule("forward", f"group:{group_id}", _is("iifname", a.bridge),
                                      _is("oifname", b.bridge), ACCEPT))
    for n in filter(nat, networks):  # answers from outside, never from another cimid network
        outside = _is("iifname", n.uplink) if n.uplink else _not_in("iifname", bridges)
        cmds.append(rule("forward", f"net:{n.network_id}", outside, _is("oifname", n.bridge), RETURN_TRAFFIC, ACCEPT))
    for n in networks:
        cmds.append(rule("forward", f"net:{n.network_id}", _is("oifname", n.bridge), DROP))
    for n in filter(nat, networks):  # out (any other cimid bridge was dropped just above)
        out = [_is("oifname", n.uplink)] if n.uplink else []
        cmds.append(rule("forward", f"net:{n.network_id}", _is("iifname", n.bridge), *out, ACCEPT))
        subnet = ipaddress.ip_network(n.cidr)
        source = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                            "right": {"prefix": {"addr": str(subnet.network_address), "len": subnet.prefixlen}}}}
        out = _is("oifname", n.uplink) if n.uplink else _not_in("oifname", bridges)
        cmds.append(rule("postrouting", f"net:{n.network_id}", source, out, {"masquerade": None}))
    for n in networks:
        cmds.append(rule("forward", f"net:{n.network_id}", _is("iifname", n.bridge), DROP))
        if n.network_type == "PRIVATE":
            for protocol, port in (("udp", 67), ("udp", 53), ("tcp", 53)):
                cmds.append(rule("input", f"net:{n.network_id}", _is("iifname", n.bridge), _port(protocol, port), ACCEPT))
            cmds.append(rule("input", f"net:{n.network_id}", _is("iifname", n.bridge), DROP))
    return {"nftables": cmds}


def nat(spec) -> bool:
    """A PUBLIC network routed out through the host: masqueraded to its uplink, or the default route's."""
    return spec.network_type == "PUBLIC" and not spec.bridged and bool(spec.cidr)


async def _nft(binary: str, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        proc = await asyncio.create_subprocess_exec(binary, "-j", *args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise DriverError(f"cannot run {binary}: {exc}") from None
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise DriverError(f"nft: {err.decode(errors='replace').strip() or 'exit status ' + str(proc.returncode)}")
    return out


async def apply(binary: str, table: str, networks: list, groups: dict[str, list[str]]) -> None:
    """Replace the table with the rules for this state, atomically."""
    if any(nat(n) for n in networks) or groups:
        with open(IP_FORWARD, "w") as f:  # routing between links at all (NAT, groups); the table filters
            f.write("1")
    await _nft(binary, "-f", "-", stdin=json.dumps(ruleset(table, networks, groups)).encode())


async def comments(binary: str, table: str) -> list[str]:
    """The comments of the rules in the table as it is now ([] if there is no table)."""
    try:
        out = await _nft(binary, "list", "table", FAMILY, table)
    except DriverError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    return [item["rule"].get("comment", "") for item in json.loads(out)["nftables"] if "rule" in item]
