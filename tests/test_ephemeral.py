"""`cimid serve --ephemeral --listen 127.0.0.1:0`: a free port, one JSON line once it answers, and no file
left behind after a clean exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager

import pytest


def serve(tmp_path, *args):
    """cimid serve with TMPDIR in tmp_path/tmp, so whatever it leaves there is seen."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cimid.cli", "serve", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(temp)})


@contextmanager
def served(tmp_path, *args):
    """serve(), killed if it still runs when the block ends, its pipes closed."""
    proc = serve(tmp_path, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ephemeral_start_answers_and_a_clean_exit_leaves_no_files(tmp_path, sig):
    with served(tmp_path, "--ephemeral", "--test-api", "--listen", "127.0.0.1:0") as proc:
        line = proc.stdout.readline()
        ready = json.loads(line)
        assert set(ready) == {"cloudEntryPoint", "pid"} and ready["pid"] == proc.pid
        assert ready["cloudEntryPoint"].startswith("http://127.0.0.1:")
        assert not ready["cloudEntryPoint"].startswith("http://127.0.0.1:0/")  # the port the kernel picked
        with urllib.request.urlopen(ready["cloudEntryPoint"]) as r:
            entry = json.loads(r.read())
        assert entry["extensions"]["testControl"]["href"].endswith("/cimi/testControl")
        (state,) = (tmp_path / "tmp").iterdir()  # the state lives in a temporary directory while it runs
        assert state.name.startswith("cimid-ephemeral-") and (state / "cimid.sqlite3").exists()
        request = urllib.request.Request(entry["baseURI"] + "machines", method="POST", headers={
            "Content-Type": "application/json"}, data=json.dumps({"machineTemplate": {
                "href": entry["baseURI"] + "machineTemplates/small-tiny-linux"}}).encode())
        with urllib.request.urlopen(request) as r:
            assert r.status == 202
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # nothing in the working directory either


def test_ephemeral_refuses_a_state_dir_or_the_host_profile(tmp_path):
    for args in (["--state-dir", str(tmp_path / "s")], ["--profile", "host"]):
        proc = serve(tmp_path, "--ephemeral", *args)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and "--ephemeral" in err and out == ""
    assert list((tmp_path / "tmp").iterdir()) == []
