"""Catalogue resources: create (by value, by reference with overrides), read, update, delete, ETags."""

import json

import pytest
from conftest import NS, assert_state

CIMI = "http://schemas.dmtf.org/cimi/1"

CONFIG = {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "xl", "description": "extra large",
          "properties": {"tier": "gold"}, "cpu": 8, "memory": 16777216, "cpuArch": "x86_64",
          "disks": [{"capacity": 52428800, "format": "ext4", "initialLocation": "/dev/vda"}]}

CONFIG_XML = f"""<MachineConfiguration xmlns="{CIMI}">
  <name>  xl-xml </name><property key="tier">silver</property>
  <cpu> 8 </cpu><memory>16777216</memory>
  <disk><capacity>1048576</capacity><format>raw</format></disk>
  <cpuArch>x86_64</cpuArch>
</MachineConfiguration>"""


async def test_create_read_configuration_json(app_client):
    r = await app_client.post("machineConfigs", CONFIG)
    assert r.status == 201
    loc = r.headers["Location"]
    assert r.json["id"] == loc and r.headers["CIMI-Job-URI"].startswith(app_client.base + "jobs/")
    got = (await app_client.get(loc)).json
    for key in ("name", "description", "properties", "cpu", "memory", "cpuArch", "disks"):
        assert got[key] == CONFIG[key]
    assert got["created"] == got["updated"] and got["created"].endswith("Z")
    ops = {o["rel"] for o in got["operations"]}
    assert ops == {"edit", "delete", "urn:x-cimid:action:unpublish"}  # an admin's entry is public
    job = (await app_client.get(r.headers["CIMI-Job-URI"])).json
    assert_state(job, "SUCCESS")
    assert job["action"] == "add" and job["progress"] == 100
    assert job["affectedResources"] == [{"href": loc}]


async def test_create_configuration_xml_lenient(app_client):
    r = await app_client.post("machineConfigs", CONFIG_XML, fmt="xml")
    assert r.status == 201, r
    assert r.xml.findtext("c:name", namespaces=NS) == "xl-xml"
    got = (await app_client.get(r.headers["Location"])).json
    assert got["cpu"] == 8 and got["properties"] == {"tier": "silver"}
    assert got["disks"] == [{"capacity": 1048576, "format": "raw"}]


async def test_xml_without_namespace_is_accepted(app_client):
    body = "<MachineConfiguration><name>nons</name><cpu>1</cpu><memory>1024</memory></MachineConfiguration>"
    r = await app_client.post("machineConfigs", body)
    assert r.status == 201, r


async def test_full_update_replaces_and_removes(app_client):
    loc = (await app_client.post("machineConfigs", CONFIG)).headers["Location"]
    new = dict(CONFIG, name="xl2", cpu=16)
    del new["description"]
    r = await app_client.put(loc, new)
    assert r.status == 200 and r.headers["CIMI-Job-URI"]
    got = (await app_client.get(loc)).json
    assert got["name"] == "xl2" and got["cpu"] == 16 and "description" not in got
    assert got["updated"] >= got["created"]


async def test_partial_update_with_select(app_client):
    loc = (await app_client.post("machineConfigs", CONFIG)).headers["Location"]
    r = await app_client.put(loc, {"name": "renamed"}, params={"$select": "name,description"})
    assert r.status == 200
    got = (await app_client.get(loc)).json
    assert got["name"] == "renamed" and "description" not in got and got["cpu"] == 8
    assert got["properties"] == {"tier": "gold"}


async def test_partial_update_rejects_attributes_outside_select(app_client):
    loc = (await app_client.post("machineConfigs", CONFIG)).headers["Location"]
    before = await app_client.rows()
    r = await app_client.put(loc, {"name": "x", "cpu": 2}, params={"$select": "name"})
    assert r.status == 400 and "cpu" in r.json["statusMessage"]
    assert await app_client.rows() == before


async def test_read_only_attributes_are_ignored_on_update(app_client):
    loc = (await app_client.post("machineImages", {"name": "img", "imageLocation": "file:///a.qcow2"})).headers["Location"]
    got = (await app_client.get(loc)).json
    r = await app_client.put(loc, dict(got, state="ERROR", imageLocation="file:///b", name="img2",
                                       created="2000-01-01T00:00:00Z"))
    assert r.status == 200
    after = (await app_client.get(loc)).json
    await app_client.assert_state(after, "AVAILABLE")
    assert after["imageLocation"] == "file:///a.qcow2"
    assert after["name"] == "img2" and after["created"] == got["created"]


