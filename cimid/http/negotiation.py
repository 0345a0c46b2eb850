"""Content negotiation: `$format` over `Accept` for responses, `Content-Type` for request bodies."""

from __future__ import annotations

from ..errors import NotAcceptable, UnsupportedMediaType

JSON, XML = "json", "xml"
_TYPES = {"application/json": JSON, "application/xml": XML, "text/xml": XML}


def response_format(query_format: str | None, accept: str | None) -> str:
    """json or xml; `$format` (case-insensitive) wins over `Accept`; no preference means JSON."""
    if query_format is not None:
        fmt = query_format.strip().lower()
        if fmt not in (JSON, XML):
            raise NotAcceptable(f"$format must be json or xml, not '{query_format}'")
        return fmt
    if not accept or not accept.strip():
        return JSON
    best, best_q = None, 0.0
    for item in accept.split(","):
        media, *params = [part.strip() for part in item.split(";")]
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("*/*", "application/*"):
            candidate = JSON
        elif media == "text/*":
            candidate = XML
        elif media == "text/event-stream":  # the live Events: their data lines are JSON
            candidate = JSON
        else:
            candidate = _TYPES.get(media)
        if candidate and q > best_q:  # ties keep the earlier entry
            best, best_q = candidate, q
    if best is None:
        raise NotAcceptable(f"cimid serves application/json and application/xml, not '{accept}'")
    return best


def request_format(content_type: str | None, body: bytes) -> str:
    """json or xml for a request body; a body sent without Content-Type is sniffed."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _TYPES:
        return _TYPES[media]
    if media in ("", "application/octet-stream"):
        head = body.lstrip()[:1]
        if head == b"{":
            return JSON
        if head == b"<":
            return XML
    raise UnsupportedMediaType(f"cimid reads application/json and application/xml bodies, not '{media or 'none'}'")
