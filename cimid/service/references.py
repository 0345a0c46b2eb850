"""References between resources: checked when stored, resolved (by value, or by reference with
overrides) when a template is used."""

from __future__ import annotations

from ..errors import BadRequest, Conflict
from ..model import TYPES, Attribute, ResourceType, collection_type
from ..model.validate import require
from ..store.db import Transaction
from .hrefs import href_to_id, split_href

ENTRY_POINT = "cloudEntryPoint"  # what a reference to the provider itself names (a host Meter's target)


class References:
    async def check(self, tx: Transaction, rtype: ResourceType, attrs: dict, scope: str | None) -> None:
        """Store references as relative hrefs, after checking that each names an existing resource that
        the caller (`scope`, see Context.scope) may see."""
        for attr in rtype.attributes:
            value = attrs.get(attr.name)
            if attr.type != "ref" or not isinstance(value, dict):
                continue
            if not attr.target:  # a reference to a resource of any type (an EventLogTemplate's target)
                if "href" in value:
                    attrs[attr.name] = {"href": await self._anything(tx, value["href"], attr.name, scope)}
                continue
            target = TYPES[attr.target]
            if "href" in value:
                id = href_to_id(value["href"], target, attr.name)
                if await tx.get(target.name, id, scope) is None:
                    raise BadRequest(f"{attr.name}: '{value['href']}' does not name an existing {target.name}")
                overrides = {k: v for k, v in value.items() if k != "href"}
                if overrides:
                    raise BadRequest(f"{attr.name}: a stored {rtype.name} refers to a {target.name} by href "
                                     "alone; give overrides when creating from it")
                attrs[attr.name] = {"href": f"{target.collection}/{id}"}
            else:
                await self.check(tx, target, value, scope)

    async def available(self, tx: Transaction, target: ResourceType, href: str, where: str,
                        scope: str | None):
        """The `target` resource `href` names, which the caller may see and which is AVAILABLE (an image to
        restore from, or to make a volume from): 400 if there is none, 409 if it is not ready."""
        id = href_to_id(href, target, where)
        row = await tx.get(target.name, id, scope)
        if row is None:
            raise BadRequest(f"{where}: '{href}' does not name an existing {target.name}")
        if row.state != "AVAILABLE":
            raise Conflict(f"{target.name} '{id}' is {row.state}, not AVAILABLE")
        return row

    async def _anything(self, tx: Transaction, href: str, where: str, scope: str | None) -> str:
        """The relative href of the resource `href` names, of whatever type, if the caller may see it."""
        if href.strip("/").rsplit("/cimi/", 1)[-1] == ENTRY_POINT:
            return ENTRY_POINT
        collection, id = split_href(href)
        target = collection_type(collection)
        if target is None or await tx.get(target.name, id, scope) is None:
            raise BadRequest(f"{where}: '{href}' does not name an existing resource of this provider")
        return f"{collection}/{id}"

    async def resolve(self, tx: Transaction, attr: Attribute, value: dict, scope: str | None) -> dict:
        """A by-value or by-reference(+overrides) template attribute -> the attributes it stands for; a
        referenced resource's relative href is kept as `_href`. Only what `scope` may see resolves."""
        target = TYPES[attr.target]
        if "href" not in value:
            await self.check(tx, target, value, scope)
            return dict(value)
        id = href_to_id(value["href"], target, attr.name)
        row = await tx.get(target.name, id, scope)
        if row is None:
            raise BadRequest(f"{attr.name}: '{value['href']}' does not name an existing {target.name}")
        resolved = {k: v for k, v in row.attrs.items() if k not in ("state",)}
        resolved["_href"] = f"{target.collection}/{id}"
        for key, override in value.items():
            if key == "href":
                continue
            if override is None:
                resolved.pop(key, None)  # null / empty element erases the template's value
            else:
                resolved[key] = override
        require(target, resolved, attr.name)
        return resolved
