"""The CIMI 1.1 dialect (DSP0263 1.1, XML per DSP8009 1.0.2), in JSON and XML."""

from __future__ import annotations

from ...model import ResourceType
from . import json
from .errors import ERROR_TYPE, error_document

JSON, XML = "json", "xml"


class Cimi1:
    name = "cimi-1.1"
    media_types = {JSON: json.MEDIA_TYPE, XML: "application/xml"}
    error_type = ERROR_TYPE

    def parse(self, fmt: str, body: bytes) -> tuple[str | None, dict]:
        """(the root type a body names, or None; its attributes)."""
        if fmt == XML:
            from . import xml  # lxml is loaded only once someone speaks XML
            return xml.parse(body)
        return json.parse(body)

    def render(self, fmt: str, doc: dict, rtype: ResourceType, item_type: ResourceType | None = None) -> bytes:
        """One resource of `rtype`, or with `item_type` a collection of such items."""
        if fmt == XML:
            from . import xml
            return xml.render_collection(doc, item_type) if item_type is not None else xml.render(doc, rtype)
        return json.render(doc)

    def error(self, **facts) -> dict:
        return error_document(**facts)


DIALECT = Cimi1()
