"""The CloudEntryPoint and ResourceMetadata, generated from the model and what the drivers provide."""

from __future__ import annotations

import sqlite3

from ..errors import BadRequest, NotFound
from ..model import TYPES, ResourceType
from ..model.types import CAPABILITY_BASE
from ..store import query as q
from .presentation import CONSOLE_REL, Context, Result, now, select_attributes

CEP_COLLECTIONS = {
    "resourceMetadata": "ResourceMetadata", "machines": "Machine", "machineTemplates": "MachineTemplate",
    "machineConfigs": "MachineConfiguration", "machineImages": "MachineImage", "credentials": "Credential",
    "credentialTemplates": "CredentialTemplate", "jobs": "Job",
}
STARTED_AT = now()


def served_types(provider) -> list[ResourceType]:
    names = ["CloudEntryPoint", "ResourceMetadata", "Machine", "Disk", "MachineSnapshot", "MachineTemplate",
             "MachineConfiguration",
             "MachineImage", "Credential", "CredentialTemplate", "Job"]
    return [TYPES[n] for n in names if provider.served(TYPES[n])]


def entry_point(provider, ctx: Context) -> dict:
    doc = {"resourceURI": TYPES["CloudEntryPoint"].type_uri, "id": ctx.base + "cloudEntryPoint",
           "name": "cimid", "description": "A single-node CIMI provider",
           "created": STARTED_AT, "baseURI": ctx.base}
    for attribute, type_name in CEP_COLLECTIONS.items():
        if provider.served(TYPES[type_name]):
            doc[attribute] = {"href": ctx.base + attribute}
    return doc


def _capabilities(provider, rtype: ResourceType) -> list[dict]:
    compute = provider.config["compute"]
    caps: dict[str, object] = {}
    if rtype.name == "CloudEntryPoint":
        caps = {n: True for n in ("ExpandParameter", "FilterParameter", "FirstParameter", "SelectParameter",
                                  "OrderByParameter", "FormatParameter")}
    elif rtype.name == "Machine":
        real_images = provider.drivers.compute.imports_images
        caps = {"DefaultInitialState": compute["default_initial_state"], "InitialStates": "STARTED,STOPPED",
                "MachineTemplateByValue": True, "MachineConfigByValue": True,
                "MachineImageByValue": not real_images, "MachineCredentialByValue": True,
                "MachineStopForce": True, "MachineStopForceDefault": False, "RestoreFromImage": True}
        if real_images:  # a cloud-init NoCloud seed carrying cimi/user-data
            caps["UserData"] = "disk"
    elif rtype.name == "Credential":
        caps = {"CredentialTemplateByValue": True}
    elif rtype.name == "Job":
        caps = {"JobRetention": provider.config["jobs"]["retention_minutes"]}
    return [{"name": name, "uri": f"{CAPABILITY_BASE}{rtype.name}/{name}", "value": value}
            for name, value in caps.items()]


def _describe(provider, rtype: ResourceType, ctx: Context) -> dict:
    doc = {"resourceURI": TYPES["ResourceMetadata"].type_uri, "id": ctx.base + f"resourceMetadata/{rtype.name}",
           "typeURI": rtype.type_uri, "name": rtype.name}
    doc["attributes"] = [
        {"name": a.name, "type": a.type, "providerMandatory": a.provider_mandatory,
         "consumerMandatory": a.consumer_mandatory, "mutable": a.mutable, "consumerWritable": a.consumer_writable,
         **({"description": a.description} if a.write_only else {})}
        for a in rtype.attributes
    ]
    caps = _capabilities(provider, rtype)
    if caps:
        doc["capabilities"] = caps
    actions = [{"name": a.name, "uri": a.uri, "description": a.description, "method": "POST",
                "inputMessage": "application/json", "outputMessage": "application/json"}
               for a in rtype.actions.values()]
    if rtype.name == "Machine":
        actions.append({"name": "console", "uri": CONSOLE_REL, "method": "GET", "outputMessage": "text/plain",
                        "description": "Provider extension: the last bytes (query parameter bytes, default "
                                       "65536) the guest wrote to its serial console."})
    if actions:
        doc["actions"] = actions
    return doc


def resource_metadata_by_id(provider, ctx: Context, id: str) -> dict:
    for rtype in served_types(provider):
        if rtype.name == id:
            return _describe(provider, rtype, ctx)
    raise NotFound(f"there is no ResourceMetadata '{id}'")


def resource_metadata_collection(provider, ctx: Context, params):
    """A handful of documents, queried through SQLite like every other collection (an in-memory table)."""
    docs = [_describe(provider, t, ctx) for t in served_types(provider)]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE rm (seq INTEGER PRIMARY KEY, name TEXT, typeURI TEXT)")
    db.executemany("INSERT INTO rm (seq, name, typeURI) VALUES (?, ?, ?)",
                   [(i, d["name"], d["typeURI"]) for i, d in enumerate(docs)])

    def resolve(name: str):
        return q.Column(name, "string") if name in ("name", "typeURI") else None

    try:
        where = [q.compile_filter(text, resolve) for text in params.filters]
        order = ", ".join(q.compile_orderby(text, resolve) for text in params.orderby if text.strip())
    except q.QueryError as exc:
        raise BadRequest(str(exc)) from None
    cond = " AND ".join(sql for sql, _ in where) or "1"
    args = [v for _, values in where for v in values]
    count = db.execute(f"SELECT count(*) FROM rm WHERE {cond}", args).fetchone()[0]
    start = max(params.first or 1, 1)
    limit = -1 if params.last is None else max(params.last - start + 1, 0)
    seqs = [r[0] for r in db.execute(f"SELECT seq FROM rm WHERE {cond} ORDER BY {order + ', ' if order else ''}seq"
                                     " LIMIT ? OFFSET ?", [*args, limit, start - 1])]
    rtype = TYPES["ResourceMetadata"]
    items = [select_attributes(docs[s], rtype, params.select) for s in seqs]
    doc = {"resourceURI": rtype.collection_uri, "id": ctx.base + "resourceMetadata", "count": count}
    if items:
        doc[rtype.items] = items
    return Result(200, rtype, doc, item_type=rtype)
