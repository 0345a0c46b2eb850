"""The host profile serves Networks with the bridge driver and makes a default network on the first start;
on a host without dnsmasq (or libnftables), `cimid serve --profile host` still starts, says why Networks are not
available, answers 503 to a network create, and makes nothing (no link, no nftables table, no row)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from pyroute2 import IPRoute

from cimid.config import load


def test_the_host_profile_makes_a_default_bridge_network(tmp_path):
    network = load(profile="host", state_dir=tmp_path)["network"]
    assert network["driver"] == "bridge" and network["create_default"] and network["default_network"]


def link_names() -> set[str]:
    with IPRoute() as ipr:
        return {dict(link["attrs"])["IFLA_IFNAME"] for link in ipr.get_links()}


def nft_tables() -> str:
    nft = shutil.which("nft")
    return subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout if nft else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_without_dnsmasq_the_host_profile_starts_and_answers_503(tmp_path):
    # PATH holds only a directory with python in it: the driver finds no dnsmasq.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    assert shutil.which("dnsmasq", path=str(bare)) is None and shutil.which("nft", path=str(bare)) is None
    config = tmp_path / "cimid.toml"
    config.write_text('[compute]\ndriver = "none"\n')  # the host profile's network keys as they ship
    links_before, tables_before = link_names(), nft_tables()
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cimid.cli", "serve", "--config", str(config), "--profile",
                                 "host", "--state-dir", str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PATH": str(bare)})
    base = f"http://127.0.0.1:{port}/cimi/"
    try:
        for _ in range(400):
            assert proc.poll() is None, log.read_text()
            try:
                status, entry = call(base + "cloudEntryPoint")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        else:
            raise AssertionError("cimid did not answer:\n" + log.read_text())
        assert status == 200 and "networks" in entry  # Networks are served, the driver is just not there
        status, error = call(base + "networks", {"name": "web", "networkTemplate": {
            "networkConfig": {"networkType": "PRIVATE", "properties": {"cidr": "10.0.7.0/24"}}}})
        assert status == 503 and "needs dnsmasq" in json.dumps(error), error
        status, listed = call(base + "networks")
        assert status == 200 and listed["count"] == 0  # no default network, no "web"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "the network driver is not available: the bridge network driver needs dnsmasq" in text, text
    assert link_names() == links_before and nft_tables() == tables_before
