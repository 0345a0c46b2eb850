"""Meters (DSP0263 §5.17.3): what a Meter measures (MeterConfiguration), what one is made from
(MeterTemplate), the Meter itself and its Samples. Attributes in DSP8009 1.0.2 (CIMI 1.1) element order."""

from __future__ import annotations

from .types import CIMI_NS, Action, Attribute, Family, ResourceType, common_attributes, read_only

ASPECT_BASE = CIMI_NS + "/aspect/"
TIME_SCOPES = ("Point", "Interval")


def _measure_attributes(*, mutable: bool) -> list[Attribute]:
    """What a configuration says and a Meter copies: editable in a configuration, fixed in a Meter (its
    samples would otherwise mean different things over time), except sampleInterval."""
    return [
        Attribute("aspect", "URI", consumer_mandatory=mutable, mutable=mutable,
                  description=f"what is measured: {ASPECT_BASE}cpu, memory, disk, inputBandwidth, outputBandwidth,"
                              " or urn:x-cimid:aspect:diskIO"),
        Attribute("units", "string", mutable=mutable, max_length=64),
        Attribute("sampleInterval", "integer", minimum=1, description="seconds between samples"),
        Attribute("timeScope", "string", mutable=mutable, enum=TIME_SCOPES),
        read_only("intervalDuration", "string",
                  description="xs:duration an Interval sample covers: its sampleInterval (PT10S)"),
        Attribute("isContinuous", "boolean", mutable=mutable),
    ]


MeterConfiguration = ResourceType(
    "MeterConfiguration",
    [*common_attributes(), *_measure_attributes(mutable=True)],
    collection="meterConfigs",
    items="meterConfigurations",
    shareable=True,
    description="What a Meter measures and how often.",
)

MeterTemplate = ResourceType(
    "MeterTemplate",
    [
        *common_attributes(),
        Attribute("targetResource", "ref",
                  description="the metered resource: a Machine, a Volume, or the CloudEntryPoint for the host "
                              "itself; absent in a provider template applied to every new Machine or Volume "
                              "(meters.machine_templates, meters.volume_templates)"),
        Attribute("meterConfig", "ref", target="MeterConfiguration", by_value=True, consumer_mandatory=True),
    ],
    collection="meterTemplates",
    items="meterTemplates",
    shareable=True,
    description="What a Meter is made from: a target and a configuration.",
)

METER_ACTIONS = {
    "start": Action("start", (), "", "sampling", "Record samples again (clears a past stopTime)."),
    "stop": Action("stop", (), "", "stopped", "Stop recording samples (stopTime becomes now)."),
}

Meter = ResourceType(
    "Meter",
    [
        *common_attributes(),
        Attribute("targetResource", "ref", mutable=False),
        *_measure_attributes(mutable=False),
        read_only("samples", "collection", target="Sample"),
        Attribute("minValue", "string", max_length=64, description="the expected lowest value"),
        Attribute("maxValue", "string", max_length=64, description="the expected highest value"),
        Attribute("stopTime", "dateTime", description="no samples are recorded from this time on"),
        Attribute("expiresTime", "dateTime", description="the Meter and its samples are deleted at this time"),
    ],
    collection="meters",
    items="meters",
    actions=METER_ACTIONS,
    create_wrapper="MeterCreate",
    template_attribute="meterTemplate",
    description="Samples of one aspect of a Machine, a Volume or the host.",
)

MeterCreate = ResourceType(
    "MeterCreate",
    [*common_attributes(), Attribute("meterTemplate", "ref", target="MeterTemplate", by_value=True,
                                     consumer_mandatory=True)],
    request_document=True,
)

Sample = ResourceType(
    "Sample",
    [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        read_only("timestamp", "dateTime", description="when it was measured; for an Interval Meter, the end "
                                                       "of the interval"),
        read_only("value", "string"),
    ],
    collection="samples",
    items="samples",
    parent="Meter",
    editable=False,
    deletable=False,
    creatable=False,
    description="One measurement of a Meter; its id is its timestamp.",
)

FAMILY = Family("meters", (MeterConfiguration, MeterTemplate, Meter, MeterCreate, Sample),
                service="meters:Meters")
