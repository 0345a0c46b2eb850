"""Typed records of what happened to a resource: its state changed (by a Job, or by the host by itself),
it was created, changed or deleted, or something went wrong with it (a Job failed, a guest crashed).

They are queued inside the write transaction that records the change (`Transaction.emit`); the events
family writes each as a CIMI Event in that same transaction just before it commits (cimid.service.
event_logs), and they are published after the commit (`Store.subscribe`), so a change that rolled back
leaves no Event and announces nothing.

Who asked (the access Event of a consumer's request) travels with the request, in `current_request`.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..model import ResourceType
from ..store.db import Row
from .hrefs import now, path_of

log = logging.getLogger("cimid.events")


@dataclass(frozen=True)
class StateChanged:
    """A resource's state changed: by a Job working for `initiator`, or by the host by itself (no
    initiator). `reason` says why."""

    type: str  # the resource type's name
    resource: str  # its path relative to the base URI, e.g. machines/abc
    previous: str
    current: str
    reason: str
    time: str = field(default_factory=now)
    owner: str = ""  # the consumer the resource belongs to ('' : the provider)
    name: str = ""  # the resource's name, if it has one
    initiator: str = ""

    @property
    def severity(self) -> str:
        return "critical" if self.current == "ERROR" else "low"

    @property
    def summary(self) -> str:
        return f"{self.reason} ({self.previous} -> {self.current})"

@dataclass(frozen=True)
class ModelChanged:
    """A resource was created, changed or deleted."""

    type: str
    resource: str
    change: str  # created | changed | deleted
    detail: str
    owner: str = ""
    name: str = ""
    initiator: str = ""
    time: str = field(default_factory=now)


@dataclass(frozen=True)
class Alarm:
    """Something went wrong with a resource: a Job working on it failed, its guest crashed."""

    type: str
    resource: str
    code: int
    detail: str
    owner: str = ""
    name: str = ""
    severity: str = "high"
    initiator: str = ""
    time: str = field(default_factory=now)


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
    owner: str = ""  # the consumer the Job worked for: the Event is theirs to see
    name: str = ""

    severity = "medium"

    @property
    def summary(self) -> str:
        return f"fault rule {self.rule} applied to {self.operation}: {self.effect} ({self.message})"


RECORDS = (StateChanged, ModelChanged, Alarm, FaultApplied)


@dataclass
class Request:
    """A consumer's request that changes something: the first transaction carrying it out that records a
    change also records who asked, as an access Event."""

    initiator: str
    operation: str  # add, edit, delete, or an operation's URI
    recorded: bool = False


current_request: ContextVar[Request | None] = ContextVar("current_request", default=None)


def state_changed(rtype: ResourceType, row: Row, previous: str | None, reason: str,
                  initiator: str = "") -> StateChanged | None:
    """The record of `row`'s state change from `previous`, or None when it did not change."""
    if previous == row.state:
        return None
    return StateChanged(rtype.name, path_of(rtype, row.id, row.parent), previous or "", row.state or "", reason,
                        owner=row.owner, name=row.attrs.get("name", ""), initiator=initiator)


def model_changed(rtype: ResourceType, row: Row, change: str, initiator: str = "", detail: str = "") -> ModelChanged:
    return ModelChanged(rtype.name, path_of(rtype, row.id, row.parent), change,
                        detail or f"{rtype.name} {change}", owner=row.owner, name=row.attrs.get("name", ""),
                        initiator=initiator)


def log_event(event: object) -> None:
    if isinstance(event, StateChanged):
        log.info("%s %s: %s (%s -> %s)", event.type, event.resource, event.reason, event.previous, event.current)
    elif isinstance(event, Alarm):
        log.warning("%s %s: %s", event.type, event.resource, event.detail)
    elif isinstance(event, FaultApplied):
        log.info("%s %s: %s", event.type, event.resource, event.summary)
