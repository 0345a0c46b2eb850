"""`cimid cluster status`: what etcd says of the federation, for an operator: each etcd member's health,
then every node ever registered (live or not), its lease, its capacity and what placement holds on it."""

from __future__ import annotations

import json

from ..config import Config
from .etcd import Etcd, EtcdUnavailable


async def report(config: Config) -> tuple[list[str], bool]:
    """(lines to print, whether etcd has a leader and answered)."""
    cluster = config["cluster"]
    prefix = cluster["prefix"].rstrip("/") + "/"
    lines, healthy = ["etcd:"], False
    for endpoint in cluster["endpoints"]:
        one = Etcd.from_config({**cluster, "endpoints": [endpoint]})
        try:
            await one.connect()
            status = await one.member_status()
            healthy = True
            role = "leader" if status["member"] == status["leader"] else "follower"
            lines.append(f"  {endpoint}: ok, {role}, version {status['version']}, "
                         f"database {status['db_size'] // 1024} KiB")
        except EtcdUnavailable as exc:
            lines.append(f"  {endpoint}: FAILED: {exc}")
        finally:
            await one.close()
    if not healthy:
        return lines + ["nodes: unknown (no etcd member answers with a leader)"], False
    etcd = Etcd.from_config(cluster)
    try:
        await etcd.connect()
        live = {e.key[len(prefix) + len("nodes/"):]: e for e in (await etcd.get_prefix(f"{prefix}nodes/"))[0]}
        known = {e.key[len(prefix) + len("nodeinfo/"):]: json.loads(e.value)
                 for e in (await etcd.get_prefix(f"{prefix}nodeinfo/"))[0]}
        ledger = {e.key[len(prefix) + len("capacity/"):]: json.loads(e.value)
                  for e in (await etcd.get_prefix(f"{prefix}capacity/"))[0]}
        lines.append("nodes:" if known or live else "nodes: none registered")
        for name in sorted(set(known) | set(live)):
            lines.append(await _node_line(etcd, name, live.get(name), known.get(name, {}), ledger.get(name, {})))
    except EtcdUnavailable as exc:
        lines.append(f"nodes: FAILED: {exc}")
        healthy = False
    finally:
        await etcd.close()
    return lines, healthy


async def _node_line(etcd: Etcd, name: str, registration, info: dict, ledger: dict) -> str:
    if registration is None:
        state = "DOWN (no lease)"
    else:
        record = json.loads(registration.value)
        ttl = await etcd.lease_ttl(registration.lease)
        state = (f"{record.get('state', '?')}, {record['url']}, api_level {record.get('api_level')}, "
                 f"version {record.get('version')}, lease {registration.lease:x} ({ttl} s left)")
    figures = ""
    if ledger:
        figures = (f"; cpu {ledger.get('used_cpu', 0)}/{ledger.get('cpu', 0)}, memory "
                   f"{ledger.get('used_memory_kb', 0) // 1024}/{ledger.get('memory_kb', 0) // 1024} MiB, "
                   f"{ledger.get('machines', 0)} machines, {len(ledger.get('inflight', {}))} reservations in flight")
    pools = info.get("capacity", {}).get("pools", {})
    if pools:
        figures += "; pools " + ", ".join(f"{p} {v['free_kb'] // 1024} MiB free" for p, v in sorted(pools.items()))
    return f"  {name}: {state}{figures}"
