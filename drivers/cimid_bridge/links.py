"""Links through pyroute2 (netlink), never `ip` or `brctl`: the bridges, the veth pairs of ports, and
the uplink a bridged network takes. Every link cimid makes carries an alias ("cimid:<instance>:<kind>:<id>",
the instance naming the cimid that made it: its state directory), so that a cimid can tell its own links,
orphans included, from anything else on the host, another cimid's too."""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import socket

import psutil
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cimid.errors import DriverError

IFNAME_MAX = 15  # IFNAMSIZ - 1


def alias(owner: str, kind: str, object_id: str) -> str:
    """The mark of a link made by the cimid `owner` ("cimid:<instance>:") for a network or port."""
    return f"{owner}{kind}:{object_id}"


def port_names(port_id: str) -> tuple[str, str]:
    """(bridge end, operator end) of a port's veth pair: short, stable names derived from its id."""
    digest = hashlib.sha256(port_id.encode()).hexdigest()[:10]
    return f"cimp{digest}", f"cimq{digest}"


def _index(ipr: IPRoute, ifname: str) -> int | None:
    try:  # one request for that name (link_lookup would list every link)
        return ipr.link("get", ifname=ifname)[0]["index"]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _attr(link, name: str):
    return link.get_attr(name) if hasattr(link, "get_attr") else link.get(name)


def owned_links(owner: str) -> dict[str, str]:
    """{ifname: alias} of every link the cimid `owner` made (its alias says so)."""
    with IPRoute() as ipr:
        found = {}
        for link in ipr.get_links():
            name, mark = _attr(link, "IFLA_IFNAME"), _attr(link, "IFLA_IFALIAS")
            if mark and mark.startswith(owner):
                found[name] = mark
        return found


def foreign_subnets(own: set[str]) -> dict[str, str]:
    """{IPv4 subnet: ifname} of every address on a link not named in `own`. Through getifaddrs (psutil), not
    netlink: a pyroute2 dump of links and addresses costs milliseconds, and a network create asks this."""
    found = {}
    for ifname, addresses in psutil.net_if_addrs().items():
        if ifname in own:
            continue
        for address in addresses:
            if address.family == socket.AF_INET and address.netmask:
                found[str(ipaddress.IPv4Network(f"{address.address}/{address.netmask}", strict=False))] = ifname
    return found


def link_alias(ifname: str) -> str | None:
    """The alias of the link `ifname` ("" when it has none); None when there is no such link."""
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        if index is None:
            return None
        return _attr(ipr.get_links(index)[0], "IFLA_IFALIAS") or ""


def byte_counters(ifnames: set[str]) -> dict[str, tuple[int, int]]:
    """{ifname: (bytes received, bytes sent)} of those of `ifnames` that exist, from one netlink dump."""
    with IPRoute() as ipr:
        found = {}
        for link in ipr.get_links():
            name, stats = _attr(link, "IFLA_IFNAME"), _attr(link, "IFLA_STATS64")
            if name in ifnames and stats is not None:
                found[name] = (stats["rx_bytes"], stats["tx_bytes"])
        return found


def link_state(ifname: str) -> dict | None:
    """{"up": bool, "mtu": int, "addresses": [cidr...], "master": ifname|None, "alias": str} of a link;
    None if absent."""
    with IPRoute() as ipr:
        try:
            link = ipr.link("get", ifname=ifname)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        index = link["index"]
        master = _attr(link, "IFLA_MASTER")
        addresses = [f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)
                     if a["family"] in (2, 10)]
        return {"up": bool(link["flags"] & 1), "mtu": _attr(link, "IFLA_MTU"), "addresses": addresses,
                "master": _attr(ipr.get_links(master)[0], "IFLA_IFNAME") if master else None,
                "alias": _attr(link, "IFLA_IFALIAS") or ""}


