"""The properties every request must keep, and the request drivers the tests share.

1. The answer is never a 5xx.
2. An answer that is not 2xx changed nothing (every stored row compared); a read never changes anything.
3. Everything accepted reads back in JSON and in XML (every XML reply is checked against DSP8009 by
   conftest's Reply), the collection it went into still lists as XML, and a resource's consumer-writable
   attributes (not write-only) read back as sent.

A driver (`post_to_collection`, `put_to_resource`...) draws one request for a target the registry declares
and checks it; the tests call the drivers once per example."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from conftest import NS, Reply
from hypothesis import event
from hypothesis import strategies as st
from yarl import URL

from cimid.model import registry
from cimid.model.types import REF, Attribute, Extension, ResourceType

from . import strategies as s
from .targets import Collection, Operation, World, create_document_type, ensure_resource, path_of_href, quiet, world


@dataclass
class Request:
    method: str
    path: str  # under /cimi/, already percent-encoded
    body: s.Body | None = None
    headers: dict[str, str | None] = field(default_factory=dict)
    params: list[tuple[str, str]] = field(default_factory=list)

    def url(self) -> URL:
        query = "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in self.params)
        return URL("/cimi/" + self.path + ("?" + query if query else ""), encoded=True)

    def __repr__(self) -> str:
        body = self.body.data[:400] if self.body else None
        return f"<{self.method} {self.url()} headers={self.headers} body={body!r}>"


def _quoted(text: str) -> str:
    # lone surrogates go out as the invalid UTF-8 they would be, for the server to refuse
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


async def send(client, request: Request) -> Reply:
    headers = {k: v for k, v in request.headers.items() if v is not None}
    skip = {name for name in ("Accept", "Content-Type") if name not in headers}  # no header aiohttp makes up
    async with client.client.request(request.method, request.url(), headers=headers, skip_auto_headers=skip,
                                     data=request.body.data if request.body else None) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


# ---------------------------------------------------------------- what must read back

@dataclass
class Expectation:
    """What a resource of `rtype` must hold after an accepted write: attribute -> value as the model says
    it is stored (empty: the attribute is absent). Worked out only once the write is accepted: a refused
    document need not have the declared shapes."""

    rtype: ResourceType
    values: Callable[[], dict]


class Exact(dict):
    """A map attribute: compared whole, not as a subset."""


def _empty(value) -> bool:
    return value is None or value == "" or value == {} or value == []


def stored_form(attr: Attribute, value, fmt: str):
    """`value`, sent for `attr` in `fmt`, as the model says it is kept: XML text and enums, URIs and Base64
    stripped, references kept as the path they name."""
    if value is None:
        return None
    t = attr.type
    if t in ("string", "URI"):
        return value.strip() if fmt == "xml" or attr.enum or t == "URI" or attr.base64 else value
    if t == "map":
        return Exact({k: v.strip() if fmt == "xml" else v for k, v in value.items()})
    if t == "ref":
        target = registry.TYPES.get(attr.target) if attr.target else None
        out = stored_values(target, {k: v for k, v in value.items() if k != "href"}, fmt, creating=True) \
            if target else {}
        if value.get("href") is not None:
            out["href"] = path_of_href(value["href"].strip())
        return out
    if t == "array":
        if attr.target == REF:
            return [{"href": path_of_href(item["href"].strip())} for item in value]
        return [stored_values(registry.TYPES[attr.target], item, fmt, creating=True) for item in value]
    return value


def stored_values(rtype: ResourceType, doc: dict, fmt: str, *, creating: bool) -> dict:
    """The attributes of `doc` a consumer may set on `rtype` and read again (write-only ones are not)."""
    out = {}
    for key, value in doc.items():
        attr = rtype.attribute(key)
        if attr is None or attr.write_only or not attr.consumer_writable or not (attr.mutable or creating):
            continue
        out[key] = stored_form(attr, value, fmt)
    return out


def mismatch(expected, actual, where: str) -> str | None:
    if _empty(expected):
        return None if _empty(actual) else f"{where}: sent nothing, reads back {actual!r}"
    if isinstance(expected, Exact):
        return None if expected == actual else f"{where}: sent {dict(expected)!r}, reads back {actual!r}"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: sent {expected!r}, reads back {actual!r}"
        for key, value in expected.items():
            if key == "href":
                if not isinstance(actual.get("href"), str) or path_of_href(actual["href"]) != value:
                    return f"{where}.href: sent {value!r}, reads back {actual.get('href')!r}"
            elif (found := mismatch(value, actual.get(key), f"{where}.{key}")) is not None:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{where}: sent {expected!r}, reads back {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            if (found := mismatch(e, a, f"{where}[{i}]")) is not None:
                return found
        return None
    return None if expected == actual else f"{where}: sent {expected!r}, reads back {actual!r}"


def check_expectation(expect: Expectation, as_json: dict, as_xml) -> None:
    for name, value in expect.values().items():
        problem = mismatch(value, as_json.get(name), name)
        assert problem is None, f"{expect.rtype.name}: {problem}\nread back: {as_json}"
        attr = expect.rtype.attribute(name)
        if attr.type in ("string", "URI", "integer", "boolean") and not _empty(value):
            text = as_xml.findtext(f"c:{name}", namespaces=NS)
            sent = ("true" if value else "false") if isinstance(value, bool) else str(value)
            assert text == sent, f"{expect.rtype.name}.{name} in XML: sent {sent!r}, reads back {text!r}"


# ---------------------------------------------------------------- the properties

async def exchange(client, request: Request, expect: Expectation | None = None,
                   listing: str | None = None) -> Reply:
    """Send `request` to a quiet sandbox and check the three properties. `listing`: the collection an
    accepted request changes, which must still list as XML."""
    before = await quiet(client)
    reply = await send(client, request)
    # --hypothesis-show-statistics: how often each answer came, to well-typed bodies or to others
    event(f"{request.method} {reply.status}" + ("" if request.body is None else
                                                 " typed" if request.body.typed else " hostile"))
    assert reply.status < 500, f"{request} answered {reply.status}: {reply.body[:2000]!r}"
    if request.method in ("GET", "HEAD"):
        assert await client.rows() == before, f"a read changed the store: {request}"
    elif not 200 <= reply.status < 300:
        after = await client.rows()
        assert after == before, f"{request} was refused ({reply}) yet changed the store: " \
                                f"{sorted(set(after) ^ set(before))[:6]}"
    else:
        await read_back(client, request, reply, expect, listing)
    return reply


async def read_back(client, request: Request, reply: Reply, expect: Expectation | None,
                    listing: str | None) -> None:
    await quiet(client)
    job = None
    # hrefs are read by their path: a request may have named another Host, which they then carry
    if job_uri := reply.headers.get("CIMI-Job-URI"):
        job_uri = "/cimi/" + path_of_href(job_uri)
        as_json, as_xml = await client.get(job_uri), await client.get(job_uri, fmt="xml")
        assert as_json.status == as_xml.status == 200, f"the Job of {request} does not read back: {as_json} {as_xml}"
        job = as_json.json
    location = reply.headers.get("Location") if request.method == "POST" else None
    if location is not None:
        location = "/cimi/" + path_of_href(location)
    if request.method == "PUT":
        location = "/cimi/" + request.path
    if location and request.method != "DELETE" and (job is None or job["state"] == "SUCCESS"):
        as_json = await client.get(location)
        as_xml = await client.get(location, fmt="xml")
        assert as_json.status == 200 and as_xml.status == 200, \
            f"{request} was accepted ({reply.status}) but {location} reads back {as_json} / {as_xml}"
        if expect is not None:
            check_expectation(expect, as_json.json, as_xml.xml)
    if listing is not None:
        r = await client.get(listing, fmt="xml")
        assert r.status == 200, f"after {request}, {listing} does not list as XML: {r}"


async def agree_across_formats(client, request: Request, reply: Reply) -> None:
    """A read answers the same in JSON and in XML (same status, same count)."""
    params = [(k, v) for k, v in request.params if k != "$format"]
    answers = {}
    for media in ("application/json", "application/xml"):
        again = Request("GET", request.path, headers={"Accept": media}, params=params)
        answers[media] = await exchange(client, again)
    as_json, as_xml = answers.values()
    assert as_json.status == as_xml.status, f"{request}: JSON says {as_json}, XML says {as_xml}"
    if as_json.status == 200 and "count" in as_json.json:
        assert as_xml.xml.findtext("c:count", namespaces=NS) == str(as_json.json["count"]), (as_json, as_xml)


# ---------------------------------------------------------------- drivers, one request each

def _select(values: list[str]) -> set[str] | None:
    """`$select` as DSP0263 reads it: comma-separated names, several parameters joined; empty means all."""
    if not values:
        return None
    return {n.strip() for v in values for n in v.split(",") if n.strip()} or {"*"}


async def _parent_path(client, coll: Collection, known: World, data) -> str:
    """Where `coll` lives: its collection, or the sub-collection of an existing (or missing) parent."""
    if coll.parent is None:
        return coll.rtype.collection
    parent = await ensure_resource(client, Collection(coll.parent), known)
    missing = f"{coll.parent.collection}/no-such-parent"
    existing = data.draw(st.integers(0, 3), label="existing parent?") > 0 and parent is not None
    return f"{path_of_href(parent) if existing else missing}/{coll.rtype.collection}"


async def _resource_path(client, coll: Collection, known: World, data) -> str:
    """An existing resource of `coll` (mostly), or a strange id where one would be."""
    existing = [path_of_href(h) for h in known.in_collection(coll)]
    chosen = data.draw(s.pick(existing, None), label="resource")
    use_existing = data.draw(st.integers(0, 3), label="existing?") > 0
    elsewhere = f"{await _parent_path(client, coll, known, data)}/{data.draw(s.resource_ids([]), label='id')}"
    return chosen if use_existing and chosen is not None else elsewhere


TYPED, HOSTILE = "typed", "hostile"  # the two modes of a write: what a client means, or an attack


def _body(mode: str, root: str, rtype: ResourceType, known: World, creating: bool,
          doc: st.SearchStrategy[dict]) -> st.SearchStrategy[s.Body]:
    if mode == TYPED:
        return s.typed_body(root, rtype, doc)
    return s.hostile_body(root, rtype, known, creating=creating)


def _headers(mode: str, data, body: s.Body | None, etag: str | None = None) -> dict[str, str | None]:
    typed = mode == TYPED
    headers = {"Accept": data.draw(s.plausible_accept() if typed else s.accept(), label="Accept"),
               "If-Match": data.draw(s.plausible_if_match(etag) if typed else s.if_match(etag), label="If-Match"),
               "Host": None if typed else data.draw(s.host(), label="Host")}
    if body is not None:
        headers["Content-Type"] = data.draw(
            s.plausible_content_type(body.fmt) if typed else s.content_type(body.fmt), label="Content-Type")
    return headers


def _expectation(rtype: ResourceType, body: s.Body, compute: Callable[[], dict]) -> Expectation | None:
    """Read-back is compared for well-typed bodies, and for any JSON document cimid accepts (JSON keeps
    types, so what it took must come back as it was); XML text of a mistyped value may mean another."""
    if body.doc is not None and (body.typed or body.fmt == "json"):
        return Expectation(rtype, compute)
    return None


async def post_to_collection(client, coll: Collection, mode: str, data) -> None:
    known = await world(client)
    path = await _parent_path(client, coll, known, data)
    doc_type = create_document_type(coll.rtype)
    body = data.draw(_body(mode, doc_type.name, doc_type, known, True,
                           s.document(doc_type, known, creating=True)), label="body")
    # what a create leaves empty is not given: a default or the template's value applies (an empty map
    # cannot even be written in XML)
    expect = _expectation(coll.rtype, body, lambda: {
        k: v for k, v in stored_values(coll.rtype, body.doc, body.fmt, creating=True).items() if not _empty(v)})
    await exchange(client, Request("POST", path, body, _headers(mode, data, body)), expect, listing="/cimi/" + path)


async def put_to_resource(client, coll: Collection, mode: str, data) -> None:
    known = await world(client)
    rtype = coll.rtype
    path = await _resource_path(client, coll, known, data)
    writable = [a.name for a in rtype.attributes if a.writable]
    select_params = data.draw(st.one_of(st.just([]), st.lists(
        st.one_of(st.sampled_from(writable or ["name"]), st.sampled_from(["*", "id", "resourceURI"]), s.SHORT_TEXT),
        min_size=1, max_size=3).map(lambda names: [",".join(names)])), label="$select")
    select = _select(select_params)
    only = None if select is None or "*" in select else select
    body = data.draw(_body(mode, rtype.name, rtype, known, False,
                           s.document(rtype, known, creating=False, only=only)), label="body")
    current = await client.get("/cimi/" + path)
    covered = [n for n in writable if (only is None or n in only) and not rtype.attribute(n).write_only]

    def after_update() -> dict:
        # an attribute the update covers but leaves out is removed (a write-only one is kept, unseen)
        sent = stored_values(rtype, body.doc, body.fmt, creating=False)
        return {n: sent.get(n) for n in covered}
    await exchange(client, Request("PUT", path, body, _headers(mode, data, body, current.headers.get("ETag")),
                                   [("$select", v) for v in select_params]),
                   _expectation(rtype, body, after_update), listing="/cimi/" + path.rsplit("/", 1)[0])


async def use_operation(client, op: Operation, mode: str, data) -> None:
    owner = Collection(op.owner)
    await ensure_resource(client, owner, await world(client))
    known = await world(client)  # with what ensure_resource made
    path = f"{await _resource_path(client, owner, known, data)}/{op.name}"
    if isinstance(op.declared, Extension):
        params = data.draw(st.lists(st.tuples(s.SHORT_TEXT, s.position()), max_size=2), label="query")
        await exchange(client, Request("GET", path, headers=_headers(mode, data, None), params=params))
        return
    action_type = registry.TYPES[registry.ActionRequest.name]
    body = data.draw(st.one_of(st.none(), _body(mode, action_type.name, action_type, known, True,
                                                s.action_document(op.owner, op.name, known))), label="body")
    await exchange(client, Request("POST", path, body, _headers(mode, data, body)),
                   listing="/cimi/" + path.split("/", 1)[0])


async def query_collection(client, coll: Collection, data) -> None:
    path = await _parent_path(client, coll, await world(client), data)
    request = Request("GET", path, headers={"Accept": data.draw(s.accept(), label="Accept"),
                                            "Host": data.draw(s.host(), label="Host")},
                      params=data.draw(s.query(coll.rtype), label="query"))
    reply = await exchange(client, request)
    await agree_across_formats(client, request, reply)


async def read_resource(client, coll: Collection, data) -> None:
    known = await world(client)
    path = await _resource_path(client, coll, known, data)
    request = Request("GET", path, headers={"Accept": data.draw(s.accept(), label="Accept")},
                      params=data.draw(s.query(coll.rtype), label="query"))
    reply = await exchange(client, request)
    await agree_across_formats(client, request, reply)


# Not HEAD: cimid answers it as GET (tests/http covers it), and aiohttp's client cannot read the body
# aiohttp's own parser sends with a 400 for an over-long request line.
METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS")


async def strange_paths(client, coll: Collection, data) -> None:
    """Any method on a resource, an operation or a sub-collection item of `coll`, with any id."""
    known = await world(client)
    existing = known.in_collection(coll)
    base = await _parent_path(client, coll, known, data)
    id = data.draw(s.resource_ids(existing), label="id")
    segments = sorted({*coll.rtype.actions, *coll.rtype.extensions,
                       *registry.SUB_COLLECTIONS.get(coll.rtype.name, {})}) or ["nothing"]
    tail = data.draw(st.one_of(st.just(""), st.sampled_from(segments).map(lambda seg: "/" + seg),
                               st.tuples(st.sampled_from(segments), s.resource_ids([])).map(
                                   lambda t: f"/{t[0]}/{t[1]}")), label="tail")
    method = data.draw(st.sampled_from(METHODS), label="method")
    body = None
    if method in ("PUT", "POST", "PATCH"):
        doc = s.document(coll.rtype, known, creating=False)
        body = data.draw(st.one_of(st.none(), s.typed_body(coll.rtype.name, coll.rtype, doc)), label="body")
    await exchange(client, Request(method, f"{base}/{id}{tail}", body, _headers(HOSTILE, data, body)),
                   listing="/cimi/" + base)
