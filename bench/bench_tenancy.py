"""Benchmarks 5 and 6: what scoping costs a `user` consumer, against the same requests as an `admin`.

Both log in with a Bearer token (`cimid token create`): a token costs one SHA-256 and one indexed lookup,
the same for both roles, and keeps the password KDF (slow on purpose) out of the figures; so the ratio of
the two is what scoping adds, nothing else.

5. GET one Machine the user made, as the user and as the admin, on one server: wrk interleaved.
6. 10,000 Machines over 20 consumers (written straight into SQLite, like benchmark 2): the user's $filter
   and $orderby pages, side by side with the same queries as the admin, sequential keep-alive requests.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import time
from contextlib import ExitStack
from pathlib import Path

from bench_10k import COUNT, QUERIES, populate, stamp
from bench_get import create_machine, wrk
from common import (Client, Figure, Server, WrongAnswer, cimid_command, median, percentile, report_answers,
    start_cimid)

ADMIN, USER, OTHER = "bench-admin", "c-02", "c-03"
CONSUMERS = [f"c-{n:02d}" for n in range(20)]  # who the 10,000 Machines belong to: m-i to CONSUMERS[i % 20]
CONFIGS_EACH = 5  # MachineConfigurations per consumer; the first of them public


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_consumer(workdir: Path, server: str, state_dir: Path, name: str, role: str) -> dict[str, str]:
    """A consumer with tokens only, made with the command line an operator uses; its Authorization header."""
    cimid_command(workdir, server, state_dir, "consumer", "add", name, "--role", role, "--no-password")
    return bearer(cimid_command(workdir, server, state_dir, "token", "create", name).strip())


def check_get(client: Client, path: str, machine_id: str, who: str) -> None:
    status, _, body = client.request("GET", path)
    if status != 200 or json.loads(body).get("id", "").rsplit("/", 1)[-1] != machine_id:
        raise WrongAnswer(f"GET {path} as {who} answered {status} {body[:200]!r}, not 200 with that Machine")


def run_get(workdir: Path, quick: bool) -> list[Figure]:
    """Benchmark 5: GET one Machine as its user, and as an admin, on the same server."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk, or run `make bench`)")
    rounds, seconds, connections = (2, 2, 8) if quick else (5, 5, 8)
    state_dir = workdir / "scoped-get-state"
    auth = {name: add_consumer(workdir, "scoped-get", state_dir, name, role)
            for name, role in ((ADMIN, "admin"), (USER, "user"), (OTHER, "user"))}
    with ExitStack() as stack:
        cimid = start_cimid(workdir, "scoped-get", state_dir, headers=auth[ADMIN])
        stack.callback(cimid.stop)
        clients = {name: Client(cimid.port, headers=headers) for name, headers in auth.items()}
        for client in clients.values():
            stack.callback(client.close)
        path = create_machine(clients[USER])  # the user's own Machine
        machine_id = path.rsplit("/", 1)[-1]

        def answers() -> None:
            """Both see the Machine; another user gets 404, so the user's view really is scoped."""
            check_get(clients[USER], path, machine_id, f"the user {USER}")
            check_get(clients[ADMIN], path, machine_id, f"the admin {ADMIN}")
            status, _, _ = clients[OTHER].request("GET", path)
            if status != 404:
                raise WrongAnswer(f"GET {path} as another user ({OTHER}) answered {status}, not 404")

        answers()
        print(f"  GET {path} (a Machine of {USER}), Bearer tokens; wrk -t1 -c{connections} -d{seconds}s, "
              f"{rounds} interleaved rounds after a warm-up")
        runs = {"admin": auth[ADMIN], "user": auth[USER]}
        for headers in runs.values():
            wrk(cimid, path, 1, connections, headers)  # warm-up
        rps: dict[str, list[float]] = {who: [] for who in runs}
        cpu: dict[str, list[float]] = {who: [] for who in runs}
        for round_number in range(1, rounds + 1):
            for who, headers in runs.items():
                rate, cpu_us = wrk(cimid, path, seconds, connections, headers)  # a 404 would void it: raises
                rps[who].append(rate)
                cpu[who].append(cpu_us)
            print(f"    round {round_number}: admin {rps['admin'][-1]:8,.0f} req/s ({cpu['admin'][-1]:4.0f} us CPU/req)"
                  f"   user {rps['user'][-1]:8,.0f} req/s ({cpu['user'][-1]:4.0f} us CPU/req)"
                  f"   ratio {rps['user'][-1] / rps['admin'][-1]:.2f}")
        answers()  # still right after the load
    admin_rps, user_rps = median(rps["admin"]), median(rps["user"])
    admin_cpu, user_cpu = median(cpu["admin"]), median(cpu["user"])
    print(f"  median: admin {admin_rps:,.0f} req/s, user {user_rps:,.0f} req/s, user/admin {user_rps / admin_rps:.2f};"
          f" server CPU per request: admin {admin_cpu:.0f} us, user {user_cpu:.0f} us")
    print("  answers checked before and after: 200 with the Machine for both, 404 for another user")
    label = "Scoped GET machine"
    return [
        Figure.measured(f"{label}: admin (baseline)", admin_rps, "req/s", 0),
        Figure.measured(f"{label}: user", user_rps, "req/s", 0),
        Figure.measured(f"{label}: user / admin", user_rps / admin_rps, "", 2, ">=", 0.9),
        Figure.measured(f"{label}: server CPU per request, admin", admin_cpu, "us", 0),
        Figure.measured(f"{label}: server CPU per request, user", user_cpu, "us", 0),
    ]