async def test_etag_and_if_match(app_client):
    loc = (await app_client.post("machineConfigs", CONFIG)).headers["Location"]
    r = await app_client.get(loc)
    tag = r.headers["ETag"]
    before = await app_client.rows()
    stale = await app_client.put(loc, dict(CONFIG, name="a"), headers={"If-Match": '"999"'})
    assert stale.status == 412 and stale.json["id"] == ""
    assert await app_client.rows() == before
    ok = await app_client.put(loc, dict(CONFIG, name="a"), headers={"If-Match": tag})
    assert ok.status == 200 and ok.headers["ETag"] != tag
    gone = await app_client.delete(loc, headers={"If-Match": tag})
    assert gone.status == 412
    assert (await app_client.delete(loc, headers={"If-Match": ok.headers["ETag"]})).status == 200
    assert (await app_client.get(loc)).status == 404


async def test_delete_makes_a_job(app_client):
    loc = (await app_client.post("machineConfigs", CONFIG)).headers["Location"]
    r = await app_client.delete(loc)
    assert r.status == 200 and r.json["action"] == "delete"
    assert_state(r.json, "SUCCESS")
    assert (await app_client.get(r.headers["CIMI-Job-URI"])).json["targetResource"]["href"] == loc


async def test_image_and_template_by_reference(app_client):
    img = (await app_client.post("machineImages", {"name": "deb", "imageLocation": "file:///img/deb.qcow2"}))
    assert img.status == 201 and img.json["type"] == "IMAGE"
    await app_client.assert_state(img.json, "AVAILABLE")
    tpl = await app_client.post("machineTemplates", {
        "name": "t", "initialState": "STOPPED", "userData": "aGVsbG8=",
        "machineConfig": {"href": app_client.base + "machineConfigs/tiny"},
        "machineImage": {"href": img.headers["Location"]}})
    assert tpl.status == 201, tpl
    got = (await app_client.get(tpl.headers["Location"], params={"$expand": "machineImage"})).json
    assert got["machineImage"]["imageLocation"] == "file:///img/deb.qcow2"
    assert got["machineConfig"] == {"href": app_client.base + "machineConfigs/tiny"}


async def test_template_with_configuration_by_value_xml(app_client):
    body = f"""<MachineTemplate xmlns="{CIMI}"><name>byvalue</name>
      <machineConfig><cpu>2</cpu><memory>2048</memory></machineConfig>
      <machineImage href="{app_client.base}machineImages/tiny-linux"/></MachineTemplate>"""
    r = await app_client.post("machineTemplates", body, fmt="xml")
    assert r.status == 201, r
    assert r.xml.findtext("c:machineConfig/c:cpu", namespaces=NS) == "2"


async def test_credential_from_template_by_reference_with_overrides(app_client):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0 alice@example"
    tpl = await app_client.post("credentialTemplates", {"name": "admin", "userName": "admin", "key": key})
    assert tpl.status == 201
    r = await app_client.post("credentials", {
        "resourceURI": f"{CIMI}/CredentialCreate", "name": "alice-cred",
        "credentialTemplate": {"href": tpl.headers["Location"], "userName": "alice", "password": "s3cret"}})
    assert r.status == 201, r
    cred = (await app_client.get(r.headers["Location"])).json
    assert cred["userName"] == "alice" and cred["key"] == key and "password" not in cred  # write-only
    stored = [json.loads(row[6]) for row in await app_client.rows() if row[0] == "Credential"]
    assert [doc.get("password") for doc in stored] == ["s3cret"]  # stored, for the machine
    assert cred["name"] == "alice-cred"
    x = (await app_client.get(r.headers["Location"], fmt="xml")).xml
    assert bytes.fromhex(x.findtext("c:key", namespaces=NS)).decode() == key


async def test_credential_by_value_xml(app_client):
    body = f"""<CredentialCreate xmlns="{CIMI}"><name>c</name>
      <credentialTemplate><userName>bob</userName><password>pw</password></credentialTemplate></CredentialCreate>"""
    r = await app_client.post("credentials", body, fmt="xml")
    assert r.status == 201, r
    assert r.xml.findtext("c:userName", namespaces=NS) == "bob"


async def test_credential_template_override_can_erase(app_client):
    tpl = await app_client.post("credentialTemplates", {"userName": "admin", "password": "pw"})
    r = await app_client.post("credentials", {"credentialTemplate": {"href": tpl.headers["Location"],
                                                                      "password": None}})
    assert r.status == 201 and "password" not in r.json
    stored = [json.loads(row[6]) for row in await app_client.rows() if row[0] == "Credential"]
    assert len(stored) == 1 and "password" not in stored[0]  # erased, not merely hidden


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_jobs_collection_lists_catalogue_jobs(app_client, fmt):
    await app_client.post("machineConfigs", CONFIG)
    r = await app_client.get("jobs", fmt=fmt, params={"$filter": "action='add'"})
    assert r.status == 200
    if fmt == "json":
        assert r.json["count"] == 1
        assert_state(r.json["jobs"][0], "SUCCESS")
    else:
        assert r.xml.findtext("c:count", namespaces=NS) == "1"
