"""The command line: --version, plugins, check, configuration errors."""

import re
import subprocess
import sys

from cimid import __version__


def cimid(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cimid.cli", *args], capture_output=True, text=True, timeout=60,
                          **kw)


def test_version():
    r = cimid("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cimid {__version__}"


def test_plugins_lists_the_builtin_drivers_through_their_entry_points():
    r = cimid("plugins")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "libvirt: cimid_compute_driver, cimid_meter_sources" in lines
    assert "hostmeters: cimid_meter_sources" in lines
    assert "dir: cimid_image_store, cimid_storage_pool" in lines
    assert "memory: cimid_image_store, cimid_meter_sources, cimid_network_driver, cimid_storage_pool" in lines
    assert "bridge: cimid_meter_sources, cimid_network_driver" in lines


def test_check_reports_driver_health(tmp_path):
    r = cimid("check", "--state-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "config: ok (profile sandbox" in r.stdout
    assert "compute: libvirt-test: ok" in r.stdout
    assert re.search(r"answers \(libvirt \d+\.\d+\.\d+\)", r.stdout), r.stdout
    for kind in ("images", "storage", "network"):
        assert f"{kind}: memory: ok" in r.stdout
    assert "pool default: driver memory (default), 104857600 KiB free, 0 KiB used of 104857600 KiB" in r.stdout


def test_check_reports_families_without_a_driver(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[storage]\npools = {}\n[network]\ndriver = "nope"\n')  # none, and one not installed
    r = cimid("check", "--config", str(conf), "--state-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "storage: no driver configured (not served)" in r.stdout
    assert "network: no driver configured (not served)" in r.stdout


def test_check_fails_when_the_hypervisor_does_not_answer(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[compute]\ndriver = "libvirt"\nuri = "qemu+unix:///system?socket=/nonexistent/sock"\n'
                    '[images]\ndriver = "dir"\n')
    r = cimid("check", "--config", str(conf), "--state-dir", str(tmp_path))
    assert r.returncode == 1 and "compute: libvirt: FAILED" in r.stdout


def test_config_errors_are_reported_not_raised(tmp_path):
    for text, needle in (("[server]\nlisten = 8080\n", "server.listen must be a str"),
                         ("[server]\nlisten = 'nope'\n", "HOST:PORT"),
                         ("[compute]\nvirt_type = 'xen'\n", "virt_type"),
                         ("[colour]\nx = 1\n", "unknown config section"),
                         ("[jobs]\nretention = 1\n", "unknown config key jobs.retention"),
                         ("[jobs\n", "c.toml")):
        conf = tmp_path / "c.toml"
        conf.write_text(text)
        r = cimid("serve", "--config", str(conf), "--state-dir", str(tmp_path))
        assert r.returncode == 2 and needle in r.stderr, (text, r.stderr)
        assert "Traceback" not in r.stderr
    r = cimid("serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_hash_password_round_trip():
    from cimid.http.auth import verify_password
    r = cimid("hash-password", input="s3cret\n")
    assert r.returncode == 0 and r.stdout.startswith("pbkdf2_sha256$")
    assert verify_password("s3cret", r.stdout.strip()) and not verify_password("other", r.stdout.strip())


def test_every_subcommand_help_has_a_description_and_only_its_options():
    helps = {name: cimid(name, "--help") for name in ("serve", "check", "plugins", "hash-password")}
    for name, r in helps.items():
        assert r.returncode == 0, r.stderr
        description = r.stdout.split("\n\n")[1]  # usage, blank line, description
        assert not description.startswith(("options:", "positional")), (name, r.stdout)
    assert helps["check"].stdout != helps["serve"].stdout
    assert "--listen" in helps["serve"].stdout and "--listen" not in helps["check"].stdout
    assert "standard input" in helps["hash-password"].stdout
    for name in ("serve", "check"):
        assert "etc/cimid.toml" not in helps[name].stdout.replace("/etc/cimid/cimid.toml", "")


async def test_check_lists_each_network_as_the_driver_finds_it(tmp_path, capsys):
    """`cimid check` reads the stored networks and asks the driver about each: a bridge, DHCP server or
    rules missing (a reboot the daemon has not repaired yet) makes the check fail."""
    from cimid_memory import MemoryNetwork
    from conftest import make_client

    from cimid.cli import _check_networks
    from cimid.config import load
    from cimid.hookspecs import NetworkSpec
    from cimid.http.keys import PROVIDER

    client = await make_client(tmp_path)
    r = await client.post("networks", {"name": "db", "networkTemplate": {"networkConfig": {
        "networkType": "PRIVATE", "properties": {"cidr": "10.0.7.0/24"}}}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    network_id = r.headers["Location"].rsplit("/", 1)[1]
    bridge = client.app[PROVIDER].drivers.network.spec(network_id).bridge
    await client.client.close()
    config = load(profile="sandbox", state_dir=tmp_path / "state")

    elsewhere = MemoryNetwork()  # another process's memory driver knows none of the daemon's networks
    assert await _check_networks(config, elsewhere) is True
    assert f"network db ({network_id}, STARTED): not known to this driver here" in capsys.readouterr().out

    host = MemoryNetwork()  # a driver that finds the bridge, but down and without its DHCP server
    await host.create_network(NetworkSpec(network_id=network_id, bridge=bridge, cidr="10.0.7.0/24",
                                          gateway="10.0.7.1"))
    assert await _check_networks(config, host) is False
    assert (f"network db ({network_id}, STARTED): bridge present, link down, dhcp missing, rules none"
            in capsys.readouterr().out)
    await host.start_network(network_id)
    assert await _check_networks(config, host) is True
    assert "bridge present, link up, dhcp present, rules none" in capsys.readouterr().out
