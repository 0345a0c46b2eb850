"""The README's curl tour, run as written: every command of its ```sh blocks, in order, with curl, against
a fresh sandbox daemon on loopback, each checked against what the text around it says. A change to the
README or to the API that breaks the tour fails here; a command added to the tour needs its check below.

Placeholders are filled as the README says a reader would: <id> from web-1's Location, <job id> from its
CIMI-Job-URI, <etag> from the ETag of the GET just before."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import assert_state, assert_valid_xml
from ports import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
CIMI = "http://schemas.dmtf.org/cimi/1"
README_BASE = "http://127.0.0.1:8080"


def tour_commands(text: str) -> list[str]:
    """The commands of the ```sh blocks between '## A tour with curl' and the next '## ' heading: comment
    lines dropped, continuation lines, multi-line quotes and here-documents kept with their command."""
    section = text.split("\n## A tour with curl\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```$", section, re.S | re.M):
        current, heredoc = "", None
        for line in block.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line + "\n"
            if heredoc:
                if line == heredoc:
                    heredoc = None
                    commands.append(current.rstrip("\n"))
                    current = ""
                continue
            marker = re.search(r"<<-?'?(\w+)'?", line)
            if marker:
                heredoc = marker[1]
                continue
            if line.endswith("\\"):
                continue
            try:
                shlex.split(current)
            except ValueError:  # a quote still open: the command goes on
                continue
            commands.append(current.rstrip("\n"))
            current = ""
        assert not current.strip(), f"unfinished command in the tour: {current}"
    return commands


class Answer:
    """curl's output: with -i, status line and headers, then the body; without, the body only."""

    def __init__(self, out: str):
        self.status, self.headers, self.body = None, {}, out
        if out.startswith("HTTP/"):
            head, _, self.body = out.replace("\r\n", "\n").partition("\n\n")
            lines = head.splitlines()
            self.status = int(lines[0].split()[1])
            self.headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}

    def json(self) -> dict:
        return json.loads(self.body)



@pytest.fixture
def sandbox(tmp_path):
    """`cimid serve`, as `make run` starts it, on a fresh state directory and a free loopback port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cimid.cli", "serve", "--profile", "sandbox", "--state-dir",
                             str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):  # until it answers, or it died
        if proc.poll() is not None:
            pytest.fail(f"cimid serve exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            urllib.request.urlopen(base + "/cimi/cloudEntryPoint").close()
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    yield base
    proc.terminate()
    proc.wait(timeout=30)
    proc.stderr.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"})) as r:
        return json.loads(r.read())


def finished(job_url: str) -> dict:
    """The Job at job_url once it has ended: a reader types the next command seconds later, the test
    waits for the Job instead."""
    for _ in range(500):
        job = get_json(job_url)
        if job["state"] in ("SUCCESS", "FAILED", "STOPPED"):
            return job
        time.sleep(0.02)
    return assert_state(job, "SUCCESS", "FAILED", "STOPPED")


def test_the_readme_tour_answers_what_its_text_says(sandbox):
    commands = tour_commands(README.read_text())
    seen: dict[str, str] = {}  # what a reader noted down: id, job id, etag

    def discover(a: Answer, i: int):
        if i == 0:
            doc = a.json()
            assert doc["resourceURI"] == f"{CIMI}/CloudEntryPoint" and "machines" in doc
        elif i == 1:
            assert "medium" in {c["name"] for c in a.json()["machineConfigurations"]}
        elif i == 2:
            root = assert_valid_xml(a.body.encode())
            assert root.get("resourceURI") == f"{CIMI}/MachineTemplateCollection"
            assert root.findtext(f"{{{CIMI}}}MachineTemplate/{{{CIMI}}}name") == "small-tiny-linux"
        else:
            root = assert_valid_xml(a.body.encode())
            assert root.tag == f"{{{CIMI}}}ResourceMetadata" and "Machine" in a.body

    def create_web(a: Answer):
        assert a.status == 202 and "location" in a.headers and "cimi-job-uri" in a.headers, a.body
        seen["id"] = a.headers["location"].rsplit("/", 1)[1]
        seen["job id"] = a.headers["cimi-job-uri"].rsplit("/", 1)[1]
        machine = get_json(a.headers["location"])
        assert machine["name"] == "web-1" and machine["properties"] == {"owner": "team-a"}
        assert machine["cpu"] >= 2  # medium, overriding the template's configuration

    def create_db(a: Answer):
        assert a.status == 202 and a.headers["content-type"].startswith("application/xml"), a.body
        assert_valid_xml(a.body.encode())
        machine = get_json(a.headers["location"])
        assert machine["name"] == "db-1" and machine["cpu"] == 2
        assert_state(machine, "STOPPED")  # initialState STOPPED

    def watch(a: Answer):
        job = assert_state(a.json(), "QUEUED", "RUNNING", "SUCCESS")
        assert len(job["nestedJobs"]) == 2  # create, then start

    def stop(a: Answer):
        assert a.status == 202, a.body
        assert_state(finished(a.headers["cimi-job-uri"]), "SUCCESS")

    def query(a: Answer):
        doc = a.json()
        assert doc["count"] == 1, doc
        (machine,) = doc["machines"]
        assert machine["name"] == "web-1" and machine["cpu"] >= 2
        assert_state(machine, "STOPPED")
        assert not {"description", "memory"} & set(machine)  # $select

    def read(a: Answer):
        assert a.status == 200 and a.json()["name"] == "web-1"
        seen["etag"] = a.headers["etag"].strip('"')

    def update(a: Answer):
        assert a.status == 200 and a.json()["description"] == "front end", a.body
        assert a.headers["etag"].strip('"') != seen["etag"]

    def stale_update(a: Answer):
        assert a.status == 412, a.body
        error = a.json()
        assert error["id"] == "" and "ETag" in error["statusMessage"]
        assert_state(error, "FAILED")
        assert get_json(f"{sandbox}/cimi/machines/{seen['id']}")["description"] == "front end"  # unchanged

    def delete(a: Answer):
        assert a.status == 202, a.body
        assert_state(finished(a.headers["cimi-job-uri"]), "SUCCESS")
        with pytest.raises(urllib.error.HTTPError) as gone:
            get_json(f"{sandbox}/cimi/machines/{seen['id']}")
        assert gone.value.code == 404

    checks = [lambda a: discover(a, 0), lambda a: discover(a, 1), lambda a: discover(a, 2),
              lambda a: discover(a, 3), create_web, create_db, watch, stop, query, read, update, stale_update,
              delete]
    assert len(commands) == len(checks), "the tour's commands and this test's checks no longer match:\n" + \
        "\n".join(commands)
    for command, check in zip(commands, checks):
        filled = command.replace(README_BASE, sandbox)
        for name, value in seen.items():
            filled = filled.replace(f"<{name}>", value)
        assert not re.search(r"<(id|job id|etag)>", filled), f"a placeholder the tour never filled: {filled}"
        run = subprocess.run(["bash", "-c", filled], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"{command}\nexited {run.returncode}: {run.stderr}"
        answer = Answer(run.stdout)
        try:
            if answer.status == 202:
                finished(answer.headers["cimi-job-uri"])
            check(answer)
        except AssertionError as exc:
            raise AssertionError(f"README tour step:\n{command}\nanswered:\n{run.stdout[:2000]}\n{exc}") from exc
