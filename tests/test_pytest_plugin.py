"""cimid's pytest plugin, as a tester's suite meets it: outside test files that know nothing of cimid but
the fixture's name and the marker, run by pytest's own pytester in a separate process; and the README's
example, run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

OUTSIDE = '''
import json
import urllib.request

import pytest

SESSION = []


def get(url):
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"})) as r:
        return json.loads(r.read())


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Accept": "application/json", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as r:
        return r.status, r.headers


def machine(provider):
    status, headers = post(provider.base + "machines", {"machineTemplate": {
        "href": provider.base + "machineTemplates/small-tiny-linux"}})
    assert status == 202
    while True:
        job = get(headers["CIMI-Job-URI"])
        if job["state"] not in ("QUEUED", "RUNNING"):
            return headers["Location"], job


def test_one_makes_a_machine(cimi_provider):
    SESSION.append(cimi_provider.url)
    assert get(cimi_provider.url)["resourceURI"].endswith("/CloudEntryPoint")
    assert machine(cimi_provider)[1]["state"] == "SUCCESS"
    assert get(cimi_provider.base + "machines")["count"] == 1


def test_two_starts_from_the_seeded_catalogue_of_the_same_provider(cimi_provider):
    assert SESSION == [cimi_provider.url]  # one process for the session
    assert get(cimi_provider.base + "machines")["count"] == 0
    assert get(cimi_provider.base + "machineConfigs")["count"] == 4


@pytest.mark.cimi_fault("Machine", ["create"], effect="error", message="host on fire")
def test_three_has_a_fault(cimi_provider):
    url, job = machine(cimi_provider)
    assert job["state"] == "FAILED" and job["statusMessage"] == "host on fire"
    assert get(url)["state"] == "ERROR"
    (rule,) = cimi_provider.faults()
    assert rule["remaining"] == 0


def test_four_has_no_fault_left(cimi_provider):
    assert cimi_provider.faults() == []
    assert machine(cimi_provider)[1]["state"] == "SUCCESS"


def test_five_is_deterministic(cimi_provider):
    ids = []
    for _ in range(2):
        cimi_provider.reset(id_seed="golden", clock="2030-01-01T00:00:00Z")
        url, job = machine(cimi_provider)
        ids.append((url, job["id"], get(url)["created"]))
    assert ids[0] == ids[1] and ids[0][2] == "2030-01-01T00:00:00.000Z"
'''


def test_the_plugin_gives_an_outside_suite_a_provider_reset_per_test_and_faults(pytester):
    pytester.makepyfile(test_outside=OUTSIDE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=5)


def test_without_reset_state_stays_between_tests(pytester):
    pytester.makeini("[pytest]\ncimid_reset = false\n")
    pytester.makepyfile(test_outside=OUTSIDE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-k", "one or two")
    result.assert_outcomes(passed=1, failed=1)  # test two sees test one's machine
    result.stdout.fnmatch_lines(["*test_two_starts_from_the_seeded_catalogue*"])


def readme_example() -> str:
    section = README.read_text().split("\n## Testing your CIMI client\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    return code


def test_the_readme_example_runs_as_written(pytester):
    pytester.makepyfile(test_readme=readme_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)
