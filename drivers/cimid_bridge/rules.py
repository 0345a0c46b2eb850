"""nftables: one table, `inet cimid_<instance>`, that this cimid owns and nothing else touches. It is rebuilt whole from
what should be (networks, NAT, forwarding groups) in one atomic transaction, so there is never a
half-applied rule set and rebuilding after a restart is the same call as any change.

Driven through libnftables (Debian's libnftables1, the library the `nft` command is a thin front of), in
this process through ctypes, in JSON: JSON keeps link names and comments out of a command language, and
in-process saves what an `nft -j` subprocess costs per transaction (about 20 ms of process start and
cache load, more than a whole bridge + dnsmasq start). Debian's own binding (python3-nftables) is a
system package a virtualenv cannot import, and pyroute2's nftables support is still partial; the five
calls used here are libnftables' stable API (libnftables(3)).
Every rule carries a comment naming what it is for ("net:<id>", "group:<id>"), which is how `network()`
tells whether a network's rules are present."""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import json
import threading
import weakref

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


class Nftables:
    """A libnftables context with JSON in and out; one thread at a time uses it (its calls block on
    netlink, so the async methods run them off the event loop)."""

    JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON: output in JSON, and input parsed as JSON

    def __init__(self):
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise DriverError(f"cannot load libnftables (Debian: libnftables1): {exc}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise DriverError("libnftables could not make a context")
        lib.nft_ctx_output_set_flags(ctx, self.JSON)
        lib.nft_ctx_buffer_output(ctx)  # output and errors into memory, not to stdout and stderr
        lib.nft_ctx_buffer_error(ctx)
        self._lib, self._ctx, self._lock = lib, ctx, threading.Lock()
        weakref.finalize(self, lib.nft_ctx_free, ctx)

    def run(self, document: dict) -> dict:
        """Run one JSON document (one transaction) and return what it printed (a document too, or {})."""
        with self._lock:
            failed = self._lib.nft_run_cmd_from_buffer(self._ctx, json.dumps(document).encode())
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""  # each read also empties the buffer
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if failed:
            raise DriverError(f"nft: {err.decode(errors='replace').strip() or 'failed'}")
        return json.loads(out) if out.strip() else {}

    async def apply(self, table: str, networks: list, groups: dict[str, list[str]]) -> None:
        """Replace the table with the rules for this state, atomically."""
        if any(nat(n) for n in networks) or groups:
            with open(IP_FORWARD, "w") as f:  # routing between links at all (NAT, groups); the table filters
                f.write("1")
        await asyncio.to_thread(self.run, ruleset(table, networks, groups))

    async def comments(self, table: str) -> list[str]:
        """The comments of the rules in the table as it is now ([] if there is no table)."""
        try:
            out = await asyncio.to_thread(self.run, {"nftables": [{"list": {"table": {"family": FAMILY, "name": table}}}]})
        except DriverError as exc:
            if "No such file or directory" in str(exc):
                return []
            raise
        return [item["rule"].get("comment", "") for item in out.get("nftables", []) if "rule" in item]
