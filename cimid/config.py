"""Configuration: TOML (every key documented in etc/cimid.toml), profile defaults, command-line overrides."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PROFILES = ("sandbox", "host")

DEFAULTS: dict[str, dict] = {
    "server": {
        "listen": "127.0.0.1:8080",
        "public_base_url": "",
        "max_body_bytes": 1048576,
        "log_requests": True,
        # TLS (see etc/cimid.toml); empty certificate and key: <state_dir>/server.crt and server.key
        "tls": False,
        "tls_certificate": "",
        "tls_key": "",
        "tls_client_ca": "",
        "insecure": False,
        "idempotency_minutes": 1440,
        "test_api": False,
    },
    "store": {"synchronous": "FULL"},
    "jobs": {"retention_minutes": 1440, "max_concurrent": 4},
    "auth": {"users": [], "kdf_threads": 2, "max_failed_logins": 5, "failed_login_window_seconds": 60},
    "compute": {
        "driver": "",
        "uri": "qemu:///system",
        "virt_type": "qemu",
        "default_initial_state": "STARTED",
        "operation_delay": 0.0,
        "stop_timeout": 120.0,
        "disk_dir": "",
    },
    "images": {"driver": "", "dir": ""},
    # Named storage pools (see etc/cimid.toml): [storage.pools.<name>] driver = "memory" | "dir" | "lvm", and
    # the driver's keys; a VolumeConfiguration picks one by its type, else the default pool.
    "storage": {"default_pool": "default", "pools": {}, "full_alarm_percent": 90.0,
                "space_check_seconds": 60.0},
    # Networks (see etc/cimid.toml): the driver, where PUBLIC networks reach the outside, the default network
    "network": {"driver": "", "uplink": "", "bridged": False, "subnet_pool": "10.213.0.0/16", "dns": [],
                "default_network": "default", "create_default": False},
    "catalogue": {"seed": True},
    # EventLogs: how long a new log keeps its Events (daily, weekly, monthly, yearly), and the contact an
    # Event names when no consumer caused it (empty: none).
    "events": {"persistence": "weekly", "contact": ""},
    # Meters (see etc/cimid.toml): the sampler, the provider's MeterTemplates, sample retention
    "meters": {
        "sampling": True,
        "default_sample_interval": 10,
        "min_sample_interval": 1,
        "machine_templates": ["machine-cpu", "machine-memory", "machine-disk", "machine-diskio",
                              "machine-input", "machine-output"],
        "volume_templates": ["volume-disk", "volume-diskio"],
        "network_templates": ["network-input", "network-output"],
        "host_templates": ["host-cpu", "host-memory", "host-disk", "host-diskio", "host-input", "host-output"],
        "host_disk_path": "",
        "retention_hours": 168,
        "max_database_mb": 256,
        "metrics_access": "reader",
    },
    # Federation (see etc/cimid.toml): a node registers in etcd when endpoints are given; `cimid front`
    # reads the same endpoints and its own [front] keys.
    "cluster": {"endpoints": [], "node": "", "advertise_url": "", "lease_ttl": 10, "etcd_timeout": 2.0,
                "prefix": "/cimid/v1/", "cpu_allocation_ratio": 4.0, "memory_allocation_ratio": 1.0,
                "api_level": 0,
                # mTLS between fronts and nodes, TLS to etcd: one CA (`cimid cluster certificate`)
                "tls_ca": "", "tls_certificate": "", "tls_key": "", "etcd_server_name": "etcd"},
    "front": {"listen": "127.0.0.1:8090", "public_base_url": "", "strict": False, "node_timeout": 3.0,
              "reconcile_seconds": 30.0, "reservation_seconds": 60.0},
}

# Each family's driver by name. The sandbox runs on in-process twins (no hypervisor, no root); the host on
# libvirt + QEMU with a directory of qcow2/raw images, a dir storage pool, and Linux bridges with a default NATed
# network made on the first start (as Incus makes incusbr0).
PROFILE_DEFAULTS: dict[str, dict[str, dict]] = {
    "sandbox": {"compute": {"driver": "libvirt-test"}, "images": {"driver": "memory"},
                "storage": {"pools": {"default": {"driver": "memory", "capacity_gb": 100}}},
                "network": {"driver": "memory"}},
    "host": {"compute": {"driver": "libvirt"}, "images": {"driver": "dir"}, "catalogue": {"seed": False},
             "network": {"driver": "bridge", "create_default": True},
             "storage": {"pools": {"default": {"driver": "dir", "path": ""}}}},
}


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    profile: str = "sandbox"
    state_dir: Path = Path("cimid-state")
    sections: dict[str, dict] = field(default_factory=dict)

    def __getitem__(self, section: str) -> dict:
        return self.sections[section]

    @property
    def listen(self) -> tuple[str, int]:
        host, _, port = self["server"]["listen"].rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def database(self) -> Path:
        return self.state_dir / "cimid.sqlite3"


def load(path: Path | None = None, *, profile: str | None = None, state_dir: Path | None = None,
         listen: str | None = None, overrides: dict[str, dict] | None = None) -> Config:
    raw: dict = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    profile = profile or raw.get("profile", "sandbox")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}': choose one of {', '.join(PROFILES)}")
    sections = {name: dict(values) for name, values in DEFAULTS.items()}
    for layer in (PROFILE_DEFAULTS[profile], raw, overrides or {}):
        for name, values in layer.items():
            if name in ("profile", "state_dir"):
                continue
            if name not in sections:
                raise ConfigError(f"unknown config section [{name}]")
            if not isinstance(values, dict):
                raise ConfigError(f"[{name}] must be a table")
            for key, value in values.items():
                if key not in sections[name]:
                    raise ConfigError(f"unknown config key {name}.{key}")
                expected = type(DEFAULTS[name][key])
                if expected is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                    raise ConfigError(f"{name}.{key} must be a {expected.__name__}")
                sections[name][key] = value
    if listen:
        sections["server"]["listen"] = listen
    default_dir = "/var/lib/cimid" if profile == "host" else "cimid-state"
    config = Config(profile, Path(state_dir or raw.get("state_dir", default_dir)).absolute(), sections)
    _check(config)
    return config


def _check(config: Config) -> None:
    try:
        _host, _port = config.listen
    except ValueError:
        raise ConfigError(f"server.listen must be HOST:PORT, got '{config['server']['listen']}'") from None
    if config["store"]["synchronous"].upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError("store.synchronous must be FULL, NORMAL or EXTRA")
    if config["compute"]["virt_type"] not in ("kvm", "qemu"):
        raise ConfigError("compute.virt_type must be kvm or qemu")
    _check_pools(config["storage"])
    if config["compute"]["default_initial_state"] not in ("STARTED", "STOPPED"):
        raise ConfigError("compute.default_initial_state must be STARTED or STOPPED")
    base = config["server"]["public_base_url"]
    if base and not base.startswith(("http://", "https://")):
        raise ConfigError("server.public_base_url must be an http(s) URL")
    if config["events"]["persistence"] not in ("daily", "weekly", "monthly", "yearly"):
        raise ConfigError("events.persistence must be daily, weekly, monthly or yearly")
    if config["server"]["idempotency_minutes"] < 1:
        raise ConfigError("server.idempotency_minutes must be at least 1")
    _check_tls(config)
    _check_meters(config["meters"])
    _check_cluster(config)
    _check_network(config["network"])
    auth = config["auth"]
    if auth["kdf_threads"] < 1:
        raise ConfigError("auth.kdf_threads must be at least 1")
    if auth["max_failed_logins"] < 0 or auth["failed_login_window_seconds"] < 1:
        raise ConfigError("auth.max_failed_logins must be 0 (no limit) or more, "
                          "auth.failed_login_window_seconds at least 1")
    for user in config["auth"]["users"]:
        if not isinstance(user, dict) or not {"name", "password_hash", "role"} <= set(user):
            raise ConfigError("each [[auth.users]] needs name, password_hash and role")
        if user["role"] not in ("admin", "user", "reader"):
            raise ConfigError(f"auth user {user['name']}: role must be admin, user or reader")
    _check_exposure(config)


def _check_network(section: dict) -> None:
    try:
        pool = ipaddress.IPv4Network(section["subnet_pool"])
    except ValueError as exc:
        raise ConfigError(f"network.subnet_pool must be an IPv4 subnet: {exc}") from None
    if pool.prefixlen > 30:
        raise ConfigError("network.subnet_pool must hold at least a /30")
    for server in section["dns"]:
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            raise ConfigError(f"network.dns: '{server}' is not an IPv4 address") from None


# Each pool driver's keys and their types ("lvm" belongs to its own plugin, which checks the rest).
POOL_KEYS = {"memory": {"capacity_gb": int, "shareable": bool},
             "dir": {"path": str, "shareable": bool, "reserve_mb": int},
             "lvm": {"volume_group": str, "thin_pool": str, "thin_fill_limit": int, "shareable": bool,
                     "lvm_config": str}}


def _check_pools(storage: dict) -> None:
    pools = storage["pools"]
    for name, pool in pools.items():
        if not isinstance(pool, dict) or not isinstance(pool.get("driver"), str):
            raise ConfigError(f"storage pool '{name}' must be a table with a driver")
        known = POOL_KEYS.get(pool["driver"])
        if known is None:
            continue  # a third-party driver's pool: its plugin checks it
        for key, value in pool.items():
            if key == "driver":
                continue
            if key not in known:
                raise ConfigError(f"unknown key storage.pools.{name}.{key} for driver '{pool['driver']}'")
            if not isinstance(value, known[key]) or (known[key] is int and isinstance(value, bool)):
                raise ConfigError(f"storage.pools.{name}.{key} must be a {known[key].__name__}")
        if pool["driver"] == "memory" and pool.get("capacity_gb", 100) < 1:
            raise ConfigError(f"storage.pools.{name}.capacity_gb must be at least 1")
        if pool["driver"] == "lvm" and not pool.get("volume_group"):
            raise ConfigError(f"storage.pools.{name}.volume_group: an lvm pool needs its volume group")
        if pool["driver"] == "lvm" and not 1 <= pool.get("thin_fill_limit", 90) <= 100:
            raise ConfigError(f"storage.pools.{name}.thin_fill_limit must be a percentage from 1 to 100")
    if not 0 < storage["full_alarm_percent"] <= 100 or storage["space_check_seconds"] <= 0:
        raise ConfigError("storage.full_alarm_percent must be from 1 to 100 and storage.space_check_seconds "
                          "more than 0")
    if pools and storage["default_pool"] not in pools:
        raise ConfigError(f"storage.default_pool '{storage['default_pool']}' is not one of the pools: "
                          f"{', '.join(pools)}")


def _check_meters(meters: dict) -> None:
    if meters["min_sample_interval"] < 1 or meters["default_sample_interval"] < meters["min_sample_interval"]:
        raise ConfigError("meters.min_sample_interval must be at least 1 and meters.default_sample_interval at "
                          "least that")
    if meters["retention_hours"] < 1 or meters["max_database_mb"] < 1:
        raise ConfigError("meters.retention_hours and meters.max_database_mb must be at least 1")
    if meters["metrics_access"] not in ("admin", "reader", "user"):
        raise ConfigError("meters.metrics_access must be admin, reader or user")
    for key in ("machine_templates", "volume_templates", "host_templates"):
        if not all(isinstance(name, str) for name in meters[key]):
            raise ConfigError(f"meters.{key} must be a list of MeterTemplate ids")


def _check_cluster(config: Config) -> None:
    cluster, front = config["cluster"], config["front"]
    tls_keys = ("tls_ca", "tls_certificate", "tls_key")
    if any(cluster[k] for k in tls_keys) and not all(cluster[k] for k in tls_keys):
        raise ConfigError("cluster.tls_ca, cluster.tls_certificate and cluster.tls_key go together "
                          "(make them with `cimid cluster certificate`)")
    scheme = "https://" if cluster["tls_ca"] else "http://"
    if not all(isinstance(e, str) and e.startswith(scheme) and ":" in e[len(scheme):] for e in cluster["endpoints"]):
        raise ConfigError(f"cluster.endpoints must be etcd client URLs such as \"{scheme}10.0.0.1:2379\" "
                          "(https exactly when cluster.tls_ca is set)")
    if cluster["tls_ca"] and config["server"]["tls_client_ca"] and \
            Path(cluster["tls_ca"]).absolute() == Path(config["server"]["tls_client_ca"]).absolute():
        raise ConfigError("server.tls_client_ca must not be cluster.tls_ca: a certificate of the federation CA "
                          "is a front's, never a user's")
    if cluster["lease_ttl"] < 3:
        raise ConfigError("cluster.lease_ttl must be at least 3 seconds (the design asks for 10 or more)")
    if not 0 < cluster["etcd_timeout"] <= cluster["lease_ttl"] / 3:
        raise ConfigError("cluster.etcd_timeout must be more than 0 and at most a third of cluster.lease_ttl")
    if cluster["cpu_allocation_ratio"] <= 0 or cluster["memory_allocation_ratio"] <= 0:
        raise ConfigError("cluster.cpu_allocation_ratio and cluster.memory_allocation_ratio must be more than 0")
    if not cluster["prefix"].startswith("/"):
        raise ConfigError("cluster.prefix must start with /")
    if cluster["api_level"] < 0:
        raise ConfigError("cluster.api_level must be 0 (the level this version speaks) or a lower level to publish")
    for key in ("advertise_url",):
        if cluster[key] and not cluster[key].startswith(("http://", "https://")):
            raise ConfigError(f"cluster.{key} must be an http(s) URL")
    if front["public_base_url"] and not front["public_base_url"].startswith(("http://", "https://")):
        raise ConfigError("front.public_base_url must be an http(s) URL")
    host, _, port = front["listen"].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"front.listen must be HOST:PORT, got '{front['listen']}'")
    if min(front["node_timeout"], front["reconcile_seconds"], front["reservation_seconds"]) <= 0:
        raise ConfigError("front.node_timeout, front.reconcile_seconds and front.reservation_seconds must be "
                          "more than 0")


def _check_tls(config: Config) -> None:
    server = config["server"]
    if not server["tls"]:
        named = [f"server.{key}" for key in ("tls_certificate", "tls_key", "tls_client_ca") if server[key]]
        if named:
            raise ConfigError(f"{', '.join(named)} set but server.tls is false: set server.tls = true to serve "
                              "HTTPS")
        return
    if bool(server["tls_certificate"]) != bool(server["tls_key"]):
        raise ConfigError("server.tls_certificate and server.tls_key go together: set both, or neither for a "
                          "self-signed certificate in the state directory")
    if server["public_base_url"].startswith("http://"):
        raise ConfigError("server.public_base_url must be an https URL when server.tls is true")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other host name may resolve to anything


def _check_exposure(config: Config) -> None:
    """Beyond loopback, cimid needs TLS and users, unless the operator says something else protects it."""
    server = config["server"]
    if not exposed(config):
        return
    if not server["tls"]:
        raise exposure_error(config, "serves plain HTTP (set server.tls = true), so passwords and data would "
                                     "cross the network in clear")


def exposed(config: Config) -> bool:
    """Whether cimid listens beyond loopback without the operator saying something else protects it."""
    return not config["server"]["insecure"] and not is_loopback(config.listen[0])


def exposure_error(config: Config, problem: str) -> ConfigError:
    host, port = config.listen
    return ConfigError(f"refusing to listen on {host}:{port}, which is not a loopback address: it {problem}. "
                       "Set server.insecure = true only if something else protects the port (a TLS proxy "
                       "in front, a private network)")
