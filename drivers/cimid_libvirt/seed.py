"""The cloud-init NoCloud seed: an ISO 9660 volume labelled `cidata`, built in Python with pycdlib.

It carries `meta-data`, `user-data` (the Credential's user, SSH key and password merged with the
consumer's userData), `network-config`, and `cimi/user-data`: the decoded userData as CIMI's "disk"
UserData method defines it.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

# DHCP on every Ethernet interface: what a cloud image expects when nothing else is said.
NETWORK_CONFIG = {"version": 2, "ethernets": {"all": {"match": {"name": "e*"}, "dhcp4": True}}}


def network_config(interfaces) -> dict:
    """cloud-init network-config (version 2) for the machine's interfaces, matched by MAC: static
    addressing where an interface has an address, DHCP otherwise (whose server answers the address cimid
    reserved for that MAC); DHCP on every NIC when there are none."""
    if not interfaces:
        return NETWORK_CONFIG
    ethernets = {}
    for index, iface in enumerate(interfaces):
        entry: dict = {"match": {"macaddress": iface.mac.lower()}, "set-name": f"eth{index}"}
        if iface.address:
            entry["addresses"] = [iface.address]
            if iface.gateway:
                entry["routes"] = [{"to": "0.0.0.0/0", "via": iface.gateway}]
            if iface.dns:
                entry["nameservers"] = {"addresses": list(iface.dns)}
        else:
            entry["dhcp4"] = True
        if iface.mtu:
            entry["mtu"] = iface.mtu
        ethernets[f"eth{index}"] = entry
    return {"version": 2, "ethernets": ethernets}


def hostname_of(name: str, fallback: str) -> str:
    """A valid host name (RFC 1123 label) from a Machine's name."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or fallback


def cloud_config(credential: dict | None) -> dict:
    if not credential:
        return {}
    user: dict = {"name": credential.get("userName") or "cimi", "shell": "/bin/sh",
                  "sudo": "ALL=(ALL) NOPASSWD:ALL"}
    config: dict = {"users": [user]}
    if credential.get("key"):
        user["ssh_authorized_keys"] = [credential["key"].strip()]
    if credential.get("password"):
        user["lock_passwd"] = False
        user["plain_text_passwd"] = credential["password"]
        config["ssh_pwauth"] = True
    return config


def user_data(credential: dict | None, consumer_data: bytes | None) -> bytes:
    """cloud-init user-data: the consumer's data as it is when there is no Credential; a #cloud-config
    (JSON is YAML) when there is only a Credential; both as MIME multipart parts when there are both."""
    config = cloud_config(credential)
    as_cloud_config = ("#cloud-config\n" + json.dumps(config, indent=2) + "\n").encode()
    if not consumer_data:
        return as_cloud_config
    if not config:
        return consumer_data
    from email.mime.multipart import MIMEMultipart  # loaded when a machine is made, not at start-up
    from email.mime.text import MIMEText
    message = MIMEMultipart()
    message.attach(MIMEText(as_cloud_config.decode(), "cloud-config"))
    first = consumer_data.split(b"\n", 1)[0]
    subtype = "x-shellscript" if first.startswith(b"#!") else "cloud-config" if first.startswith(
        b"#cloud-config") else "plain"
    message.attach(MIMEText(consumer_data.decode("utf-8", "replace"), subtype))
    return message.as_bytes()


def build_seed(path: Path, *, instance_id: str, hostname: str, credential: dict | None,
               user_data_b64: str | None, interfaces=()) -> None:
    consumer = base64.b64decode(user_data_b64) if user_data_b64 else None
    files = {
        "meta-data": f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n".encode(),
        "user-data": user_data(credential, consumer),
        "network-config": (json.dumps(network_config(interfaces)) + "\n").encode(),
    }
    import pycdlib  # loaded when a machine is made: an idle daemon stays small
    iso = pycdlib.PyCdlib()
    # Rock Ridge and Joliet keep the lowercase, dashed names cloud-init looks for.
    iso.new(interchange_level=3, vol_ident="cidata", sys_ident="LINUX", rock_ridge="1.09", joliet=3)
    for name, data in files.items():
        _add(iso, f"/{_iso_name(name)}.;1", name, f"/{name}", data)
    if consumer is not None:
        iso.add_directory("/CIMI", rr_name="cimi", joliet_path="/cimi")
        _add(iso, "/CIMI/USER_DATA.;1", "user-data", "/cimi/user-data", consumer)
    tmp = path.with_suffix(".tmp")
    iso.write(str(tmp))
    iso.close()
    tmp.replace(path)


def _iso_name(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")  # ISO 9660 d-characters


def _add(iso, iso_path: str, rr_name: str, joliet_path: str, data: bytes) -> None:
    iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=rr_name, joliet_path=joliet_path)
