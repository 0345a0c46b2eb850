"""Plugins: third-party drivers register through the same hooks; a failing driver fails its Job cleanly."""

import pluggy
import pytest
from conftest import assert_state, make_client

from cimid.errors import DriverError
from cimid.hookspecs import hookimpl
from cimid.plugins import plugin_manager
from cimid_libvirt import SandboxCompute

CIMI = "http://schemas.dmtf.org/cimi/1"


class RefusingCompute(SandboxCompute):
    """The real sandbox driver (libvirt's test driver) whose host refuses to define machines named 'doomed'."""

    name = "refusing"
    vanishing: set[str] = set()  # ids of the machines named 'vanishing'

    async def create(self, spec):
        if spec.name == "vanishing":
            self.vanishing.add(spec.id)
        if spec.name == "doomed":
            raise DriverError("the host has no room for 'doomed'")
        if spec.name == "buggy":
            raise RuntimeError("a bug in a third-party driver")
        await super().create(spec)

    async def state(self, machine_id):
        """A machine named 'vanishing' is gone from the host as soon as its steps succeeded."""
        if machine_id in self.vanishing:
            return None
        return await super().state(machine_id)


class RefusingPlugin:
    @hookimpl
    def cimid_compute_driver(self, config):
        return RefusingCompute(config) if config["compute"]["driver"] == "refusing" else None


async def test_third_party_driver_is_used_and_its_failures_fail_the_job(tmp_path):
    client = await make_client(tmp_path, {"compute": {"driver": "refusing"}}, extra_plugins=(RefusingPlugin(),))
    try:
        template = {"href": client.base + "machineTemplates/small-tiny-linux"}
        ok = await client.post("machines", {"name": "fine", "machineTemplate": template})
        assert_state(await client.wait_job(ok.headers["CIMI-Job-URI"]), "SUCCESS")
        for name, message in (("doomed", "no room"), ("buggy", "internal error in the driver")):
            r = await client.post("machines", {"name": name, "machineTemplate": template})
            assert r.status == 202
            job = await client.wait_job(r.headers["CIMI-Job-URI"])
            assert_state(job, "FAILED")
            assert message in job["statusMessage"] and job["returnCode"] != 0
            nested = [(await client.get(n["href"])).json for n in job["nestedJobs"]]
            for n in nested:
                assert_state(n, "FAILED")
            assert len(nested) == 2
            machine = (await client.get(r.headers["Location"])).json
            await client.assert_state(machine, "ERROR")
            assert {o["rel"] for o in machine["operations"]} == {"edit", "delete", "urn:x-cimid:operation:console"}
            d = await client.delete(r.headers["Location"])  # an ERROR machine can be cleaned up
            assert_state(await client.wait_job(d.headers["CIMI-Job-URI"]), "SUCCESS")
            assert (await client.get(r.headers["Location"])).status == 404
        # every step succeeded, but the host no longer knows the machine: the Job fails, saying so
        r = await client.post("machines", {"name": "vanishing", "machineTemplate": template})
        job = await client.wait_job(r.headers["CIMI-Job-URI"])
        assert_state(job, "FAILED")
        assert job["statusMessage"] == "the hypervisor no longer knows this machine"
        await client.assert_state(r.headers["Location"], "ERROR")
    finally:
        await client.client.close()


def test_a_hook_without_specification_fails_at_start_up():
    class Typo:
        @hookimpl
        def cimid_compute_drivers(self, config):  # misspelled hook name
            return None

    with pytest.raises(pluggy.PluginValidationError):
        plugin_manager((Typo(),))


def test_builtin_drivers_register_through_the_entry_point_group():
    pm = plugin_manager()
    assert {"libvirt", "dir", "lvm", "memory", "bridge"} <= set(dict(pm.list_name_plugin()))
    assert [impl.plugin_name for impl in pm.hook.cimid_compute_driver.get_hookimpls()] == ["libvirt"]
    assert sorted(impl.plugin_name for impl in pm.hook.cimid_image_store.get_hookimpls()) == ["dir", "memory"]
    assert sorted(impl.plugin_name for impl in pm.hook.cimid_storage_pool.get_hookimpls()) == ["dir", "lvm", "memory"]
    assert sorted(impl.plugin_name for impl in pm.hook.cimid_network_driver.get_hookimpls()) == ["bridge", "memory"]


async def test_no_compute_driver_means_no_machines(bare_app):
    assert (await bare_app.get("machines")).status == 404
    assert (await bare_app.post("machines", {"machineTemplate": {}})).status == 404
