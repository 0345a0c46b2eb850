"""CIMI's error shape: a Job with an empty id (DSP0263 §4.2.1.6) that says what failed and why."""

from __future__ import annotations

from ...model import TYPES, ResourceType

ERROR_TYPE: ResourceType = TYPES["Job"]


def error_document(*, status: int, title: str, message: str, target: str, method: str, time: str) -> dict:
    return {
        "resourceURI": ERROR_TYPE.type_uri, "id": "", "name": title, "state": "FAILED",
        "targetResource": {"href": target}, "action": method,
        "returnCode": status, "progress": 100, "statusMessage": message,
        "timeOfStatusChange": time,
    }
