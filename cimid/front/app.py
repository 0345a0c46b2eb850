"""`cimid front`: one CIMI provider for a whole federation, with no state of its own.

- A single resource (and everything under it: operations, sub-collections, Jobs) is routed to the node
  that owns it, through the id -> node index cached from etcd; a miss asks the live nodes and indexes
  the answer.
- A collection is asked of every live node with the same $filter and a total $orderby (id last), and
  their pages are merged exactly (merge.py); `count` is the sum.
- A create goes where the `cimid_place` hook says (built-in: fits, then fewest machines), after its
  cpu and memory are reserved in the etcd ledger by compare-and-swap (placement.py).
- Every node address in ids, hrefs and headers is rewritten to the front's own base URL.
- A node without a lease answers 503 for its resources; collections leave it out with a `Warning`
  header, or answer 503 when front.strict is set.
- `$expand` (expand.py), the live Event stream (events.py), and what every node has under one id
  (shared.py: ResourceMetadata, the provider's EventLog) have modules of their own; what all of them use to
  talk to one node (asking, forwarding, rewriting addresses, the live nodes) is in forward.py.
- GETs to nodes go through a lean keep-alive client (nodeclient.py), everything else through aiohttp;
  both with the federation's client certificate when cluster.tls_ca is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime

import aiohttp
import pluggy
from aiohttp import web

from ..cluster.certs import client_context
from ..cluster.etcd import Etcd, EtcdUnavailable
from ..cluster.node import FRONT_HEADER, RESERVATION_HEADER
from ..cluster.quota import COUNTED, QuotaLedger
from ..config import Config, ConfigError, is_loopback
from ..errors import BadRequest, CimiError, MethodNotAllowed, NotFound, Unavailable
from ..hookspecs import PlacementRequest
from ..http.negotiation import JSON, request_format
from ..http.auth import Authenticator
from ..http.params import cut_short, positive
from ..http.tls import FRONT_USER_HEADER
from ..model import TYPES
from ..model.registry import collection_type
from ..model.types import CIMI_NS
from ..plugins import plugin_manager
from ..wire import dialect_for
from . import catalogue, events, expand, nodeattr, shared
from .forward import (BODY_TYPE, DIRECTORY, NODE_CLIENT, SESSION, SETTINGS, ask, caller, client_format, discover,
                      forward, front_base, live, passed_on, render, rewrite)
from .catalogue import CATALOGUE, GlobalCatalogue
from .directory import Directory, NodeRecord
from .identity import AUTHENTICATOR, TenantDirectory, authenticate_middleware, user_header
from .merge import merge, orderby_param, parse_orderby
from .nodeattr import NODE
from .nodeclient import NodeClient
from .placement import BuiltinPlacement, Ledger, collection_level, create_level
from .reconciler import Reconciler, parse_ids

log = logging.getLogger("cimid.front")

LEDGER = web.AppKey("ledger", Ledger)
QUOTAS = web.AppKey("quotas", QuotaLedger)
PLUGINS = web.AppKey("plugins", pluggy.PluginManager)
RECONCILER = web.AppKey("reconciler", asyncio.Task)

# The create-time extension naming the node to create on (Incus's --target, Sirocco's location).
TARGET = "cimid:target"

_PAGING = ("$first", "$last", "$orderby", "$select", "$format")


@web.middleware
async def cimi_errors(request: web.Request, handler):
    """Every refusal of the front itself is a CIMI error document, in the format the client asked for."""
    try:
        try:
            return await handler(request)
        except ConnectionResetError as exc:
            if (gone := cut_short(request, exc)) is None:
                raise
            raise gone from None
        except EtcdUnavailable as exc:
            raise Unavailable(f"the federation's etcd cluster does not answer ({exc}); nothing that needs it "
                              "can be done now, reads of known resources still work", headers={"Retry-After": "5"})
    except CimiError as error:
        dialect = dialect_for(request.headers)
        try:
            fmt = client_format(request)
        except CimiError:
            fmt = JSON
        doc = dialect.error(status=error.status, title=error.title, message=error.message,
                            target=str(request.url.with_query(None)), method=request.method,
                            time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        return web.Response(status=error.status, body=dialect.render(fmt, doc, dialect.error_type),
                            headers={**error.headers, "Content-Type": dialect.media_types[fmt]})


# ------------------------------------------------------------------ talking to one node

# ------------------------------------------------------------------ routes

async def cloud_entry_point(request: web.Request) -> web.Response:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not allowed on the CloudEntryPoint; use GET", ["GET"])
    for node in sorted(live(request), key=lambda n: -n.api_level):  # the newest node lists every collection
        try:
            return (await forward(request, node))[1]
        except Unavailable:
            continue
    raise Unavailable("no node of the federation answers; retry later", headers={"Retry-After": "5"})


async def collection(request: web.Request) -> web.Response:
    name = request.match_info["collection"]
    rtype = collection_type(name)
    if rtype is None:
        raise NotFound(f"this provider has no collection '{name}'")
    if shared.is_shared(name):
        return await shared.from_any_node(request)
    if name in catalogue.GLOBAL:
        await _catalogue_ready(request)
        if request.method == "GET" and expand.wanted(request):
            return await expand.around(request, lambda r: catalogue.serve_collection(
                r, rtype, caller(r), front_base(r)), rtype, collection=True)
        return await catalogue.serve_collection(request, rtype, caller(request), front_base(request))
    if request.method == "POST":
        return await _create(request, name)
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not allowed on a collection; use GET or POST", ["GET", "POST"])
    return await _query(request, name, rtype)


async def _query(request: web.Request, name: str, rtype, path: str | None = None) -> web.Response:
    """The merged collection `name`, or the sub-collection at `path` (relative to /cimi/)."""
    directory, settings = request.app[DIRECTORY], request.app[SETTINGS]
    path = path or name
    client_format(request)  # a bad $format or Accept fails before any node is asked
    first, last = positive(request, "$first"), positive(request, "$last")
    order = parse_orderby(request.query.getall("$orderby", []))
    node_filter = nodeattr.split(request.query.getall("$filter", []))  # the nodes know no cimid:node
    query = [(k, v) for k, v in request.query.items() if k not in _PAGING and k != "$filter"]
    query += [("$filter", f) for f in node_filter.filters]
    query += [("$orderby", orderby_param([o for o in order if o[0] != NODE])), ("$first", "1")]
    if last is not None:
        query.append(("$last", str(last)))  # every node's first `last` rows hold the merged page
    wanted = None
    if "$select" in request.query:
        wanted = {n.strip() for v in request.query.getall("$select") for n in v.split(",") if n.strip()}
        query.append(("$select", ",".join(sorted((wanted | {n for n, _ in order}) - {NODE}))))
    every = live(request, collection_level(name))
    nodes = [n for n in every if node_filter.admits(n.name)]
    missing = [n for n in directory.down() if node_filter.admits(n)]
    if settings["strict"] and missing:
        raise Unavailable(f"node(s) {', '.join(missing)} unavailable and front.strict is set; retry later",
                          headers={"Retry-After": "5"})
    base = front_base(request)
    asked = nodes or every[:1]  # no node admitted: one still gives the collection's envelope, none of its rows

    async def ask_one(node: NodeRecord):
        query_of = query if node is asked[0] else query + shared.once_only(path)  # what every node has: once
        status, _headers, data = await ask(request, node, "GET", f"/cimi/{path}", query_of, None,
                                           {"Accept": "application/json"})
        return node, status, rewrite(data, node, base)

    answers = await asyncio.gather(*(ask_one(n) for n in asked), return_exceptions=True)
    docs = []
    for node, answer in zip(asked, answers):
        if isinstance(answer, Unavailable):
            missing.append(node.name)
            continue
        if isinstance(answer, BaseException):
            raise answer
        _node, status, data = answer
        if status >= 500:
            missing.append(node.name)
        elif status != 200:  # the nodes judge the query alike: pass the first refusal on
            return passed_on(request, status, data)
        else:
            doc = json.loads(data)
            if node not in nodes:
                doc.update({rtype.items: [], "count": 0})
            for item in doc.get(rtype.items, []):
                item[NODE] = node.name
            docs.append(doc)
    if not docs:
        raise Unavailable("no node of the federation answers; retry later", headers={"Retry-After": "5"})
    if settings["strict"] and missing:
        raise Unavailable(f"node(s) {', '.join(sorted(missing))} did not answer and front.strict is set; "
                          "retry later", headers={"Retry-After": "5"})
    items = merge([d.get(rtype.items, []) for d in docs], order, first, last)
    if wanted is not None:
        extra = ({n for n, _ in order} | {NODE}) - wanted
        items = [{k: v for k, v in item.items() if k not in extra} for item in items]
    if expand.wanted(request):
        await expand.expand_all(request, items, rtype, expand.wanted(request))
    doc = {"resourceURI": docs[0]["resourceURI"], "id": f"{base}{path}", "count": sum(d["count"] for d in docs)}
    if items:
        doc[rtype.items] = items
    if "operations" in docs[0]:
        doc["operations"] = docs[0]["operations"]
    headers = {}
    if missing:
        headers["Warning"] = f'199 cimid "node(s) {", ".join(sorted(missing))} unavailable; results partial"'
    return render(request, 200, doc, rtype, rtype, headers)


async def _create(request: web.Request, name: str) -> web.Response:
    """Place, reserve, forward. A retry with the same Idempotency-Key goes to the node the first attempt
    went to (recorded in etcd before forwarding), whose own idempotency answers it once."""
    directory, ledger = request.app[DIRECTORY], request.app[LEDGER]
    body = await request.read()
    root, doc = _parse_body(request, body)
    target = doc.pop(TARGET, None) if isinstance(doc, dict) else None
    if target is not None and not isinstance(target, str):
        raise BadRequest(f"{TARGET} must be the name of a node")
    await _catalogue_ready(request)
    resolved = await request.app[CATALOGUE].by_value(caller(request), _request_type(name, root), doc,
                                                     front_base(request))
    if target is not None or resolved != doc:  # the node knows neither the extension nor global entries
        doc = resolved
        body = json.dumps({"resourceURI": f"{CIMI_NS}/{root}", **doc} if root else doc).encode()
        request[BODY_TYPE] = "application/json"
    claim = _idempotency_key(request)
    if claim is not None:
        node = await directory.claimed(claim)
        if node is not None:
            return await _create_on(request, body, _live_node(directory, node), reservation=None)
    template = await _template(request, doc) if name == "machines" else {}
    needs = _needs(template) if name == "machines" else (0, 0)
    level = create_level(name, template)
    if not live(request, level):
        raise Unavailable(f"this create needs a node of api_level {level} or more, and none is available; "
                          "retry later", headers={"Retry-After": "30"})
    tenant = caller(request)
    quota = None
    if name in COUNTED and tenant.quotas:
        amounts = {"cpu": needs[0], "memory": needs[1]} if name == "machines" else \
            {"capacity": await _volume_capacity(request, doc)} if name == "volumes" else {}
        quota = await request.app[QUOTAS].reserve(tenant.name, tenant.quotas, name, amounts)
    try:
        response, counts = await _place_and_forward(request, name, body, target, claim, needs, level)
    except BaseException:
        if quota:
            await request.app[QUOTAS].settle(tenant.name, quota, None)
        raise
    if quota:  # the resource counts for the tenant from now on, or the reservation is given back
        made = counts and response.status in (201, 202) and "Location" in response.headers
        await request.app[QUOTAS].settle(tenant.name, quota,
                                          response.headers["Location"].rstrip("/").rsplit("/", 1)[-1] if made else None)
    return response


async def _place_and_forward(request: web.Request, name: str, body: bytes, target: str | None, claim: str | None,
                             needs: tuple[int, int], level: int) -> tuple[web.Response, bool]:
    """The create on the node placement chooses; and whether this attempt made it (not another front's
    with the same Idempotency-Key)."""
    directory, ledger = request.app[DIRECTORY], request.app[LEDGER]
    placement = PlacementRequest(name, needs[0], needs[1], target, api_level=level)
    for _attempt in range(8):  # another front may reserve what we saw free: place again
        candidates = [c for c in [await ledger.candidate(n.name, n.api_level) for n in live(request, level)] if c]
        if target is not None and target not in directory.live:
            raise Unavailable(f"{TARGET} names node {target}, which is not available", headers={"Retry-After": "5"})
        chosen = request.app[PLUGINS].hook.cimid_place(request=placement, candidates=candidates)
        if chosen is None or chosen not in {c.name for c in candidates}:
            raise Unavailable(f"no node has room for {needs[0]} vCPU and {needs[1]} KiB of memory"
                              + (f" on {target}" if target else "")
                              + (f" among nodes of api_level {level} or more" if level > 1 else "")
                              + "; retry later", headers={"Retry-After": "30"})
        reservation = await ledger.reserve(chosen, *needs) if name == "machines" else None
        if name != "machines" or reservation is not None:
            break
    else:
        raise Unavailable("the nodes' capacity changed too often to place this create; retry",
                          headers={"Retry-After": "1"})
    if claim is not None:
        owner = await directory.claim(claim, chosen, request.app[SETTINGS]["idempotency_seconds"])
        if owner != chosen:  # another front took the same key meanwhile: one create, on its node
            if reservation:
                await ledger.release(chosen, reservation)
            return await _create_on(request, body, _live_node(directory, owner), reservation=None), False
    return await _create_on(request, body, directory.live[chosen], reservation), True


def _live_node(directory: Directory, name: str) -> NodeRecord:
    node = directory.live.get(name)
    if node is None:
        raise Unavailable(f"this create went to node {name} before, which is unavailable; retry later",
                          headers={"Retry-After": "5"})
    return node


async def _create_on(request: web.Request, body: bytes, node: NodeRecord,
                     reservation: str | None) -> web.Response:
    # The node drops the reservation when its figures count what it made. A node that does not answer
    # leaves the outcome unknown: the reservation is left to expire.
    status, response = await forward(request, node, body,
                                      {RESERVATION_HEADER: reservation} if reservation else None)
    if reservation and status not in (200, 201, 202):
        await request.app[LEDGER].release(node.name, reservation)
    if status in (200, 201, 202):
        await _index_answer(request, node, response)
    return response


def _parse_body(request: web.Request, body: bytes) -> tuple[str | None, dict]:
    dialect = dialect_for(request.headers)
    fmt = request_format(request.headers.get("Content-Type"), body)
    return dialect.parse(fmt, body)


def _request_type(collection: str, root: str | None):
    """The type a create's body is checked as: its create wrapper (MachineCreate), else the resource."""
    rtype = collection_type(collection)
    return TYPES.get(root or "", None) or (TYPES[rtype.create_wrapper] if rtype.create_wrapper else rtype)


