"""CIMI 1.1 JSON: documents are already plain attribute dicts; only parsing needs care."""

from __future__ import annotations

import json

from ...errors import BadRequest

MEDIA_TYPE = "application/json"


def render(doc: dict) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (e.g. echoed in an error): \u escapes still carry it
        return json.dumps(doc, separators=(",", ":")).encode("ascii")


def parse(body: bytes) -> tuple[str | None, dict]:
    """Return (root type name from resourceURI or None, attribute dict)."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # Python's parser recurses once per level of nesting
        raise BadRequest("the body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    uri = doc.get("resourceURI")
    if uri is not None and not isinstance(uri, str):
        raise BadRequest("resourceURI must be a string")
    root = uri.rstrip("/").rsplit("/", 1)[-1] if uri else None
    return root, doc


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
