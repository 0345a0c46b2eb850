"""Typed records of what happened to a resource without a consumer asking (a guest powered off, crashed).

They are queued inside the write transaction that records the change and published only after it commits
(`Transaction.emit`, `Store.subscribe`), so a change that rolled back announces nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .hrefs import now

log = logging.getLogger("cimid.events")


@dataclass(frozen=True)
class StateChanged:
    """The host changed a resource's state by itself."""

    type: str  # the resource type's name
    resource: str  # its path relative to the base URI, e.g. machines/abc
    previous: str
    current: str
    reason: str
    time: str = field(default_factory=now)

    @property
    def severity(self) -> str:
        return "CRITICAL" if self.current == "ERROR" else "LOW"

    @property
    def summary(self) -> str:
        return f"{self.reason} ({self.previous} -> {self.current})"


@dataclass(frozen=True)
class FaultApplied:
    """A fault rule of the test-control extension took effect on one operation (cimid.service.testing)."""

    type: str  # the resource type's name
    resource: str  # its path relative to the base URI, e.g. machines/abc
    rule: str  # the rule's path, e.g. testControl/faultRules/xyz
    operation: str  # the operation kind it hit: create, start, import ...
    effect: str  # fail | slow | error
    message: str
    time: str = field(default_factory=now)

    severity = "MEDIUM"

    @property
    def summary(self) -> str:
        return f"fault rule {self.rule} applied to {self.operation}: {self.effect} ({self.message})"


def log_event(event: StateChanged | FaultApplied) -> None:
    log.info("%s %s: %s", event.type, event.resource, event.summary)