def _as_front(request: web.Request) -> dict[str, str]:
    """What the front asks on its own behalf (the catalogue's import) asks as an admin named after it,
    which a node believes over mutual TLS only."""
    settings = request.app[SETTINGS]
    return {FRONT_USER_HEADER: user_header("admin", settings["name"])} if settings["tls"] else {}


async def _catalogue_ready(request: web.Request) -> None:
    """The federation's catalogue started from a node's, once (see catalogue.GlobalCatalogue.import_once)."""
    async def read_node(collection: str) -> list[dict] | None:
        base = front_base(request)
        for node in live(request):
            try:
                status, _h, data = await ask(request, node, "GET", f"/cimi/{collection}", None, None,
                                              {"Accept": "application/json", **_as_front(request)})
            except Unavailable:
                continue
            if status == 200:
                return json.loads(rewrite(data, node, base)).get(collection_type(collection).items, [])
            if status == 404:
                return []  # the node does not serve this family
        return None
    await request.app[CATALOGUE].import_once(read_node)


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    return None if key is None else claim_key(request.headers.get("Authorization", ""), key)


def claim_key(authorization: str, key: str) -> str:
    """Where etcd records which node a create with this Idempotency-Key went to: per identity (the
    nodes keep keys per consumer), hashed (no credential or client text in etcd)."""
    who = hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return f"{who}/{hashlib.sha256(key.encode()).hexdigest()[:32]}"


