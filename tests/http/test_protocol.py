"""The protocol over HTTP: discovery, negotiation, every collection and resource in JSON and XML."""

import pytest
from conftest import NS

CIMI = "http://schemas.dmtf.org/cimi/1"
COLLECTIONS = ["resourceMetadata", "machines", "machineTemplates", "machineConfigs", "machineImages",
               "credentials", "credentialTemplates", "volumes", "volumeTemplates", "volumeConfigs",
               "volumeImages", "networks", "networkTemplates", "networkConfigs", "networkPorts",
               "networkPortTemplates", "networkPortConfigs", "addresses", "addressTemplates", "forwardingGroups",
               "forwardingGroupTemplates", "jobs", "meters", "meterTemplates", "meterConfigs",
               "eventLogs", "eventLogTemplates"]


async def test_cloud_entry_point_json(app_client):
    r = await app_client.get("cloudEntryPoint")
    assert r.status == 200
    cep = r.json
    assert cep["resourceURI"] == f"{CIMI}/CloudEntryPoint"
    assert cep["baseURI"] == app_client.base and cep["baseURI"].endswith("/")
    assert cep["id"] == app_client.base + "cloudEntryPoint"
    assert sorted(k for k, v in cep.items() if isinstance(v, dict) and "href" in v) == sorted(COLLECTIONS)
    for name in COLLECTIONS:
        assert cep[name]["href"] == app_client.base + name
    assert cep["usage"] == {"machines": {"used": 0}, "cpu": {"used": 0}, "memory": {"used": 0},
                            "volume_capacity": {"used": 0}, "networks": {"used": 0}}  # an extension


async def test_cloud_entry_point_xml_validates(app_client):
    r = await app_client.get("cloudEntryPoint", fmt="xml")
    assert r.status == 200 and r.xml is not None
    assert r.xml.tag == f"{{{CIMI}}}CloudEntryPoint"
    assert r.xml.findtext("c:baseURI", namespaces=NS) == app_client.base
    assert r.xml.find("c:machines", NS).get("href") == app_client.base + "machines"


async def test_entry_point_lists_only_served_collections(bare_app):
    cep = (await bare_app.get("cloudEntryPoint")).json
    assert "machines" not in cep and "machineConfigs" in cep
    assert (await bare_app.get("machines")).status == 404
    names = {m["name"] for m in (await bare_app.get("resourceMetadata")).json["resourceMetadatas"]}
    assert "Machine" not in names and "MachineConfiguration" in names


@pytest.mark.parametrize("name", COLLECTIONS)
@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_every_collection_reads_in_both_formats(app_client, name, fmt):
    r = await app_client.get(name, fmt=fmt)
    assert r.status == 200
    if fmt == "xml":
        assert r.xml.tag == f"{{{CIMI}}}Collection"
        assert r.xml.get("resourceURI").endswith("Collection")
        assert int(r.xml.findtext("c:count", namespaces=NS)) >= 0
    else:
        assert r.json["resourceURI"].endswith("Collection")
        assert r.json["id"] == app_client.base + name


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_every_seeded_resource_reads_in_both_formats(app_client, fmt):
    for name in ("machineConfigs", "machineImages", "machineTemplates", "resourceMetadata"):
        listing = (await app_client.get(name)).json
        items = next(v for k, v in listing.items() if isinstance(v, list))
        for item in items:
            r = await app_client.get(item["id"], fmt=fmt)
            assert r.status == 200, (item["id"], r)


async def test_format_parameter_overrides_accept(app_client):
    r = await app_client.get("cloudEntryPoint", headers={"Accept": "application/json"}, params={"$format": "XML"})
    assert r.headers["Content-Type"].startswith("application/xml") and r.xml is not None
    r = await app_client.get("cloudEntryPoint", fmt="xml", params={"$format": "json"})
    assert r.json["resourceURI"].endswith("CloudEntryPoint")


@pytest.mark.parametrize("accept,expected", [
    ("*/*", "application/json"),
    ("application/xml;q=0.9, application/json;q=0.5", "application/xml"),
    ("text/html, application/xml", "application/xml"),
    ("application/json, application/xml", "application/json"),
    ("text/xml", "application/xml"),
])
async def test_accept_negotiation(app_client, accept, expected):
    r = await app_client.get("cloudEntryPoint", headers={"Accept": accept})
    assert r.status == 200 and r.headers["Content-Type"].startswith(expected)


