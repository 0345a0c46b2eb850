"""The tests' state assertions say why: a Job's statusMessage, or a resource's Jobs' statusMessages, come
first in the failure (pytest's one-line summary cuts the rest off)."""

import pytest
from conftest import assert_state


def test_a_job_in_the_wrong_state_shows_its_status_message():
    job = {"id": "http://x/cimi/jobs/1", "state": "FAILED", "statusMessage": "no room on the host"}
    assert assert_state(job, "FAILED", "SUCCESS") is job
    with pytest.raises(AssertionError, match=r"^http://x/cimi/jobs/1 is 'FAILED', not 'SUCCESS': no room on the host"):
        assert_state(job, "SUCCESS")


async def test_a_resource_in_the_wrong_state_shows_its_jobs_status_messages(app_client):
    r = await app_client.post("machines", {"name": "m", "machineTemplate": {
        "href": app_client.base + "machineTemplates/small-tiny-linux"}})
    assert_state(await app_client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    machine = r.headers["Location"]
    assert (await app_client.assert_state(machine, "STARTED"))["id"] == machine
    with pytest.raises(AssertionError) as failure:
        await app_client.assert_state(machine, "PAUSED")
    first_line = str(failure.value).splitlines()[0]
    assert first_line.startswith(f"{machine} is 'STARTED', not 'PAUSED': ")
    assert "Job SUCCESS" in first_line
