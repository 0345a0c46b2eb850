"""Jobs: every change the provider makes is one."""

from __future__ import annotations

from .types import Action, Family, ResourceType, common_attributes, read_only, REF

JOB_STATES = ("QUEUED", "RUNNING", "FAILED", "SUCCESS", "STOPPING", "STOPPED")
JOB_FINISHED = ("FAILED", "SUCCESS", "STOPPED")

Job = ResourceType(
    "Job",
    [
        *common_attributes(),
        read_only("state", "string", enum=JOB_STATES),
        read_only("targetResource", "ref"),
        read_only("affectedResources", "array", target=REF),
        read_only("action", "string"),
        read_only("returnCode", "integer"),
        read_only("progress", "integer"),
        read_only("statusMessage", "string"),
        read_only("timeOfStatusChange", "dateTime"),
        read_only("parentJob", "ref", target="Job"),
        read_only("nestedJobs", "array", target=REF),
    ],
    collection="jobs",
    items="jobs",
    states=JOB_STATES,
    transitional_states=("QUEUED", "RUNNING", "STOPPING"),
    finished_states=JOB_FINISHED,
    actions={"stop": Action("stop", ("QUEUED", "RUNNING"), "STOPPING", "STOPPED",
                            "Stop the Job where its current step allows it.")},
    creatable=False,
    description="A process the provider performs; every mutating request makes one.",
)

FAMILY = Family("jobs", (Job,), service="jobs:Jobs")
