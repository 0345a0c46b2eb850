"""Machines on the sandbox (libvirt's test driver): create by value and by reference, the state machine,
Jobs with nested steps, stopping Jobs."""

from conftest import NS, assert_state, make_client

from cimid.http.keys import PROVIDER
from cimid.service.events import StateChanged

CIMI = "http://schemas.dmtf.org/cimi/1"
ACTION = f"{CIMI}/action/"
CONSOLE = "urn:x-cimid:operation:console"


def by_reference(base, **overrides):
    return {"resourceURI": f"{CIMI}/MachineCreate", "name": "web-1", "description": "front end",
            "properties": {"owner": "team-a"},
            "machineTemplate": {"href": base + "machineTemplates/small-tiny-linux", **overrides}}


async def create(client, body) -> tuple[str, dict]:
    r = await client.post("machines", body)
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert_state(job, "SUCCESS")
    return r.headers["Location"], job


async def act(client, machine, name, expect="SUCCESS", **extra):
    r = await client.post(f"{machine}/{name}", {"resourceURI": f"{CIMI}/Action", "action": ACTION + name, **extra})
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert_state(job, expect)
    return job


async def test_create_by_reference_with_overrides(app_client):
    r = await app_client.post("machines", by_reference(app_client.base, machineConfig={
        "href": app_client.base + "machineConfigs/medium"}))
    assert r.status == 202
    assert_state(r.json, "QUEUED", "RUNNING", "SUCCESS")
    assert r.json["action"] == "add"
    machine = (await app_client.get(r.headers["Location"])).json
    await app_client.assert_state(machine, "CREATING", "STARTING", "STARTED")
    job = await app_client.wait_job(r.headers["CIMI-Job-URI"])
    assert_state(job, "SUCCESS")
    assert len(job["nestedJobs"]) == 2
    for nested in job["nestedJobs"]:
        n = (await app_client.get(nested["href"])).json
        assert_state(n, "SUCCESS")
        assert n["parentJob"]["href"] == job["id"]
    m = (await app_client.get(r.headers["Location"])).json
    await app_client.assert_state(m, "STARTED")
    assert m["cpu"] == 2 and m["memory"] == 4 * 1024 * 1024
    assert m["name"] == "web-1" and m["properties"] == {"owner": "team-a"}
    assert {o["rel"] for o in m["operations"]} == {"edit", "delete", ACTION + "stop", ACTION + "restart",
                                                    ACTION + "pause", ACTION + "suspend", ACTION + "capture",
                                                    ACTION + "snapshot", ACTION + "restore", CONSOLE}
    disks = (await app_client.get(m["disks"]["href"])).json
    assert disks["count"] == 1 and disks["disks"][0]["capacity"] == 20 * 1024 * 1024
    x = (await app_client.get(m["disks"]["href"], fmt="xml")).xml
    assert x.findtext("c:Disk/c:capacity", namespaces=NS) == str(20 * 1024 * 1024)


async def test_create_by_value_xml_initially_stopped(app_client):
    body = f"""<MachineCreate xmlns="{CIMI}"><name>byval</name>
      <machineTemplate><initialState>STOPPED</initialState>
        <machineConfig><cpu>2</cpu><memory>524288</memory></machineConfig>
        <machineImage><imageLocation>file:///images/x.qcow2</imageLocation></machineImage>
        <credential><userName>root</userName><key>{b"ssh-rsa AAAA".hex()}</key></credential>
      </machineTemplate></MachineCreate>"""
    r = await app_client.post("machines", body, fmt="xml")
    assert r.status == 202, r
    assert r.xml.tag == f"{{{CIMI}}}Job"
    job = await app_client.wait_job(r.headers["CIMI-Job-URI"])
    assert_state(job, "SUCCESS")
    assert "nestedJobs" not in job
    m = (await app_client.get(r.headers["Location"], fmt="xml")).xml
    assert m.findtext("c:state", namespaces=NS) == "STOPPED"
    assert m.findtext("c:cpu", namespaces=NS) == "2"
    # a transient template or configuration never becomes visible
    assert (await app_client.get("machineConfigs")).json["count"] == 4


