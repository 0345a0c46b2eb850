"""EventLogs, their Events, and the templates logs are made from (CIMI 1.1 monitoring, DSP8009 1.0.2
element order); and the live stream of Events, a provider extension on the CloudEntryPoint."""

from __future__ import annotations

from .types import CIMI_NS, Attribute, Extension, Family, ResourceType, common_attributes, read_only

EVENT_TYPE_BASE = CIMI_NS + "/event/"
EVENT_TYPES = ("state", "alarm", "model", "access")
SEVERITIES = ("low", "medium", "high", "critical")
OUTCOMES = ("Pending", "Unknown", "Status", "Success", "Warning", "Failure")
# How long a log keeps its Events: the retention sweep removes older ones.
PERSISTENCE_DAYS = {"daily": 1, "weekly": 7, "monthly": 31, "yearly": 366}

EventLogSummary = ResourceType(
    "EventLogSummary",
    [read_only(severity, "integer") for severity in SEVERITIES],
    description="How many Events of each severity the log holds that the caller may see, counted when read.",
)

Event = ResourceType(
    "Event",
    [
        *common_attributes(),
        read_only("timestamp", "dateTime"),
        read_only("type", "URI", description=f"{EVENT_TYPE_BASE}state, alarm, model or access"),
        read_only("content", "struct", description="state: resName, resource, resType, state, previous; "
                  "alarm: resName, resource, resType, code, detail; model: resName, resource, resType, change, "
                  "detail; access: operation, resource, detail, initiator"),
        read_only("outcome", "string", enum=OUTCOMES),
        read_only("severity", "string", enum=SEVERITIES),
        read_only("contact", "string"),
    ],
    collection="events",
    items="events",
    parent="EventLog",
    # A record of what happened: the provider writes it, the retention sweep removes it (DSP8009 also gives
    # an Event no operation elements).
    editable=False,
    deletable=False,
    creatable=False,
    description="Something that happened to a resource: a state change, an alarm, a model change, an access.",
)

EventLog = ResourceType(
    "EventLog",
    [
        *common_attributes(),
        read_only("targetResource", "ref"),
        read_only("events", "collection", target="Event"),
        Attribute("persistence", "string", enum=tuple(PERSISTENCE_DAYS),
                  description="how long Events are kept: daily (1 day), weekly, monthly (31 days), yearly"),
        read_only("summary", "struct", target="EventLogSummary"),
    ],
    collection="eventLogs",
    items="eventLogs",
    # The provider keeps one per Machine (its eventLog) and one for itself, made with the first Event.
    creatable=False,
    description="The Events of one resource (a Machine's eventLog), or of the provider itself.",
)

EventLogTemplate = ResourceType(
    "EventLogTemplate",
    [
        *common_attributes(),
        Attribute("targetResource", "ref"),
        Attribute("persistence", "string", enum=tuple(PERSISTENCE_DAYS)),
    ],
    collection="eventLogTemplates",
    items="eventLogTemplates",
    shareable=True,
    description="What an EventLog is made with: a MachineTemplate's eventLogTemplate sets the persistence of "
                "the log of each Machine made from it.",
)

# The id of the provider's own EventLog (cimid.store.events keeps the same): every node has one under this
# id, so a front answers it for the whole federation rather than routing it to one node.
PROVIDER_LOG = "provider"

EVENT_STREAM = Extension(
    "eventStream", "urn:x-cimid:operation:eventStream", "text/event-stream",
    "Provider extension: every Event the caller may see, as Server-Sent Events, as it is committed. "
    "$filter selects Events (as on an events collection); each message's id orders them, and a client that "
    "reconnects with Last-Event-ID gets every Event after that one.",
)

FAMILY = Family("events", (EventLogSummary, Event, EventLog, EventLogTemplate), service="event_logs:EventLogs",
                entry_point_extensions=(EVENT_STREAM,))
