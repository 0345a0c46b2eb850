"""The catalogue: what Machines are made from (configurations, templates, credentials). Attributes in
DSP8009 1.0.2 (CIMI 1.1) element order."""

from __future__ import annotations

from .types import Attribute, Family, ResourceType, common_attributes

CPU_ARCHES = (
    "68000", "Alpha", "ARM", "Itanium", "MIPS", "PA_RISC", "POWER", "PowerPC", "x86", "x86_64",
    "z/Architecture", "SPARC",
)
INITIAL_STATES = ("STARTED", "STOPPED")

MachineConfigurationDisk = ResourceType(
    "MachineConfigurationDisk",
    [
        Attribute("capacity", "integer", consumer_mandatory=True, minimum=1, description="kilobytes"),
        Attribute("format", "string", consumer_mandatory=True, max_length=64,
                  description="file system or disk format, e.g. ext4, raw"),
        Attribute("initialLocation", "string", max_length=255),
    ],
)

MachineConfiguration = ResourceType(
    "MachineConfiguration",
    [
        *common_attributes(),
        Attribute("cpu", "integer", consumer_mandatory=True, minimum=1, description="number of virtual CPUs"),
        Attribute("memory", "integer", consumer_mandatory=True, minimum=1, description="kibibytes"),
        Attribute("disks", "array", target="MachineConfigurationDisk"),
        Attribute("cpuArch", "string", enum=CPU_ARCHES),
        Attribute("cpuSpeed", "integer", minimum=1, description="megahertz"),
    ],
    collection="machineConfigs",
    items="machineConfigurations",
    shareable=True,
    description="The virtual hardware of a Machine to be created.",
)


def _credential_attributes() -> list[Attribute]:
    return [
        *common_attributes(),
        Attribute("userName", "string", max_length=64),
        Attribute("password", "string", max_length=255, write_only=True,
                  description="write-only: stored and given to the machine, never returned (not with $select "
                              "or $expand either); an update that leaves it out keeps the stored one"),
        Attribute("key", "byte[]", max_length=16384, description="SSH public key"),
    ]


Credential = ResourceType(
    "Credential",
    _credential_attributes(),
    collection="credentials",
    items="credentials",
    create_wrapper="CredentialCreate",
    template_attribute="credentialTemplate",
    description="The first administrative user of a Machine.",
)

CredentialTemplate = ResourceType(
    "CredentialTemplate",
    _credential_attributes(),
    collection="credentialTemplates",
    items="credentialTemplates",
    shareable=True,
    description="What a Credential is made from.",
)

CredentialCreate = ResourceType(
    "CredentialCreate",
    [*common_attributes(), Attribute("credentialTemplate", "ref", target="CredentialTemplate", by_value=True,
                                     consumer_mandatory=True)],
    request_document=True,
)

MachineTemplateVolume = ResourceType(
    "MachineTemplateVolume",
    [
        Attribute("href", "URI", consumer_mandatory=True, description="an existing Volume to attach"),
        Attribute("initialLocation", "string", max_length=32, description="its guest device name, e.g. vdb"),
    ],
    description="A Volume a MachineTemplate attaches to the machines made from it.",
)

MachineTemplateVolumeTemplate = ResourceType(
    "MachineTemplateVolumeTemplate",
    [
        Attribute("href", "URI", description="a VolumeTemplate; or give its volumeConfig (and volumeImage) here"),
        Attribute("initialLocation", "string", max_length=32, description="the guest device name, e.g. vdc"),
        Attribute("volumeConfig", "ref", target="VolumeConfiguration", by_value=True),
        Attribute("volumeImage", "ref", target="VolumeImage"),
    ],
    description="A Volume made with each machine from a VolumeTemplate (by reference or by value), and attached.",
)

MachineTemplate = ResourceType(
    "MachineTemplate",
    [
        *common_attributes(),
        Attribute("initialState", "string", enum=INITIAL_STATES),
        Attribute("machineConfig", "ref", target="MachineConfiguration", by_value=True),
        Attribute("machineImage", "ref", target="MachineImage", by_value=True),
        Attribute("credential", "ref", target="Credential", by_value=True),
        Attribute("volumes", "array", target="MachineTemplateVolume",
                  description="existing Volumes attached to the machine when it is made"),
        Attribute("volumeTemplates", "array", target="MachineTemplateVolumeTemplate",
                  description="Volumes made with the machine and attached to it; they outlive it"),
        Attribute("networkInterfaces", "array", target="MachineTemplateNetworkInterface",
                  description="the machine's interfaces, each on a Network (none: one on the provider's default "
                              "network, if it has one)"),
        Attribute("userData", "string", max_length=65536, base64=True, description="Base64-encoded user data"),
        Attribute("eventLogTemplate", "ref", target="EventLogTemplate", by_value=True,
                  description="the persistence of the machine's EventLog"),
    ],
    collection="machineTemplates",
    items="machineTemplates",
    shareable=True,
    description="What a Machine is made from: configuration, image, credential, user data.",
)

FAMILY = Family(
    "catalogue",
    (MachineConfigurationDisk, MachineConfiguration, Credential, CredentialTemplate, CredentialCreate,
     MachineTemplateVolume, MachineTemplateVolumeTemplate, MachineTemplate),
    service="catalogue:Catalogue",
)