async def test_full_lifecycle(app_client):
    m, _ = await create(app_client, by_reference(app_client.base))
    await act(app_client, m, "pause")
    await app_client.assert_state(m, "PAUSED")
    await act(app_client, m, "start")
    await app_client.assert_state(m, "STARTED")
    await act(app_client, m, "suspend")
    got = (await app_client.get(m)).json
    await app_client.assert_state(got, "SUSPENDED")
    assert {o["rel"] for o in got["operations"]} == {"edit", "delete", ACTION + "start", CONSOLE}
    await act(app_client, m, "start")
    await act(app_client, m, "stop")
    await app_client.assert_state(m, "STOPPED")
    job = await act(app_client, m, "restart")
    await app_client.assert_state(m, "STARTED")
    assert "nestedJobs" not in job
    job = await act(app_client, m, "restart", force=True)
    assert len(job["nestedJobs"]) == 2
    await act(app_client, m, "stop", force=True)
    r = await app_client.delete(m)
    assert r.status == 202
    job = await app_client.wait_job(r.headers["CIMI-Job-URI"])
    assert_state(job, "SUCCESS")
    assert job["action"] == "delete"
    assert (await app_client.get(m)).status == 404
    assert (await app_client.get(m + "/disks")).status == 404
    rows = [r for r in await app_client.rows() if r[0] in ("Machine", "Disk")]
    assert rows == []


async def test_action_by_last_segment_and_empty_body(app_client):
    m, _ = await create(app_client, by_reference(app_client.base))
    r = await app_client.post(f"{m}/stop", {"action": "urn:whatever:stop", "force": True})
    assert r.status == 202
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    r = await app_client.post(f"{m}/start", f'<Action><action> {ACTION}start </action></Action>', fmt="xml")
    assert r.status == 202, r
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    r = await app_client.post(f"{m}/pause")
    assert r.status == 202
    await app_client.wait_job(r.headers["CIMI-Job-URI"])
    await app_client.assert_state(m, "PAUSED")


async def test_action_not_allowed_in_state_is_409_and_changes_nothing(app_client):
    m, _ = await create(app_client, by_reference(app_client.base, initialState="STOPPED"))
    before = await app_client.rows()
    r = await app_client.post(f"{m}/pause", {"action": ACTION + "pause"})
    assert r.status == 409 and "STOPPED" in r.json["statusMessage"] and r.json["id"] == ""
    assert await app_client.rows() == before


async def test_state_follows_the_hypervisor_by_itself(app_client):
    """A domain powered off behind cimid's back (as a guest shutting itself down) is seen through libvirt's
    lifecycle events, and an event records what happened and why."""
    import asyncio
    m, _ = await create(app_client, by_reference(app_client.base))
    machine_id = m.rsplit("/", 1)[1]
    events = []
    app_client.app[PROVIDER].store.subscribe(events.append)
    driver = app_client.app[PROVIDER].drivers.compute
    await driver._call(lambda: driver._require(machine_id).destroy())  # behind cimid's back
    for _ in range(100):
        if (await app_client.get(m)).json["state"] == "STOPPED":
            break
        await asyncio.sleep(0.02)
    await app_client.assert_state(m, "STOPPED")
    assert [(e.type, e.resource, e.previous, e.current) for e in events if isinstance(e, StateChanged)] == [
        ("Machine", f"machines/{machine_id}", "STARTED", "STOPPED")]
    assert events[0].reason == "the machine was powered off"
    await act(app_client, m, "start")  # and the machine is usable as ever
    await app_client.assert_state(m, "STARTED")


async def test_an_event_the_host_no_longer_agrees_with_changes_nothing(app_client):
    """libvirt's events reach cimid on a thread of their own, in no fixed order with a Job's look at the
    host: one that is older news than what a Job settled the machine with (the machine's run before a stop)
    is dropped, since the host is where the store says; the host's own change after it is followed."""
    import asyncio
    m, _ = await create(app_client, by_reference(app_client.base))
    machine_id = m.rsplit("/", 1)[1]
    machines = app_client.app[PROVIDER].services["machines"]
    await act(app_client, m, "stop")
    await app_client.assert_state(m, "STOPPED")
    await machines._follow(machine_id, "STARTED", "the machine runs")  # old news: the host says STOPPED
    await app_client.assert_state(m, "STOPPED")
    driver = app_client.app[PROVIDER].drivers.compute
    await driver._call(lambda: driver._require(machine_id).create())  # started behind cimid's back
    for _ in range(100):
        if (await app_client.get(m)).json["state"] == "STARTED":
            break
        await asyncio.sleep(0.02)
    await app_client.assert_state(m, "STARTED")