async def _by_value(request: web.Request, doc: dict, template_key: str, config_key: str, known: str) -> dict:
    """A create's template, its attributes by value over those of the one it references (read from a node),
    with its configuration by value (read too unless it already has `known`)."""
    template = doc.get(template_key) or {}
    if not isinstance(template, dict):
        raise BadRequest(f"{template_key} must be an object")
    if "href" in template:
        template = {**await _read(request, template["href"]), **{k: v for k, v in template.items() if k != "href"}}
    config = template.get(config_key) or {}
    if isinstance(config, dict) and "href" in config and known not in config:
        config = await _read(request, config["href"])
    return {**template, config_key: config}


async def _template(request: web.Request, doc: dict) -> dict:
    """A MachineCreate's template, by value, with its configuration by value."""
    return await _by_value(request, doc, "machineTemplate", "machineConfig", "cpu")


async def _volume_capacity(request: web.Request, doc: dict) -> int:
    """The capacity (KB) a VolumeCreate asks for, from its template by value or the node-held one it
    references (global configurations are by value already). 0 when it names none: the node refuses it."""
    config = (await _by_value(request, doc, "volumeTemplate", "volumeConfig", "capacity"))["volumeConfig"]
    capacity = config.get("capacity") if isinstance(config, dict) else None
    return capacity if isinstance(capacity, int) and not isinstance(capacity, bool) and capacity > 0 else 0


