"""Where resources live: ids, paths relative to the base URI, and back from an href to a type and id."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from ..errors import BadRequest
from ..model import REF, TYPES, ResourceType


def _random_id() -> str:
    return uuid.uuid4().hex


def _system_clock() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# Where ids and times come from: the one seam the test-control extension turns deterministic (an id
# sequence from a seed, a fixed clock it steps); see cimid.service.testing.
id_source: Callable[[], str] = _random_id
clock: Callable[[], dt.datetime] = _system_clock


def use_sources(ids: Callable[[], str] | None = None, time: Callable[[], dt.datetime] | None = None) -> None:
    """Take ids and times from these (None: random ids, the system clock again)."""
    global id_source, clock
    id_source, clock = ids or _random_id, time or _system_clock


def stamp(moment: dt.datetime) -> str:
    """dateTimes are stored in UTC with milliseconds, so comparing strings compares instants."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now() -> str:
    return stamp(clock())


def new_id() -> str:
    return id_source()


def path_of(rtype: ResourceType, id: str, parent: str = "") -> str:
    """`machineConfigs/small`, or for an item of a sub-collection `machines/{parent}/disks/{id}`; an item
    of a sub-collection's item has `{grandparent}/{parent}` as its parent (machines/m/networkInterfaces/i/
    addresses/a)."""
    if rtype.parent:
        owner = TYPES[rtype.parent]
        if owner.parent:
            grandparent, _, parent = parent.partition("/")
            return f"{path_of(owner, parent, grandparent)}/{rtype.collection}/{id}"
        return f"{owner.collection}/{parent}/{rtype.collection}/{id}"
    return f"{rtype.collection}/{id}"


_LOG_NAMESPACE = uuid.UUID("5b0e7b52-7c51-4f1e-9a55-0c1d4c2f9e61")  # cimid's own, for EventLog ids


def event_log_id(resource: str) -> str:
    """The id of the EventLog of the resource at `resource` (a path such as machines/abc): derived from it,
    so an Event finds its log without a lookup, and a log removed by its owner comes back under the same id."""
    return uuid.uuid5(_LOG_NAMESPACE, resource).hex


def split_href(href: str) -> tuple[str, str]:
    """An href (absolute, or relative to the base URI) -> (collection, id). Lenient about the host."""
    path = urlsplit(href).path if "://" in href else href
    if "/cimi/" in path:
        path = path.split("/cimi/", 1)[1]
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) != 2:
        raise BadRequest(f"'{href}' is not the URI of a resource of this provider")
    return parts[0], parts[1]


def href_to_id(href: str, rtype: ResourceType, where: str) -> str:
    collection, id = split_href(href)
    if collection != rtype.collection:
        raise BadRequest(f"{where}: '{href}' is not a {rtype.name}")
    return id


def absolute(rtype: ResourceType, attrs: dict, base: str) -> dict:
    """Turn the stored relative hrefs of one resource's attributes into absolute URLs."""
    out = {}
    for key, value in attrs.items():
        attr = rtype.attribute(key)
        if attr is not None and attr.write_only:
            continue  # also inside a template given by value (a MachineTemplate's credential)
        if attr is not None and attr.type == "ref" and isinstance(value, dict):
            target = TYPES.get(attr.target) if attr.target else None
            value = dict(absolute(target, value, base) if target else value)
            if "href" in value:
                value["href"] = base + value["href"]
        elif attr is not None and attr.type == "array" and attr.target == REF:
            value = [{"href": base + item["href"]} for item in value]
        out[key] = value
    return out
