"""Networks: Linux bridges cimid owns (Network, NetworkConfiguration, NetworkTemplate), their ports
(NetworkPort and its Template and Configuration), IP address management (Address, AddressTemplate),
the forwarding between networks (ForwardingGroup and its Template), and a Machine's interfaces on them
(MachineNetworkInterface, the Machine's `networkInterfaces`, each with its `addresses`). Attributes in
DSP8009 1.0.2 (CIMI 1.1) element order.

CIMI has no attribute for a network's subnet: a NetworkConfiguration (or a NetworkTemplate's override of
it) names it in its properties (SUBNET_PROPERTIES), else the provider picks a free one from its pool."""

from __future__ import annotations

from .types import OWN_LOG, TARGETING, Action, Attribute, Family, ResourceType, common_attributes, read_only

NETWORK_STATES = ("CREATING", "STARTING", "STARTED", "STOPPING", "STOPPED", "DELETING", "ERROR")
NETWORK_TRANSITIONAL = ("CREATING", "STARTING", "STOPPING", "DELETING")
NETWORK_TYPES = ("PRIVATE", "PUBLIC")
INITIAL_STATES = ("STARTED", "STOPPED")
PORT_STATES = ("CREATING", "STARTED", "DELETING", "ERROR")
PORT_TYPES = ("ACCESS", "TRUNK")
INTERFACE_STATES = ("CREATING", "ACTIVE", "DELETING", "ERROR")
ALLOCATIONS = ("dynamic", "static")

NetworkConfiguration = ResourceType(
    "NetworkConfiguration",
    [
        *common_attributes(),
        Attribute("networkType", "string", consumer_mandatory=True, enum=NETWORK_TYPES,
                  description="PRIVATE: its machines reach each other only; PUBLIC: and the outside (NAT)"),
        Attribute("mtu", "integer", minimum=68, description="bytes, 68 to 65535; absent: the host's default"),
        Attribute("classOfService", "string", max_length=255),
    ],
    collection="networkConfigs",
    items="networkConfigurations",
    shareable=True,
    description="What a Network is made of. Its properties may place its subnet: cidr (\"10.0.7.0/24\"), "
                "gateway (the host's address in it; absent: the first), dns (comma-separated servers).",
)

NetworkTemplate = ResourceType(
    "NetworkTemplate",
    [
        *common_attributes(),
        Attribute("initialState", "string", enum=INITIAL_STATES),
        Attribute("networkConfig", "ref", target="NetworkConfiguration", by_value=True, consumer_mandatory=True),
        Attribute("forwardingGroup", "ref", target="ForwardingGroup",
                  description="a ForwardingGroup the new network joins"),
        Attribute("eventLogTemplate", "ref", target="EventLogTemplate", by_value=True,
                  description="the persistence of the network's EventLog"),
    ],
    collection="networkTemplates",
    items="networkTemplates",
    shareable=True,
    description="What a Network is made from: a configuration, its initial state, a forwarding group.",
)

NETWORK_ACTIONS = {
    a.name: a
    for a in [
        Action("start", ("STOPPED",), "STARTING", "STARTED", "Bring the bridge up and start its DHCP server."),
        Action("stop", ("STARTED",), "STOPPING", "STOPPED",
               "Stop its DHCP server and bring the bridge down (its machines lose their link)."),
    ]
}

Network = ResourceType(
    "Network",
    [
        *common_attributes(),
        read_only("state", "string", enum=NETWORK_STATES),
        read_only("networkType", "string", enum=NETWORK_TYPES),
        read_only("mtu", "integer"),
        read_only("classOfService", "string"),
        read_only("networkPorts", "collection", target="NetworkNetworkPort"),
        read_only("forwardingGroup", "ref", target="ForwardingGroup"),
        read_only("meters", "collection", target="Meter", derived=TARGETING,
                  description="the Meters whose targetResource is this Network"),
        read_only("eventLog", "ref", target="EventLog", derived=OWN_LOG),
        read_only("host", "extension", description="Provider extension: how the host realises it: bridge (the "
                  "link's name), cidr, gateway, dns, each as {\"value\": ...}"),
    ],
    collection="networks",
    items="networks",
    states=NETWORK_STATES,
    transitional_states=NETWORK_TRANSITIONAL,
    actions=NETWORK_ACTIONS,
    create_wrapper="NetworkCreate",
    template_attribute="networkTemplate",
    description="A Linux bridge cimid owns, with a DHCP server answering its Addresses; `host` shows what the "
                "provider chose: its bridge, cidr, gateway, dns.",
)