def _needs(template: dict) -> tuple[int, int]:
    """(cpu, memory KiB) of a MachineCreate's template."""
    config = template["machineConfig"]
    if not isinstance(config, dict):
        raise BadRequest("machineConfig must be an object")
    try:
        return int(config.get("cpu", 0)), int(config.get("memory", 0))
    except (TypeError, ValueError):
        raise BadRequest("the machine configuration's cpu and memory must be integers") from None


async def _read(request: web.Request, href: str) -> dict:
    """A referenced resource, read from its node (the catalogue is on every node)."""
    base = front_base(request)
    if not isinstance(href, str):
        raise BadRequest("an href must be a string")
    path = href[len(base):] if href.startswith(base) else href.removeprefix("/cimi/")
    collection, _, id = path.partition("/")
    directory = request.app[DIRECTORY]
    owner = directory.live.get(directory.owner(collection, id) or "")
    for node in ([owner] if owner else []) + live(request):
        try:
            status, _h, data = await ask(request, node, "GET", f"/cimi/{collection}/{id}", None, None,
                                          {"Accept": "application/json"})
        except Unavailable:
            continue
        if status == 200:
            return json.loads(rewrite(data, node, base))
    raise BadRequest(f"{href} does not name a resource this federation has")


async def _index_answer(request: web.Request, node: NodeRecord, response: web.Response) -> None:
    """Index what a node just made (the resource and its Job), so the next request finds its owner."""
    base = front_base(request)
    for header in ("Location", "CIMI-Job-URI"):
        url = response.headers.get(header, "")
        if url.startswith(base):
            collection, _, id = url[len(base):].partition("/")
            if collection and id and "/" not in id:
                await request.app[DIRECTORY].remember(collection, id, node.name)