def populate_tenants(database: Path) -> None:
    """The 10,000 Machines, spread over CONSUMERS, and each consumer's own catalogue entries (the first
    public), beside the consumers themselves: written straight into SQLite as cimid writes them."""
    populate(database, CONSUMERS)
    created = stamp(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    conn = sqlite3.connect(database)
    try:
        with conn:
            conn.executemany("INSERT OR IGNORE INTO consumers (name, role, created) VALUES (?, 'user', ?)",
                             [(name, created) for name in CONSUMERS])
            conn.executemany(
                "INSERT INTO resources (kind, id, parent, name, created, updated, doc, owner, public)"
                " VALUES ('MachineConfiguration', ?, '', ?, ?, ?, ?, ?, ?)",
                [(f"{owner}-cfg-{k}", f"{owner}-cfg-{k}", created, created,
                  json.dumps({"cpu": k + 1, "memory": (k + 1) * 1024 * 1024, "cpuArch": "x86_64", "disks": []}),
                  owner, int(k == 0)) for owner in CONSUMERS for k in range(CONFIGS_EACH)])
    finally:
        conn.close()


def expected(kind: str, role: str) -> tuple[int, list[str]]:
    """(count, names) the query answers to the admin or the user."""
    if kind == "filter":
        return 1, ["m-4242"]  # 4242 % 20 == 2: a Machine of USER, so both see it
    mine = range(COUNT) if role == "admin" else range(CONSUMERS.index(USER), COUNT, len(CONSUMERS))
    return len(mine), sorted((f"m-{i}" for i in mine), reverse=True)[:50]


def check(kind: str, role: str, doc: dict) -> str | None:
    """What is wrong with an answer, or None."""
    if kind == "cloudEntryPoint":
        return None if "machines" in doc else "the cloudEntryPoint lists no machines collection"
    count, names = expected(kind, role)
    got = [m.get("name") for m in doc.get("machines", [])]
    if doc.get("count") != count or got != names:
        return (f"answered count {doc.get('count')}, {len(got)} items starting {got[:3]}, "
                f"not count {count}, {len(names)} items starting {names[:3]}")
    return None


def check_catalogue(clients: dict[str, Client]) -> str | None:
    """The user sees the public catalogue (the seeded one and every consumer's public entry) and its own
    entries; the admin sees them all."""
    admin = clients["admin"].get_json("/cimi/machineConfigs")
    user = clients["user"].get_json("/cimi/machineConfigs")
    seeded = admin.get("count", 0) - len(CONSUMERS) * CONFIGS_EACH
    names = {c.get("name") for c in user.get("machineConfigs", [])}
    others_private = {f"{o}-cfg-{k}" for o in CONSUMERS if o != USER for k in range(1, CONFIGS_EACH)}
    want = seeded + len(CONSUMERS) + CONFIGS_EACH - 1
    if seeded <= 0 or user.get("count") != want or names & others_private:
        return (f"GET /cimi/machineConfigs as {USER} answered count {user.get('count')} (not {want}),"
                f" {len(names & others_private)} private entries of others")
    return None


def run_10k(workdir: Path, quick: bool) -> list[Figure]:
    """Benchmark 6: a user's pages among 10,000 Machines of 20 consumers, against the admin's."""
    warmup, samples = (5, 50) if quick else (20, 200)
    state_dir = workdir / "scoped-10k-state"
    fresh = start_cimid(workdir, "scoped-10k", state_dir)  # creates, migrates and seeds the store
    fresh.stop()
    auth = {"admin": add_consumer(workdir, "scoped-10k", state_dir, ADMIN, "admin"),
            "user": add_consumer(workdir, "scoped-10k", state_dir, USER, "user")}
    populate_tenants(state_dir / "cimid.sqlite3")
    print(f"  {COUNT:,} Machines over {len(CONSUMERS)} consumers ({COUNT // len(CONSUMERS)} each), "
          f"{CONFIGS_EACH} MachineConfigurations each (one public); the user is {USER}, both log in with tokens")
    requests = [(kind, role) for kind in ("filter", "orderby") for role in ("admin", "user")]
    requests.append(("cloudEntryPoint", "user"))
    with ExitStack() as stack:
        cimid: Server = start_cimid(workdir, "scoped-10k", state_dir, timeout=600, headers=auth["admin"])
        stack.callback(cimid.stop)
        clients = {role: Client(cimid.port, headers=headers) for role, headers in auth.items()}
        for client in clients.values():
            stack.callback(client.close)
        latencies: dict[tuple[str, str], list[float]] = {r: [] for r in requests}
        problems: dict[tuple[str, str], str] = {}
        catalogue = check_catalogue(clients)
        if catalogue:
            problems[("catalogue", "user")] = catalogue
        # Round-robin over every request, so the machine's noise hits admin and user alike.
        for round_number in range(warmup + samples):
            for kind, role in requests:
                started = time.perf_counter()
                status, _, body = clients[role].request("GET", QUERIES[kind])
                elapsed = time.perf_counter() - started
                if round_number >= warmup:
                    latencies[(kind, role)].append(elapsed * 1000)
                problem = f"answered {status}" if status != 200 else check(kind, role, json.loads(body))
                if problem:
                    problems.setdefault((kind, role), f"GET {QUERIES[kind]} as {role}: {problem}")

    print(f"  {samples} sequential requests each (keep-alive, after {warmup} warm-up rounds), in ms:")
    for kind, role in requests:
        values = latencies[(kind, role)]
        print(f"    {kind:16} {role:6} median {median(values):6.2f}   p95 {percentile(values, 95):6.2f}")
    report_answers(problems, f"the user's pages hold its own Machines alone, with its count "
                             f"({COUNT // len(CONSUMERS)}); its catalogue the public entries and its own")
    figures = [Figure.measured("Scoped 10k: GET cloudEntryPoint median, user (baseline)",
                               median(latencies[("cloudEntryPoint", "user")]), "ms", 2)]
    for kind, label in (("filter", "$filter=cpu>=2 and name='m-4242'"), ("orderby", "$orderby=name:desc, 50 items")):
        admin, user = latencies[(kind, "admin")], latencies[(kind, "user")]
        figures += [
            Figure.measured(f"Scoped 10k: {label} median, admin (baseline)", median(admin), "ms", 2),
            Figure.measured(f"Scoped 10k: {label} median, user", median(user), "ms", 2, "<=", 15),
            Figure.measured(f"Scoped 10k: {label} p95, admin (baseline)", percentile(admin, 95), "ms", 2),
            Figure.measured(f"Scoped 10k: {label} p95, user", percentile(user, 95), "ms", 2),
        ]
    figures.append(Figure.answer("Scoped 10k: answers (own Machines only, right counts)", list(problems.values())))
    return figures