NetworkCreate = ResourceType(
    "NetworkCreate",
    [*common_attributes(), Attribute("networkTemplate", "ref", target="NetworkTemplate", by_value=True,
                                     consumer_mandatory=True)],
    request_document=True,
)

NetworkPortConfiguration = ResourceType(
    "NetworkPortConfiguration",
    [
        *common_attributes(),
        Attribute("portType", "string", enum=PORT_TYPES, description="ACCESS (the only kind a bridge port is here)"),
        Attribute("classOfService", "string", max_length=255),
    ],
    collection="networkPortConfigs",
    items="networkPortConfigurations",
    shareable=True,
    description="What a NetworkPort is made of.",
)

NetworkPortTemplate = ResourceType(
    "NetworkPortTemplate",
    [
        *common_attributes(),
        Attribute("network", "ref", target="Network", consumer_mandatory=True),
        Attribute("networkPortConfig", "ref", target="NetworkPortConfiguration", by_value=True),
    ],
    collection="networkPortTemplates",
    items="networkPortTemplates",
    shareable=True,
    description="What a NetworkPort is made from: its network and configuration.",
)

NetworkPort = ResourceType(
    "NetworkPort",
    [
        *common_attributes(),
        read_only("state", "string", enum=PORT_STATES),
        read_only("network", "ref", target="Network"),
        read_only("portType", "string", enum=PORT_TYPES),
        read_only("classOfService", "string"),
        read_only("host", "extension", description="Provider extension: peer, the link name of the operator's "
                  "end of a port made for something that is not a machine, as {\"value\": ...}"),
    ],
    collection="networkPorts",
    items="networkPorts",
    states=PORT_STATES,
    transitional_states=("CREATING", "DELETING"),
    create_wrapper="NetworkPortCreate",
    template_attribute="networkPortTemplate",
    description="A port of a Network's bridge: a machine interface's, or a veth pair made for something that "
                "is not a machine (`host` names the operator's end: peer).",
)

NetworkPortCreate = ResourceType(
    "NetworkPortCreate",
    [*common_attributes(), Attribute("networkPortTemplate", "ref", target="NetworkPortTemplate", by_value=True,
                                     consumer_mandatory=True)],
    request_document=True,
)


def _address_attributes(mutable: bool) -> list[Attribute]:
    """An Address keeps what it was made with (its DHCP reservation stands on it); its template may change."""
    return [
        *common_attributes(),
        Attribute("ip", "string", mutable=mutable, max_length=64,
                  description="static: the IPv4 address to take; dynamic: absent"),
        Attribute("hostname", "string", mutable=mutable, max_length=63),
        Attribute("allocation", "string", mutable=mutable, enum=ALLOCATIONS,
                  description="static: the given ip; dynamic (default): the next free one, handed out by DHCP"),
        read_only("defaultGateway", "string"),
        read_only("dns", "string", description="the network's DNS servers, comma-separated"),
        read_only("protocol", "string"),
        read_only("mask", "string"),
        Attribute("network", "ref", target="Network", mutable=mutable, consumer_mandatory=True),
    ]


AddressTemplate = ResourceType(
    "AddressTemplate",
    _address_attributes(True),
    collection="addressTemplates",
    items="addressTemplates",
    shareable=True,
    description="What an Address is made from: its network, and an ip for a static one.",
)

Address = ResourceType(
    "Address",
    [*_address_attributes(False), read_only("resource", "ref", description="what holds it: a machine's interface")],
    collection="addresses",
    items="addresses",
    create_wrapper="AddressCreate",
    template_attribute="addressTemplate",
    description="An IPv4 address of a Network, reserved for a machine interface (its DHCP lease and this "
                "resource always agree).",
)

AddressCreate = ResourceType(
    "AddressCreate",
    [*common_attributes(), Attribute("addressTemplate", "ref", target="AddressTemplate", by_value=True,
                                     consumer_mandatory=True)],
    request_document=True,
)


