"""Wire dialects: how CIMI documents look in bytes. Each dialect turns plain attribute dicts into a body
and back; HTTP picks one per request through `dialect_for`, and nothing above or below this package
knows element names, namespaces or the error document's shape."""

from __future__ import annotations

from typing import Protocol

from ..model import ResourceType
from .cimi1 import DIALECT


class Dialect(Protocol):
    name: str
    media_types: dict[str, str]  # format (json, xml) -> Content-Type
    error_type: ResourceType  # what an error document is rendered as

    def parse(self, fmt: str, body: bytes) -> tuple[str | None, dict]: ...

    def render(self, fmt: str, doc: dict, rtype: ResourceType, item_type: ResourceType | None = None) -> bytes: ...

    def error(self, *, status: int, title: str, message: str, target: str, method: str, time: str,
              request_id: str | None = None) -> dict: ...


def dialect_for(headers) -> Dialect:
    """The dialect a request speaks. Only CIMI 1.1 today; a 2.0 dialect will be chosen here by its media
    type or version header."""
    return DIALECT
