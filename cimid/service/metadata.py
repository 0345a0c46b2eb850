"""The CloudEntryPoint and ResourceMetadata, generated from the registry and what each family's service
says about its types on this provider."""

from __future__ import annotations

from ..errors import BadRequest, NotFound
from ..model import TYPES, ResourceType
from ..model.metadata import ResourceMetadata
from ..model import registry
from ..model.registry import CloudEntryPoint
from ..model.types import CAPABILITY_BASE
from ..store.query import QueryError, page_documents
from .hrefs import now
from .present import Context, QueryParams, Result, select_attributes
from .resources import ResourceService

STARTED_AT = now()
_QUERY_PARAMETERS = ("ExpandParameter", "FilterParameter", "FirstParameter", "SelectParameter",
                     "OrderByParameter", "FormatParameter")


class Metadata(ResourceService):
    # Provider extensions assembled beside the families (the test-control extension): name -> {"uri",
    # "path" (under the base URI), "operations" (ResourceMetadata actions of the CloudEntryPoint)}.
    extensions: dict[str, dict]

    def __init__(self, family, parts):
        super().__init__(family, parts)
        self.extensions = {}

    def served_types(self) -> list[ResourceType]:
        """The CloudEntryPoint, then every type with a (sub-)collection whose family is served."""
        return [CloudEntryPoint, *(t for t in TYPES.values()
                                   if t.collection and self.parts.service_of(t) is not None)]

    async def entry_point(self, ctx: Context, params: QueryParams) -> Result:
        doc = {"resourceURI": CloudEntryPoint.type_uri, "id": ctx.base + "cloudEntryPoint",
               "name": "cimid", "description": "A single-node CIMI provider",
               "created": STARTED_AT, "baseURI": ctx.base}
        for attr in CloudEntryPoint.attributes:
            if attr.type == "collection" and self.parts.service_of(TYPES[attr.target]) is not None:
                doc[attr.name] = {"href": ctx.base + attr.name}
        used = {}
        services = {id(s): s for s in map(self.parts.service_of, self.served_types()) if s not in (None, self)}
        for service in services.values():
            used.update(await service.usage(self.store, ctx.user))
        served = [e for name, e in CloudEntryPoint.extensions.items()
                  if self.parts.service_of(registry.ENTRY_POINT_EXTENSIONS[name].types[0]) is not None]
        if served:
            doc["operations"] = [{"rel": e.uri, "href": ctx.base + e.name} for e in served]
        doc["usage"] = {key: {"used": value, **({"limit": ctx.quotas[key]} if key in ctx.quotas else {})}
                        for key, value in used.items()}
        if self.extensions:
            doc["extensions"] = {name: {"uri": e["uri"], "href": ctx.base + e["path"]}
                                 for name, e in self.extensions.items()}
        return Result(200, CloudEntryPoint, select_attributes(doc, CloudEntryPoint, params.select))

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        return {name: True for name in _QUERY_PARAMETERS} if rtype is CloudEntryPoint else {}

    def describe(self, rtype: ResourceType, ctx: Context) -> dict:
        doc = {"resourceURI": ResourceMetadata.type_uri, "id": ctx.base + f"resourceMetadata/{rtype.name}",
               "typeURI": rtype.type_uri, "name": rtype.name}
        doc["attributes"] = [
            {"name": a.name, "type": a.type, "providerMandatory": a.provider_mandatory,
             "consumerMandatory": a.consumer_mandatory, "mutable": a.mutable,
             "consumerWritable": a.consumer_writable, **({"description": a.description} if a.write_only else {})}
            for a in rtype.attributes
        ]
        service = self if rtype is CloudEntryPoint else self.parts.service_of(rtype)
        caps = [{"name": name, "uri": f"{CAPABILITY_BASE}{rtype.name}/{name}", "value": value}
                for name, value in service.capabilities(rtype).items()]
        if caps:
            doc["capabilities"] = caps
        actions = [{"name": a.name, "uri": a.uri, "description": a.description, "method": "POST",
                    "inputMessage": "application/json", "outputMessage": "application/json"}
                   for a in rtype.actions.values()]
        actions += [{"name": e.name, "uri": e.uri, "method": "GET", "outputMessage": e.media_type,
                     "description": e.description} for e in rtype.extensions.values()]
        if rtype is CloudEntryPoint:
            actions += [op for e in self.extensions.values() for op in e["operations"]]
        if actions:
            doc["actions"] = actions
        return doc

    async def get(self, ctx: Context, rtype: ResourceType, id: str, params: QueryParams,
                  parent: str | None = None) -> Result:
        for described in self.served_types():
            if described.name == id:
                return Result(200, rtype, select_attributes(self.describe(described, ctx), rtype, params.select))
        raise NotFound(f"there is no ResourceMetadata '{id}'")

    async def query(self, ctx: Context, rtype: ResourceType, params: QueryParams, parent: str = "") -> Result:
        """A handful of documents, queried like every stored collection."""
        docs = [self.describe(t, ctx) for t in self.served_types()]
        try:
            count, page = page_documents(docs, {"name": "string", "typeURI": "string"}, filters=params.filters,
                                         orderby=params.orderby, first=params.first, last=params.last)
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        items = [select_attributes(doc, rtype, params.select) for doc in page]
        return self.collection(ctx, rtype, ctx.base + rtype.collection, count, items)