def _group_attributes() -> list[Attribute]:
    return [*common_attributes(),
            Attribute("networks", "array", target="ref",
                      description="the Networks that route to each other (hrefs of Networks)")]


ForwardingGroupTemplate = ResourceType(
    "ForwardingGroupTemplate",
    _group_attributes(),
    collection="forwardingGroupTemplates",
    items="forwardingGroupTemplates",
    shareable=True,
    description="What a ForwardingGroup is made from: its networks.",
)

ForwardingGroup = ResourceType(
    "ForwardingGroup",
    _group_attributes(),
    collection="forwardingGroups",
    items="forwardingGroups",
    create_wrapper="ForwardingGroupCreate",
    template_attribute="forwardingGroupTemplate",
    description="Networks that route to each other (without a common group they cannot); an update "
                "changes its members.",
)

ForwardingGroupCreate = ResourceType(
    "ForwardingGroupCreate",
    [*common_attributes(), Attribute("forwardingGroupTemplate", "ref", target="ForwardingGroupTemplate",
                                     by_value=True, consumer_mandatory=True)],
    request_document=True,
)

MachineTemplateNetworkInterface = ResourceType(
    "MachineTemplateNetworkInterface",
    [
        Attribute("addresses", "array", target="ref",
                  description="Addresses of the network (made beforehand) the interface takes; none: a dynamic one"),
        Attribute("network", "ref", target="Network", consumer_mandatory=True),
        Attribute("state", "string", enum=("ACTIVE",), default="ACTIVE"),
        Attribute("mtu", "integer", minimum=68),
    ],
    description="An interface of each machine made from a MachineTemplate.",
)

MachineNetworkInterface = ResourceType(
    "MachineNetworkInterface",
    [
        *common_attributes(),
        read_only("addresses", "collection", target="MachineNetworkInterfaceAddress"),
        Attribute("network", "ref", target="Network", mutable=False, consumer_mandatory=True),
        read_only("networkPort", "ref", target="NetworkPort"),
        read_only("state", "string", enum=INTERFACE_STATES),
        Attribute("macAddress", "string", mutable=False, max_length=17,
                  description="absent: one chosen by the provider (52:54:00:...)"),
        Attribute("mtu", "integer", mutable=False, minimum=68, description="absent: the network's"),
    ],
    collection="networkInterfaces",
    items="machineNetworkInterfaces",
    parent="Machine",
    states=INTERFACE_STATES,
    transitional_states=("CREATING", "DELETING"),
    editable=False,
    description="A network interface of a Machine: hot-added to a running guest (POST), hot-removed (DELETE). "
                "Give `addresses` (hrefs of Addresses of its network) in the POST to take them.",
)

MachineNetworkInterfaceAddress = ResourceType(
    "MachineNetworkInterfaceAddress",
    [
        *common_attributes(),
        read_only("address", "ref", target="Address"),
    ],
    collection="addresses",
    items="machineNetworkInterfaceAddresses",
    parent="MachineNetworkInterface",
    editable=False,
    deletable=False,
    creatable=False,
    description="An Address of a machine interface.",
)

NetworkNetworkPort = ResourceType(
    "NetworkNetworkPort",
    [
        *common_attributes(),
        read_only("networkPort", "ref", target="NetworkPort"),
    ],
    collection="networkPorts",
    items="networkNetworkPorts",
    parent="Network",
    editable=False,
    deletable=False,
    creatable=False,
    description="A NetworkPort of a Network (a machine interface's or an operator's), listed while it exists.",
)

FAMILY = Family(
    "networks",
    (NetworkConfiguration, NetworkTemplate, Network, NetworkCreate, NetworkPortConfiguration, NetworkPortTemplate,
     NetworkPort, NetworkPortCreate, AddressTemplate, Address, AddressCreate, ForwardingGroupTemplate,
     ForwardingGroup, ForwardingGroupCreate, MachineTemplateNetworkInterface, MachineNetworkInterface,
     MachineNetworkInterfaceAddress, NetworkNetworkPort),
    service="networks:Networks",
    requires="network",
    machine_template_parts=("networkInterfaces",),
)
