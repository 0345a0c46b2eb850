"""The sandbox's compute driver on libvirt's test driver: the machine verbs read back through `state`,
errors as DriverError, lifecycle events from a change behind its back, and `adopt` rebuilding a host
that a restart forgot."""

import asyncio

import pytest
from cimid_libvirt import SandboxCompute

from cimid.config import load
from cimid.errors import DriverError
from cimid.hookspecs import MachineSpec


def spec(machine_id: str) -> MachineSpec:
    return MachineSpec(id=machine_id, name=f"machine {machine_id}", cpu=1, memory=262144)


@pytest.fixture
async def sandbox(tmp_path):
    driver = SandboxCompute(load(profile="sandbox", state_dir=tmp_path / "state"))
    await driver.open()
    yield driver
    await driver.close()


async def test_machine_verbs_are_read_back_from_the_host(sandbox):
    await sandbox.create(spec("m1"))
    assert await sandbox.state("m1") == "STOPPED"
    for verb, expected in (("start", "STARTED"), ("pause", "PAUSED"), ("start", "STARTED"),
                           ("suspend", "SUSPENDED"), ("start", "STARTED")):
        await getattr(sandbox, verb)("m1")
        assert await sandbox.state("m1") == expected, verb
    await sandbox.stop("m1", force=True)
    assert await sandbox.state("m1") == "STOPPED"
    await sandbox.delete("m1")
    assert await sandbox.state("m1") is None
    await sandbox.delete("m1")  # a machine the host does not know is not an error


async def test_unknown_machines_are_driver_errors(sandbox):
    for call in (sandbox.start("nope"), sandbox.stop("nope", False), sandbox.pause("nope"),
                 sandbox.capture("nope", "image"), sandbox.restore("nope", "image")):
        with pytest.raises(DriverError, match="no domain cimid-nope"):
            await call


async def test_a_change_behind_its_back_is_reported_to_watchers(sandbox):
    seen = []
    sandbox.watch(lambda machine_id, state, reason: seen.append((machine_id, state, reason)))
    await sandbox.create(spec("m2"))
    await sandbox.start("m2")
    await sandbox._call(lambda: sandbox._require("m2").destroy())  # as a guest powering itself off
    for _ in range(200):
        if ("m2", "STOPPED", "the machine was powered off") in seen:
            break
        await asyncio.sleep(0.01)
    assert ("m2", "STARTED", "the machine runs") in seen
    assert ("m2", "STOPPED", "the machine was powered off") in seen


async def test_adopt_rebuilds_what_a_restart_forgot(tmp_path):
    config = load(profile="sandbox", state_dir=tmp_path / "state")
    first = SandboxCompute(config)
    await first.open()
    await first.create(spec("running"))
    await first.close()  # the test driver forgets its domains with its last connection
    second = SandboxCompute(config)
    await second.open()
    try:
        assert await second.state("running") is None
        await second.adopt([(spec("running"), "STARTED"), (spec("paused"), "PAUSED"),
                            (spec("saved"), "SUSPENDED"), (spec("stopped"), "STOPPED")])
        assert [await second.state(m) for m in ("running", "paused", "saved", "stopped")] == [
            "STARTED", "PAUSED", "SUSPENDED", "STOPPED"]
        assert (await second.capture("running", "img"))["location"] == "urn:cimid:sandbox:image:img"
        assert await second.console("running", 100) == ""
    finally:
        await second.close()