async def test_an_event_the_host_disagrees_with_leaves_a_failed_machine_as_it_is(app_client):
    """A machine a Job left ERROR, whose domain the host has stopped: an old STARTED event is dropped."""
    m, _ = await create(app_client, by_reference(app_client.base, initialState="STOPPED"))
    machine_id = m.rsplit("/", 1)[1]
    provider = app_client.app[PROVIDER]
    async with provider.store.write() as tx:  # as a failed Job leaves it
        machine = await tx.get("Machine", machine_id)
        machine.attrs["state"] = "ERROR"
        await tx.update(machine)
    await provider.services["machines"]._follow(machine_id, "STARTED", "the machine runs")
    await app_client.assert_state(m, "ERROR")


async def test_quick_changes_behind_cimids_back_end_where_the_host_is(app_client):
    """A pause, a resume and a power-off in quick succession: their events are settled in order, each
    checked against the host, and the machine ends STOPPED, as the host is."""
    import asyncio
    m, _ = await create(app_client, by_reference(app_client.base))
    machine_id = m.rsplit("/", 1)[1]
    driver = app_client.app[PROVIDER].drivers.compute

    def flicker():
        dom = driver._require(machine_id)
        dom.suspend()
        dom.resume()
        dom.destroy()
    await driver._call(flicker)
    for _ in range(100):
        if (await app_client.get(m)).json["state"] == "STOPPED":
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # any event still on its way is settled by now, and changes nothing
    await app_client.assert_state(m, "STOPPED")


async def test_create_with_unknown_configuration_is_400_and_leaves_nothing(app_client):
    before = await app_client.rows()
    r = await app_client.post("machines", by_reference(app_client.base, machineConfig={
        "href": app_client.base + "machineConfigs/nope"}))
    assert r.status == 400 and "machineConfig" in r.json["statusMessage"]
    r = await app_client.post("machines", {"machineTemplate": {"href": app_client.base + "machineTemplates/zz"}})
    assert r.status == 400
    r = await app_client.post("machines", {"machineTemplate": {"machineConfig": {"cpu": 1}}})
    assert r.status == 400
    assert await app_client.rows() == before


async def test_machine_update_changes_name_only(app_client):
    m, _ = await create(app_client, by_reference(app_client.base))
    got = (await app_client.get(m)).json
    r = await app_client.put(m, dict(got, name="renamed", cpu=64))
    assert r.status == 200
    after = (await app_client.get(m)).json
    assert after["name"] == "renamed" and after["cpu"] == 1


async def test_job_stop_while_queued(tmp_path):
    client = await make_client(tmp_path, {"jobs": {"max_concurrent": 1}, "compute": {"operation_delay": 1.5}})
    try:
        a = await client.post("machines", by_reference(client.base, initialState="STOPPED"))
        b = await client.post("machines", by_reference(client.base, initialState="STOPPED"))
        job_b = b.headers["CIMI-Job-URI"]
        queued = (await client.get(job_b)).json
        assert_state(queued, "QUEUED")
        assert ACTION + "stop" in {o["rel"] for o in queued["operations"]}
        r = await client.post(f"{job_b}/stop", {"action": ACTION + "stop"})
        assert r.status == 202
        stopped = await client.wait_job(job_b)
        assert_state(stopped, "STOPPED")
        assert (await client.get(b.headers["Location"])).status == 404  # nothing was made
        assert_state(await client.wait_job(a.headers["CIMI-Job-URI"]), "SUCCESS")
        assert (await client.post(f"{job_b}/stop", {"action": ACTION + "stop"})).status == 409
    finally:
        await client.client.close()


async def wait_running(client, job_url):
    import asyncio
    for _ in range(200):
        job = (await client.get(job_url)).json
        if job["state"] == "RUNNING":
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"job never ran: {job}")


