"""$filter, $orderby, $first/$last end to end: typed by the model, run by SQLite, on real rows."""

import pytest
from conftest import NS

CIMI = "http://schemas.dmtf.org/cimi/1"

CONFIGS = [
    ("alpha", 1, 1024, {"env": "prod", "team": "a"}),
    ("beta", 2, 2048, {"env": "dev"}),
    ("gamma", 4, 4096, {"env": "prod", "it's": "quoted"}),
    ("delta's", 8, 8192, {}),
    ("épsilon", 2, 1024, {"env": "test"}),
]


@pytest.fixture
async def catalogue(app_client):
    for name in ("tiny", "small", "medium", "large"):  # start from the configurations made here
        assert (await app_client.delete(f"machineConfigs/{name}")).status == 200
    for name, cpu, memory, props in CONFIGS:
        body = {"name": name, "cpu": cpu, "memory": memory, "properties": props}
        if cpu >= 4:
            body["cpuArch"] = "x86_64"
        assert (await app_client.post("machineConfigs", body)).status == 201
    return app_client


async def names(client, **params):
    r = await client.get("machineConfigs", params={f"${k}": v for k, v in params.items()})
    assert r.status == 200, r
    return [c["name"] for c in r.json.get("machineConfigurations", [])]


@pytest.mark.parametrize("flt,expected", [
    ("cpu>=2", ["beta", "gamma", "delta's", "épsilon"]),
    ("cpu>=2 and memory=1024", ["épsilon"]),
    ("cpu=1 or cpu=8 and memory=8192", ["alpha", "delta's"]),
    ("(cpu=1 or cpu=8) and memory=1024", ["alpha"]),
    ("name='delta\\'s'", ["delta's"]),
    ('name="delta\'s"', ["delta's"]),
    ("name='épsilon'", ["épsilon"]),
    ("2 < cpu", ["gamma", "delta's"]),
    ("property['env']='prod'", ["alpha", "gamma"]),
    ("property[\"it's\"]='quoted'", ["gamma"]),
    ("property['env']!='prod'", ["beta", "delta's", "épsilon"]),  # like attr != v, absent keys match
    ("cpuArch='x86_64'", ["gamma", "delta's"]),
    ("cpuArch!='x86_64'", ["alpha", "beta", "épsilon"]),
    ("name!='alpha' AND cpu<4", ["beta", "épsilon"]),
    ("created>2000-01-01T00:00:00Z", ["alpha", "beta", "gamma", "delta's", "épsilon"]),
    ("created<'2000-01-01'", []),
    ("((cpu=1))", ["alpha"]),
])
async def test_filters(catalogue, flt, expected):
    assert await names(catalogue, filter=flt) == expected


async def test_several_filter_parameters_are_anded(catalogue):
    r = await catalogue.get("machineConfigs", params=[("$filter", "cpu>=2"), ("$filter", "memory<=2048")])
    assert [c["name"] for c in r.json["machineConfigurations"]] == ["beta", "épsilon"]
    assert r.json["count"] == 2


async def test_count_is_after_filtering_before_paging(catalogue):
    r = await catalogue.get("machineConfigs", params={"$filter": "cpu>=2", "$orderby": "memory:desc,name",
                                                      "$first": "2", "$last": "3"})
    assert r.json["count"] == 4
    assert [c["name"] for c in r.json["machineConfigurations"]] == ["gamma", "beta"]


async def test_filter_on_dates_matches_a_reference_computed_in_python(catalogue):
    every = (await catalogue.get("machineConfigs")).json["machineConfigurations"]
    stamp = next(c["created"] for c in every if c["name"] == "gamma")
    for op, keep in ((">", lambda c: c > stamp), (">=", lambda c: c >= stamp), ("<", lambda c: c < stamp),
                     ("<=", lambda c: c <= stamp), ("=", lambda c: c == stamp), ("!=", lambda c: c != stamp)):
        expected = [c["name"] for c in every if keep(c["created"])]
        assert await names(catalogue, filter=f"created{op}{stamp}") == expected, op
        assert await names(catalogue, filter=f"created{op}'{stamp}'") == expected, op
    assert "gamma" in await names(catalogue, filter=f"created={stamp}")
    # an offset names an instant: 01:00 at +01:00 is midnight UTC
    assert await names(catalogue, filter="created>=2000-01-01T01:00:00+01:00 and cpu=1") == ["alpha"]
    assert await names(catalogue, filter="created<2000-01-01T01:00:00+01:00") == []


async def test_machine_filters_on_state_and_properties(app_client):
    base = app_client.base
    for name, initial, owner in (("a", "STARTED", "x"), ("b", "STOPPED", "y"), ("c", "STARTED", "y")):
        r = await app_client.post("machines", {"name": name, "properties": {"owner": owner}, "machineTemplate": {
            "href": base + "machineTemplates/small-tiny-linux", "initialState": initial}})
        await app_client.wait_job(r.headers["CIMI-Job-URI"])
    r = await app_client.get("machines", params={"$filter": "state='STARTED' and property['owner']='y'"})
    assert [m["name"] for m in r.json["machines"]] == ["c"]
    r = await app_client.get("machines", fmt="xml", params={"$filter": "state='STOPPED' or name='a'",
                                                           "$orderby": "name:desc", "$select": "name,state"})
    assert [e.text for e in r.xml.findall("c:Machine/c:name", NS)] == ["b", "a"]
    r = await app_client.get("jobs", params={"$filter": "state='SUCCESS' and action='add'",
                                             "$orderby": "timeOfStatusChange:desc"})
    assert r.json["count"] >= 3


@pytest.mark.parametrize("flt,position", [
    ("cpu >= ", 8),
    ("cpu = 'two'", 7),
    ("(cpu=1", 1),  # the '(' never closed
    ("cpu=1 name='a'", 7),
    ("colour='red'", 1),
    ("property[env]='x'", 10),
])
async def test_malformed_filters_name_the_position(catalogue, flt, position):
    r = await catalogue.get("machineConfigs", params={"$filter": flt})
    assert r.status == 400 and r.json["id"] == ""
    assert f"position {position}" in r.json["statusMessage"], r.json["statusMessage"]