async def test_resource_metadata_describes_types(app_client):
    r = await app_client.get("resourceMetadata/Machine")
    rm = r.json
    assert rm["typeURI"] == f"{CIMI}/Machine" and rm["name"] == "Machine"
    attrs = {a["name"]: a for a in rm["attributes"]}
    assert attrs["state"]["consumerWritable"] is False and attrs["name"]["mutable"] is True
    caps = {c["name"]: c["value"] for c in rm["capabilities"]}
    assert caps["DefaultInitialState"] == "STARTED" and caps["MachineConfigByValue"] is True
    assert caps["MachineImageByValue"] is True and "InitialStates" in caps
    assert {a["name"] for a in rm["actions"]} == {"start", "stop", "restart", "pause", "suspend", "capture",
                                                  "snapshot", "restore", "console"}
    cep = (await app_client.get("resourceMetadata/CloudEntryPoint")).json
    assert {c["name"] for c in cep["capabilities"]} >= {"FilterParameter", "SelectParameter",
                                                      "ExpandParameter", "FirstParameter"}
    job = (await app_client.get("resourceMetadata/Job")).json
    assert job["capabilities"][0] == {"name": "JobRetention", "uri": f"{CIMI}/capability/Job/JobRetention",
                                      "value": 1440}
    x = (await app_client.get("resourceMetadata/Machine", fmt="xml")).xml
    assert x.find("c:capability[@name='DefaultInitialState']/c:value", NS).text == "STARTED"
    assert len(x.findall("{urn:x-cimid:xml:1}attribute")) == len(rm["attributes"])


async def test_resource_metadata_collection_filters_in_sql(app_client):
    r = await app_client.get("resourceMetadata", params={"$filter": "name='Machine' or name='Job'",
                                                         "$orderby": "name:desc"})
    assert [m["name"] for m in r.json["resourceMetadatas"]] == ["Machine", "Job"]
    assert r.json["count"] == 2


async def test_select_keeps_resource_uri_and_order(app_client):
    r = await app_client.get("machineConfigs/small", params={"$select": "memory,name"})
    assert list(r.json) == ["resourceURI", "name", "memory"]
    x = (await app_client.get("machineConfigs/small", fmt="xml", params={"$select": "memory,name"})).xml
    assert [c.tag.split("}")[1] for c in x] == ["name", "memory"]


async def test_select_on_collection_applies_to_items(app_client):
    r = await app_client.get("machineConfigs", params={"$select": "name,cpu"})
    assert all(set(item) == {"resourceURI", "name", "cpu"} for item in r.json["machineConfigurations"])


async def test_expand_inlines_references(app_client):
    r = await app_client.get("machineTemplates/small-tiny-linux", params={"$expand": "machineConfig"})
    conf = r.json["machineConfig"]
    assert conf["href"].endswith("/machineConfigs/small") and conf["cpu"] == 1
    assert set(r.json["machineImage"]) == {"href"}
    x = (await app_client.get("machineTemplates/small-tiny-linux", fmt="xml", params={"$expand": "*"})).xml
    assert x.find("c:machineImage/c:imageLocation", NS) is not None


async def test_first_last_window_and_count(app_client):
    r = await app_client.get("machineConfigs", params={"$orderby": "name", "$first": "2", "$last": "3"})
    assert r.json["count"] == 4
    assert [c["name"] for c in r.json["machineConfigurations"]] == ["medium", "small"]
    r = await app_client.get("machineConfigs", params={"$first": "9"})
    assert r.json["count"] == 4 and "machineConfigurations" not in r.json
    r = await app_client.get("machineConfigs", params={"$first": "3", "$last": "2"})
    assert "machineConfigurations" not in r.json


async def test_orderby_several_keys(app_client):
    r = await app_client.get("machineConfigs", params={"$orderby": "cpu:desc,name:asc"})
    assert [c["name"] for c in r.json["machineConfigurations"]] == ["large", "medium", "small", "tiny"]
    r = await app_client.get("machineConfigs", params={"$orderby": "cpu,name:desc"})
    assert [c["name"] for c in r.json["machineConfigurations"]] == ["tiny", "small", "medium", "large"]