async def test_job_stop_takes_effect_before_the_next_step(tmp_path):
    """The delay gives the stop request time to arrive while the first step runs, also on a loaded machine."""
    client = await make_client(tmp_path, {"compute": {"operation_delay": 1.5}})
    try:
        r = await client.post("machines", by_reference(client.base))  # two steps: create, then start
        job_url = r.headers["CIMI-Job-URI"]
        running = await wait_running(client, job_url)
        assert ACTION + "stop" in {o["rel"] for o in running["operations"]}
        stop = await client.post(f"{job_url}/stop", {"action": ACTION + "stop"})
        assert stop.status == 202, stop
        assert_state(stop.json, "STOPPING")
        job = await client.wait_job(job_url)
        assert_state(job, "STOPPED")
        assert "before step 2" in job["statusMessage"]
        nested = [(await client.get(n["href"])).json for n in job["nestedJobs"]]
        assert len(nested) == 2
        assert_state(nested[0], "SUCCESS")
        assert_state(nested[1], "STOPPED")
        m = (await client.get(r.headers["Location"])).json
        await client.assert_state(m, "STOPPED")  # defined, never started: read back from the hypervisor
        # a Job in its last (or only) step cannot be stopped: 409, and it carries on
        start = await client.post(f"{r.headers['Location']}/start", {"action": ACTION + "start"})
        running = await wait_running(client, start.headers["CIMI-Job-URI"])
        assert ACTION + "stop" not in {o["rel"] for o in running.get("operations", ())}
        refused = await client.post(f"{start.headers['CIMI-Job-URI']}/stop", {"action": ACTION + "stop"})
        assert refused.status == 409
        assert_state(await client.wait_job(start.headers["CIMI-Job-URI"]), "SUCCESS")
        await client.assert_state(r.headers["Location"], "STARTED")
    finally:
        await client.client.close()


async def test_running_job_cannot_be_deleted(tmp_path):
    client = await make_client(tmp_path, {"compute": {"operation_delay": 1.5}})
    try:
        r = await client.post("machines", by_reference(client.base))
        d = await client.delete(r.headers["CIMI-Job-URI"])
        assert d.status == 409
        await client.wait_job(r.headers["CIMI-Job-URI"])
        assert (await client.delete(r.headers["CIMI-Job-URI"])).status == 200
    finally:
        await client.client.close()


async def test_capture_snapshot_restore_in_the_sandbox(app_client):
    m, _ = await create(app_client, by_reference(app_client.base))
    r = await app_client.post(f"{m}/capture", {"resourceURI": f"{CIMI}/MachineImage", "name": "golden"})
    assert r.status == 202, r
    job = await app_client.wait_job(r.headers["CIMI-Job-URI"])
    assert_state(job, "SUCCESS")
    assert r.headers["Location"] in [a["href"] for a in job["affectedResources"]]
    image = (await app_client.get(r.headers["Location"])).json
    await app_client.assert_state(image, "AVAILABLE")
    assert image["type"] == "IMAGE" and image["name"] == "golden"
    await app_client.assert_state(m, "STARTED")
    # the DSP0263 way: POST a MachineImage whose imageLocation is the Machine
    r = await app_client.post("machineImages", {"name": "snap-1", "type": "SNAPSHOT", "imageLocation": m})
    assert r.status == 202, r
    assert_state(await app_client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    snap = (await app_client.get(r.headers["Location"])).json
    assert snap["type"] == "SNAPSHOT" and snap["relatedImage"]["href"].endswith("/machineImages/tiny-linux")
    machine = (await app_client.get(m)).json
    assert machine["latestSnapshot"]["href"] == snap["id"]
    snapshots = (await app_client.get(machine["snapshots"]["href"])).json
    assert snapshots["count"] == 1 and snapshots["machineSnapshots"][0]["snapshot"]["href"] == snap["id"]
    x = (await app_client.get(machine["snapshots"]["href"], fmt="xml")).xml
    assert x.find("c:MachineSnapshot/c:shapshot", NS).get("href") == snap["id"]  # DSP8009's spelling
    job = await act(app_client, m, "restore", image={"href": snap["id"]})
    assert_state(job, "SUCCESS")
    await app_client.assert_state(m, "STARTED")
    before = await app_client.rows()
    bad = await app_client.post(f"{m}/restore", {"action": ACTION + "restore", "image": {
        "href": app_client.base + "machineImages/none"}})
    assert bad.status == 400 and await app_client.rows() == before
    # the image a machine's disk stands on cannot go while the machine is there
    assert (await app_client.delete(snap["id"])).status == 409
    assert (await app_client.delete("machineImages/tiny-linux")).status == 200  # no machine on it now
    assert (await app_client.get(m + "/console")).status == 200