def make_bridge(ifname: str, mark: str, mtu: int | None, gateway: str | None, cidr: str | None,
                up: bool = False, ipr: IPRoute | None = None) -> bool:
    """The bridge `ifname` with its alias, MTU and host address, up or down; a bridge of ours with that
    name is brought to that shape; any other link of that name is a clash (DriverError, nothing changed).

    :return: whether the bridge was made now (not there before)
    """
    if len(ifname) > IFNAME_MAX:
        raise DriverError(f"bridge name {ifname!r} is longer than {IFNAME_MAX} characters")
    if ipr is None:
        with IPRoute() as own:
            return make_bridge(ifname, mark, mtu, gateway, cidr, up, own)
    try:  # made at once; a link of that name already there is looked at only then (netlink round trips)
        ipr.link("add", ifname=ifname, kind="bridge", br_stp_state=0, br_forward_delay=0)
        made = True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise DriverError(f"cannot make bridge {ifname}: {exc.args[1] if len(exc.args) > 1 else exc}") from None
        made = False
    link = ipr.link("get", ifname=ifname)[0]
    index = link["index"]
    if not made:
        existing = _attr(link, "IFLA_IFALIAS") or ""
        if existing != mark:
            raise DriverError(f"a link named {ifname} already exists and cimid did not make it for this "
                              f"network ({'its alias is ' + repr(existing) if existing else 'no cimid alias'}); "
                              "choose another network or remove that link")
    try:
        settings = {"ifalias": mark} if made else {}
        if mtu is not None:
            settings["mtu"] = mtu
        if up:
            settings["state"] = "up"
        if settings:
            ipr.link("set", index=index, **settings)
        if gateway and cidr:
            prefix = ipaddress.ip_network(cidr).prefixlen
            present = set() if made else {(_attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
            if (gateway, prefix) not in present:
                ipr.addr("add", index=index, address=gateway, prefixlen=prefix)
    except NetlinkError as exc:
        if made:
            ipr.link("del", index=index)
        raise DriverError(f"cannot set up bridge {ifname}: {exc.args[1] if len(exc.args) > 1 else exc}") from None
    return made


def make_bridges(wanted: list[tuple]) -> dict[str, str]:
    """make_bridge for each tuple of its arguments, in one netlink session that reads every link and
    address once, and changes only the bridges not already as wanted (adoption of many networks).

    :return: {ifname: problem} of the bridges that could not be made
    """
    problems = {}
    with IPRoute() as ipr:
        found = {_attr(link, "IFLA_IFNAME"): link for link in ipr.get_links()}
        addresses: dict[int, set] = {}
        for a in ipr.get_addr(family=2):
            addresses.setdefault(a["index"], set()).add((_attr(a, "IFA_ADDRESS"), a["prefixlen"]))
        for args in wanted:
            ifname, mark, mtu, gateway, cidr, up = args
            link = found.get(ifname)
            if link is not None and _attr(link, "IFLA_IFALIAS") == mark \
                    and (mtu is None or _attr(link, "IFLA_MTU") == mtu) and bool(link["flags"] & 1) == up \
                    and (not (gateway and cidr) or (gateway, ipaddress.ip_network(cidr).prefixlen)
                         in addresses.get(link["index"], set())):
                continue
            try:
                make_bridge(*args, ipr=ipr)
                if link is not None and link["flags"] & 1 and not up:  # left up by a Job cut short
                    ipr.link("set", index=link["index"], state="down")
            except DriverError as exc:
                problems[ifname] = str(exc)
    return problems


def set_up(ifname: str, up: bool) -> None:
    with IPRoute() as ipr:
        try:  # by name: one netlink round trip
            ipr.link("set", ifname=ifname, state="up" if up else "down")
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise DriverError(f"the bridge {ifname} is missing") from None
            raise


def delete(ifname: str) -> None:
    """Remove a link; one that is gone is not an error."""
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        if index is not None:
            try:
                ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != 19:  # ENODEV: gone meanwhile (a veth goes with its peer)
                    raise


def make_veth(bridge: str, names: tuple[str, str], mark: str, mtu: int | None) -> None:
    """A veth pair whose first end is enslaved to `bridge` and up; the other is left for the operator."""
    inside, outside = names
    with IPRoute() as ipr:
        master = _index(ipr, bridge)
        if master is None:
            raise DriverError(f"the bridge {bridge} is missing")
        for name in names:
            if _index(ipr, name) is not None:
                raise DriverError(f"a link named {name} already exists")
        ipr.link("add", ifname=inside, kind="veth", peer=outside)
        try:
            for name in names:
                index = _index(ipr, name)
                ipr.link("set", index=index, ifalias=mark)
                if mtu is not None:
                    ipr.link("set", index=index, mtu=mtu)
            ipr.link("set", index=_index(ipr, inside), master=master, state="up")
        except BaseException:
            ipr.link("del", index=_index(ipr, inside))
            raise


def enslave(uplink: str, bridge: str | None) -> None:
    """Put the uplink on `bridge` (None: take it off whatever bridge it is on)."""
    with IPRoute() as ipr:
        index = _index(ipr, uplink)
        if index is None:
            if bridge is None:
                return
            raise DriverError(f"the uplink {uplink} does not exist")
        master = _index(ipr, bridge) if bridge else 0
        ipr.link("set", index=index, master=master)
        if bridge:
            ipr.link("set", index=index, state="up")