async def test_unknown_query_parameters_are_ignored(app_client):
    r = await app_client.get("machineConfigs", params={"foo": "bar"})
    assert r.status == 200 and r.json["count"] == 4


async def test_every_resource_of_every_collection_in_both_formats(app_client):
    """One of everything, then every item of every collection, plain and expanded, JSON and XML."""
    base = app_client.base
    cred_tpl = await app_client.post("credentialTemplates", {"name": "ct", "userName": "u", "key": "ssh-rsa A"})
    await app_client.post("credentials", {"credentialTemplate": {"href": cred_tpl.headers["Location"]}})
    await app_client.post("machineImages", {"name": "snap", "type": "SNAPSHOT", "imageLocation": "file:///s",
                                            "relatedImage": {"href": base + "machineImages/tiny-linux"}})
    await app_client.post("eventLogTemplates", {"name": "keep a day", "persistence": "daily"})
    r = await app_client.post("machines", {"machineTemplate": {"href": base + "machineTemplates/small-tiny-linux"}})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    machine = (await app_client.get(r.headers["Location"])).json
    meter = await app_client.post("meters", {"meterTemplate": {"targetResource": {"href": machine["id"]},
                                                               "meterConfig": {"href": base + "meterConfigs/cpu"}}})
    assert meter.status == 201, meter
    r = await app_client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024}}})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    volume = r.headers["Location"]
    await app_client.post("volumeTemplates", {"name": "vt", "volumeConfig": {"href": base + "volumeConfigs/"
                                                                                 + (await app_client.post(
        "volumeConfigs", {"name": "1g", "capacity": 1048576})).json["id"].rsplit("/", 1)[1]}})
    r = await app_client.post("volumeImages", {"name": "snap", "imageLocation": volume})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    r = await app_client.post(machine["id"] + "/volumes", {"volume": {"href": volume}, "initialLocation": "vdb"})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    net_config = (await app_client.post("networkConfigs", {"name": "private", "networkType": "PRIVATE",
                                                           "properties": {"cidr": "10.0.7.0/24"}})).headers["Location"]
    await app_client.post("networkTemplates", {"name": "nt", "networkConfig": {"href": net_config}})
    r = await app_client.post("networks", {"networkTemplate": {"networkConfig": {"href": net_config}}})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    network = r.headers["Location"]
    await app_client.post("networkPortConfigs", {"name": "access", "portType": "ACCESS"})
    await app_client.post("networkPortTemplates", {"name": "pt", "network": {"href": network}})
    r = await app_client.post("networkPorts", {"networkPortTemplate": {"network": {"href": network}}})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    await app_client.post("addressTemplates", {"name": "at", "network": {"href": network}})
    await app_client.post("forwardingGroupTemplates", {"name": "ft", "networks": [{"href": network}]})
    r = await app_client.post("forwardingGroups", {"forwardingGroupTemplate": {"networks": [{"href": network}]}})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    r = await app_client.post(machine["id"] + "/networkInterfaces", {"network": {"href": network}})
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    interface = (await app_client.get(r.headers["Location"])).json
    seen = 0
    for name in COLLECTIONS + [app_client.url(machine["disks"]["href"]), app_client.url(machine["volumes"]["href"]),
                               app_client.url(machine["id"] + "/networkInterfaces"),
                               app_client.url(interface["addresses"]["href"]),
                               app_client.url(volume + "/images"),
                               app_client.url(machine["eventLog"]["href"]) + "/events"]:
        listing = (await app_client.get(name, params={"$expand": "*"})).json
        items = next((v for k, v in listing.items() if isinstance(v, list)), [])
        assert listing["count"] == len(items) > 0, name
        for item in items:
            for fmt in ("json", "xml"):
                for params in (None, {"$expand": "*"}):
                    got = await app_client.get(item["id"], fmt=fmt, params=params)
                    assert got.status == 200, (item["id"], got)
                    seen += 1
        for fmt_params in ({"$format": "xml"}, {"$format": "xml", "$expand": "*"}):
            assert (await app_client.get(name, params=fmt_params)).xml is not None
    assert seen > 40


async def test_head_answers_headers_only(app_client):
    r = await app_client.request("HEAD", "machineConfigs/small")
    assert r.status == 200 and r.body == b"" and r.headers["ETag"]
    assert (await app_client.request("HEAD", "machineConfigs/none")).status == 404
