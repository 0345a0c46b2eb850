"""CIMI's error shape: a Job with an empty id (DSP0263 §4.2.1.6) that says what failed and why."""

from __future__ import annotations

from ...model import TYPES, ResourceType

ERROR_TYPE: ResourceType = TYPES["Job"]


def error_document(*, status: int, title: str, message: str, target: str, method: str, time: str,
                   request_id: str | None = None) -> dict:
    """`request_id`: what a server-side failure is logged under, given in statusMessage and properties."""
    doc = {
        "resourceURI": ERROR_TYPE.type_uri, "id": "", "name": title, "state": "FAILED",
        "targetResource": {"href": target}, "action": method,
        "returnCode": status, "progress": 100, "statusMessage": message,
        "timeOfStatusChange": time,
    }
    if request_id is not None:
        doc["statusMessage"] = f"{message} (request id {request_id})"
        doc["properties"] = {"requestId": request_id}
    return doc
