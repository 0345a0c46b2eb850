"""The [cluster] and [front] keys: bad values are refused with a message naming the key, and the
commands that need etcd say so before starting anything."""

from __future__ import annotations

import re

import pytest

from cimid.cli import main
from cimid.cluster.certs import issue
from cimid.config import ConfigError, load


@pytest.mark.parametrize("cluster, message", [
    ({"endpoints": ["10.0.0.1:2379"]}, "cluster.endpoints must be etcd client URLs"),
    ({"endpoints": ["http://nohost"]}, "cluster.endpoints must be etcd client URLs"),
    ({"lease_ttl": 2}, "cluster.lease_ttl must be at least 3 seconds"),
    ({"lease_ttl": 6, "etcd_timeout": 2.5}, "cluster.etcd_timeout must be more than 0 and at most a third"),
    ({"etcd_timeout": 0.0}, "cluster.etcd_timeout must be more than 0"),
    ({"cpu_allocation_ratio": 0.0}, "cluster.cpu_allocation_ratio and cluster.memory_allocation_ratio"),
    ({"prefix": "cimid"}, "cluster.prefix must start with /"),
    ({"advertise_url": "node1:8080"}, "cluster.advertise_url must be an http(s) URL"),
    ({"lease_ttl": "10"}, "cluster.lease_ttl must be a int"),
    ({"api_level": -1}, "cluster.api_level must be 0 (the level this version speaks) or a lower level"),
    ({"tls_ca": "/ca.crt"}, "cluster.tls_ca, cluster.tls_certificate and cluster.tls_key go together"),
    ({"tls_ca": "/ca.crt", "tls_certificate": "/n1.crt", "tls_key": "/n1.key",
      "endpoints": ["http://10.0.0.1:2379"]}, "(https exactly when cluster.tls_ca is set)"),
    ({"endpoints": ["https://10.0.0.1:2379"]}, "(https exactly when cluster.tls_ca is set)"),
])
def test_bad_cluster_keys_are_refused(cluster, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(overrides={"cluster": cluster})


@pytest.mark.parametrize("front, message", [
    ({"listen": "8090"}, "front.listen must be HOST:PORT"),
    ({"public_base_url": "cloud.example.org"}, "front.public_base_url must be an http"),
    ({"node_timeout": 0.0}, "front.node_timeout, front.reconcile_seconds and front.reservation_seconds"),
    ({"reservation_seconds": -1.0}, "must be more than 0"),
])
def test_bad_front_keys_are_refused(front, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(overrides={"front": front})


def test_the_federation_ca_is_not_a_user_ca():
    with pytest.raises(ConfigError, match="server.tls_client_ca must not be cluster.tls_ca"):
        load(overrides={"server": {"tls": True, "tls_client_ca": "/etc/cimid/ca.crt"},
                        "cluster": {"tls_ca": "/etc/cimid/ca.crt", "tls_certificate": "/n1.crt", "tls_key": "/n1.key"}})


def test_a_node_never_publishes_a_level_above_the_one_it_speaks():
    from cimid.cluster.node import API_LEVEL, NodeMembership
    config = load(overrides={"cluster": {"endpoints": ["http://10.0.0.1:2379"], "api_level": API_LEVEL + 1}})
    with pytest.raises(ConfigError, match=f"cluster.api_level {API_LEVEL + 1} is more than this version speaks"):
        NodeMembership(config, None, None, "0")
    lower = load(overrides={"cluster": {"endpoints": ["http://10.0.0.1:2379"], "api_level": 1}})
    assert NodeMembership(lower, None, None, "0").api_level == 1
    assert NodeMembership(load(overrides={"cluster": {"endpoints": ["http://10.0.0.1:2379"]}}), None, None,
                          "0").api_level == API_LEVEL


def test_the_defaults_are_a_standalone_node():
    config = load()
    assert config["cluster"]["endpoints"] == [] and config["cluster"]["lease_ttl"] == 10
    assert config["front"]["listen"] == "127.0.0.1:8090" and config["front"]["strict"] is False


def test_front_and_cluster_status_need_endpoints_and_a_front_stays_on_loopback(tmp_path, capsys):
    bare = tmp_path / "bare.toml"
    bare.write_text("")
    assert main(["front", "--config", str(bare)]) == 2
    assert "cimid front needs cluster.endpoints" in capsys.readouterr().err
    assert main(["cluster", "status", "--config", str(bare)]) == 2
    assert "[cluster] endpoints is empty" in capsys.readouterr().err
    exposed = tmp_path / "exposed.toml"
    exposed.write_text('[cluster]\nendpoints = ["http://127.0.0.1:2379"]\n[front]\nlisten = "0.0.0.0:8090"\n')
    assert main(["front", "--config", str(exposed)]) == 2
    assert "refusing to serve the front on 0.0.0.0" in capsys.readouterr().err


def test_a_node_of_a_tls_federation_must_serve_https(tmp_path, capsys):
    issue(tmp_path / "ca", "n1", ["127.0.0.1"])
    config = tmp_path / "node.toml"
    config.write_text(f'profile = "sandbox"\n[cluster]\nendpoints = ["https://127.0.0.1:2379"]\n'
                      f'tls_ca = "{tmp_path}/ca/ca.crt"\ntls_certificate = "{tmp_path}/ca/n1.crt"\n'
                      f'tls_key = "{tmp_path}/ca/n1.key"\n')
    assert main(["serve", "--config", str(config), "--state-dir", str(tmp_path / "state")]) == 2
    assert "cluster.tls_ca set but server.tls is false" in capsys.readouterr().err


def test_a_front_serves_https_only_with_a_certificate_of_its_own(tmp_path, capsys):
    issue(tmp_path / "ca", "front1", ["127.0.0.1"])
    config = tmp_path / "front.toml"
    config.write_text('[cluster]\nendpoints = ["http://127.0.0.1:2379"]\n[front]\nlisten = "0.0.0.0:8090"\n'
                      '[server]\ntls = true\n')
    assert main(["front", "--config", str(config)]) == 2
    assert "a front serves HTTPS with server.tls_certificate" in capsys.readouterr().err
    config.write_text(config.read_text() + f'tls_certificate = "{tmp_path}/ca/front1.crt"\n'
                      f'tls_key = "{tmp_path}/ca/front1.key"\ntls_client_ca = "{tmp_path}/ca/ca.crt"\n')
    assert main(["front", "--config", str(config)]) == 2
    assert "server.tls_client_ca is for nodes" in capsys.readouterr().err