async def resource(request: web.Request) -> web.Response:
    """{collection}/{id}[/...]: everything under one resource goes to the node that owns it."""
    name, id, tail = request.match_info["collection"], request.match_info["id"], request.match_info["tail"]
    if collection_type(name) is None:
        raise NotFound(f"this provider has no collection '{name}'")
    if shared.is_shared(name, id):
        listed = shared.listed_under(request, name, id, tail)
        if listed is not None:
            return await _query(request, listed[0].collection, *listed)
        return await shared.resource(request, name, id, tail)
    if name in catalogue.GLOBAL:
        await _catalogue_ready(request)
        if request.method == "GET" and not tail and expand.wanted(request):
            return await expand.around(request, lambda r: catalogue.serve_resource(
                r, catalogue.GLOBAL[name], id, tail, caller(r), front_base(r)), catalogue.GLOBAL[name],
                collection=False)
        return await catalogue.serve_resource(request, catalogue.GLOBAL[name], id, tail, caller(request),
                                              front_base(request))
    directory = request.app[DIRECTORY]
    owner = directory.owner(name, id) or await discover(request, name, id)
    node = directory.live.get(owner)
    if node is None:
        raise Unavailable(f"{name}/{id} is on node {owner}, which is unavailable; retry later",
                          headers={"Retry-After": "5"})
    if request.method == "GET" and not tail:
        if expand.wanted(request) or "$select" in request.query:  # completed at the front from its JSON
            return await expand.resource(request, node, name)
        status, response = await forward(request, node)
        if status == 404:
            await directory.forget(name, id)  # the index was stale: the node no longer has it
        elif status == 200:
            nodeattr.mark(response, node.name)
        return response
    status, response = await forward(request, node)
    if name in COUNTED and not tail and request.method == "DELETE" and status in (200, 202, 204):
        await request.app[QUOTAS].deleted(name, id)
    return response


async def _list_ids(app: web.Application, node: NodeRecord, collection: str) -> set[str] | None:
    """The ids of `node`'s `collection` (for the reconciler); None if it does not answer them. The front
    asks as an admin named after itself: in CIMID-User over mutual TLS (the node believes it only from a
    front's certificate). Without TLS it has nothing to show, so a node with consumers refuses (401): that
    is logged as an error, since the index of such a node cannot be rebuilt."""
    rtype = collection_type(collection)
    if rtype is None or rtype.items is None:
        return None
    settings = app[SETTINGS]
    headers = {"Accept": "application/json", FRONT_HEADER: settings["name"]}
    if settings["tls"]:
        headers[FRONT_USER_HEADER] = user_header("admin", settings["name"])
    try:
        async with app[SESSION].get(f"{node.url}/cimi/{collection}", params={"$select": "id"},
                                    headers=headers, timeout=settings["timeout"]) as reply:
            if reply.status in (401, 403):
                log.error("reconciler: node %s refuses to list its %s (%d): %s", node.name, collection,
                          reply.status, "its consumers need the front's identity, which a front can show only "
                          "over mutual TLS (set cluster.tls_ca); its index entries cannot be rebuilt"
                          if not settings["tls"] else "it does not take this front's certificate as a front's")
                return None
            if reply.status != 200:
                return None
            return parse_ids(await reply.read(), rtype.items, f"{node.base}{collection}/")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return None


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"nothing is served at {request.path}; start at /cimi/cloudEntryPoint")


# ------------------------------------------------------------------ assembly

def make_front_app(config: Config) -> web.Application:
    cluster, front = config["cluster"], config["front"]
    if not cluster["endpoints"]:
        raise ConfigError("cimid front needs cluster.endpoints (the etcd members)")
    app = web.Application(middlewares=[cimi_errors, authenticate_middleware(bool(cluster["tls_ca"]))],
                          client_max_size=config["server"]["max_body_bytes"])
    app[SETTINGS] = {"public_base_url": front["public_base_url"], "strict": front["strict"],
                     "node_timeout": front["node_timeout"], "name": f"front-{uuid.uuid4().hex[:8]}",
                     "idempotency_seconds": config["server"]["idempotency_minutes"] * 60,
                     "timeout": aiohttp.ClientTimeout(total=front["node_timeout"]),
                     "tls": bool(cluster["tls_ca"])}
    etcd = Etcd.from_config(cluster)
    # mTLS towards the nodes: their certificates checked against the federation CA, ours shown
    node_tls = client_context(cluster["tls_ca"], cluster["tls_certificate"], cluster["tls_key"]) \
        if cluster["tls_ca"] else None
    directory = Directory(etcd, cluster["prefix"])
    app[DIRECTORY] = directory
    app[LEDGER] = Ledger(etcd, directory.prefix, front["reservation_seconds"])
    app[PLUGINS] = plugin_manager((BuiltinPlacement(),))
    app[CATALOGUE] = GlobalCatalogue(etcd, directory.prefix)
    app[QUOTAS] = QuotaLedger(etcd, directory.prefix, front["reservation_seconds"])
    tenants = TenantDirectory(etcd, directory.prefix)
    app[AUTHENTICATOR] = Authenticator.from_config(config["auth"], tenants)
    reconciler = Reconciler(etcd, directory, app[SETTINGS]["name"], lambda node, c: _list_ids(app, node, c),
                            cluster["lease_ttl"], front["reconcile_seconds"])
    app.router.add_route("*", "/cimi/cloudEntryPoint", cloud_entry_point)
    app.router.add_route("*", "/cimi/eventStream", events.event_stream)
    app.router.add_route("*", "/cimi/{collection}", collection)
    app.router.add_route("*", "/cimi/{collection}/{id}{tail:(/.*)?}", resource)
    app.router.add_route("*", "/{tail:.*}", not_found)

    async def start(_app) -> None:
        # No compression between front and node: both are on one network, and the bytes are rewritten.
        app[SESSION] = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
                                             connector=aiohttp.TCPConnector(limit=0, ssl=node_tls))
        app[NODE_CLIENT] = NodeClient(node_tls)
        await directory.start()
        tenants.start()
        if not await directory.wait_ready(cluster["etcd_timeout"] * 3):
            log.warning("etcd did not answer yet: the front starts with no node and keeps trying")
        app[RECONCILER] = asyncio.create_task(reconciler.run(), name="reconciler")

    async def stop(_app) -> None:
        app[RECONCILER].cancel()
        await asyncio.gather(app[RECONCILER], return_exceptions=True)  # gives the election up
        await tenants.stop()
        app[AUTHENTICATOR].close()
        await directory.stop()
        await app[SESSION].close()
        await app[NODE_CLIENT].close()

    app[events.STREAMS] = set()
    app.on_startup.append(start)
    app.on_shutdown.append(events.close_streams)
    app.on_cleanup.append(stop)
    return app


def front_listen(config: Config) -> tuple[str, int]:
    host, _, port = config["front"]["listen"].rpartition(":")
    host = host.strip("[]")
    if not is_loopback(host) and not config["server"]["insecure"] and not config["server"]["tls"]:
        raise ConfigError(f"refusing to serve the front on {host}, which is not a loopback address, in clear: "
                          "set server.tls = true with server.tls_certificate and server.tls_key (the nodes check "
                          "each client's Authorization), or server.insecure = true only if something else "
                          "protects the port")
    return host, int(port)
