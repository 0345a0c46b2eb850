"""`cimid serve | check | consumer | token | plugins | hash-password | --version`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import shutil
import sys
from pathlib import Path

from . import __version__
from .accounts import add_commands
from .accounts import run as manage_accounts
from .config import PROFILES, ConfigError, load


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cimid", description="A single-node DMTF CIMI cloud provider.")
    parser.add_argument("--version", action="version", version=f"cimid {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=description)

    def config_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, metavar="FILE",
                         help="TOML configuration, e.g. /etc/cimid/cimid.toml; without it the profile's "
                              "defaults apply")
        sub.add_argument("--profile", choices=PROFILES, help="sandbox (default: libvirt's in-process test "
                                                             "driver) or host (qemu:///system)")
        sub.add_argument("--state-dir", type=Path, metavar="DIR",
                         help="database and images (default ./cimid-state, or /var/lib/cimid for the host "
                              "profile)")

    serve_cmd = command("serve", "serve the CIMI API",
                        "Serve the CIMI API over HTTP (HTTPS with server.tls) until SIGINT or SIGTERM. Unfinished "
                        "Jobs of an earlier run are resumed or failed at start-up.")
    config_options(serve_cmd)
    serve_cmd.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8080; port 0 picks a free one")
    serve_cmd.add_argument("--ephemeral", action="store_true",
                           help="sandbox state in a new temporary directory, removed on exit (not with "
                                "--state-dir or the host profile)")
    serve_cmd.add_argument("--test-api", action="store_true",
                           help="offer the test-control extension (reset, fault rules, determinism) at "
                                "/cimi/testControl; refused beyond loopback without authentication")
    front_cmd = command("front", "serve one CIMI provider for a federation of nodes",
                        "Serve the CIMI API of every node registered in the etcd cluster of [cluster] endpoints, "
                        "on front.listen: requests routed by id to their node, collections merged, node "
                        "addresses rewritten. Holds no state; run as many as you like.")
    front_cmd.add_argument("--config", type=Path, metavar="FILE", required=True,
                           help="TOML configuration with [cluster] endpoints and [front]")
    front_cmd.add_argument("--listen", metavar="HOST:PORT", help="overrides front.listen")
    cluster_cmd = command("cluster", "the federation as etcd sees it",
                          "`cimid cluster status --config FILE`: each etcd member of [cluster] endpoints (leader, "
                          "version, size), then every node ever registered: live or down, its lease and what is "
                          "left of it, its capacity and the reservations placement holds on it. Exit status 1 if "
                          "no etcd member answers with a leader.\n"
                          "`cimid cluster certificate --dir DIR NAME [ADDRESS ...]`: the federation CA "
                          "(DIR/ca.crt, ca.key; made on first use) signs DIR/NAME.crt and NAME.key, for a node, "
                          "a front or an etcd member or client, good as server and as client, naming ADDRESS "
                          "(IP addresses or DNS names) as its subjectAltNames.\n"
                          "`cimid cluster tenant add|remove NAME --config FILE`: a consumer of the whole "
                          "federation, checked by the fronts, with quotas counted across every node.")
    actions = cluster_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="members, nodes, leases, capacity").add_argument(
        "--config", type=Path, metavar="FILE", required=True, help="TOML configuration with [cluster] endpoints")
    tenant = actions.add_parser("tenant", help="add or remove a consumer of the whole federation",
                                description="`add NAME --role R [--quota QUOTA=N ...]` reads the password from "
                                            "standard input (prompting on a terminal) and writes the tenant to etcd, "
                                            "replacing one of that name; `remove NAME`. Fronts check logins "
                                            "against the tenants and count their quotas (machines, cpu, memory "
                                            "in KiB, volume_capacity in KB, networks) across every node.")
    tenant.add_argument("verb", choices=("add", "remove"))
    tenant.add_argument("name")
    tenant.add_argument("--quota", dest="limits", action="append", default=[], metavar="QUOTA=N",
                        help="a limit across the federation: machines, cpu, memory (KiB), volume_capacity (KB) "
                             "or networks; repeat for each")
    tenant.add_argument("--role", choices=("admin", "user", "reader"), default="user")
    tenant.add_argument("--config", type=Path, metavar="FILE", required=True,
                        help="TOML configuration with [cluster] endpoints")
    token = actions.add_parser("token", help="create or revoke a Bearer token of a tenant",
                               description="`create TENANT [--expires 30d] [--description TEXT]` prints a new "
                                           "token once (etcd keeps only its SHA-256); `revoke ID`. Every front "
                                           "takes it as `Authorization: Bearer <token>` for that tenant.")
    token.add_argument("verb", choices=("create", "revoke"))
    token.add_argument("name", metavar="TENANT|ID")
    token.add_argument("--expires", metavar="WHEN", help="30d, 12h, 90m or a date (default: never)")
    token.add_argument("--description", default="", help="what the token is for")
    token.add_argument("--config", type=Path, metavar="FILE", required=True,
                       help="TOML configuration with [cluster] endpoints")
    issuing = actions.add_parser("certificate", help="issue a certificate of the federation CA")
    issuing.add_argument("--dir", type=Path, metavar="DIR", required=True, help="the federation CA's directory")
    issuing.add_argument("name", help="the holder, e.g. n1, front1, etcd1")
    issuing.add_argument("addresses", nargs="*", metavar="ADDRESS",
                         help="IP addresses and DNS names the holder is reached at")
    config_options(command("check", "validate the config and report driver health",
                           "Validate the configuration, print the TLS certificate's SHA-256 fingerprint, open "
                           "each configured driver and report its health "
                           "(for the host profile: libvirtd, virt types, guest mount namespaces), and the "
                           "state directory's free space. Exit status 1 if anything failed."))
    add_commands(command, config_options)
    command("plugins", "list registered plugins and the hooks they implement",
            "List every plugin registered under the 'cimid' entry-point group, built-in drivers included, "
            "with the hooks each implements.")
    command("hash-password", "hash a password for [[auth.users]]",
            "Read one password from standard input (prompting without echo on a terminal, else the first "
            "line) and print its password_hash for an [[auth.users]] entry, e.g. "
            "`echo 's3cret' | cimid hash-password`.")
    return parser


def _config(args, overrides: dict | None = None):
    return load(args.config, profile=args.profile, state_dir=args.state_dir, listen=getattr(args, "listen", None),
                overrides=overrides)


def serve(args) -> int:
    overrides: dict[str, dict] = {}
    if args.test_api:
        overrides["server"] = {"test_api": True}
    if not args.ephemeral:
        return _serve_config(_config(args, overrides))
    if args.state_dir is not None or args.profile == "host":
        raise ConfigError("--ephemeral runs the sandbox in a temporary directory of its own: drop --state-dir "
                          "and --profile host")
    import tempfile
    args.state_dir = Path(tempfile.mkdtemp(prefix="cimid-ephemeral-"))
    overrides["store"] = {"synchronous": "NORMAL"}  # the state is thrown away on exit: no fsync per commit
    try:
        config = _config(args, overrides)
        if config.profile != "sandbox":
            raise ConfigError("--ephemeral runs the sandbox profile only")
        return _serve_config(config)
    finally:
        shutil.rmtree(args.state_dir, ignore_errors=True)


def _serve_config(config) -> int:
    from aiohttp import web

    from .daemon import build_app
    host, port = config.listen
    log = logging.getLogger("cimid")
    ssl_context = _tls(config, log) if config["server"]["tls"] else None
    log.info("cimid %s serving the %s profile on %s://%s:%d/cimi/cloudEntryPoint (state in %s)", __version__,
             config.profile, "https" if ssl_context else "http", host, port, config.state_dir)
    asyncio.run(_serve(web, build_app(config), host, port, ssl_context))
    return 0


async def _announce(web, runner, ssl_context) -> str:
    """Once the CloudEntryPoint answers, one JSON line on stdout saying where (with the port the kernel
    picked for port 0), for whatever started cimid to read; returns the URL."""
    import json
    import os

    import aiohttp
    host, port = runner.addresses[0][:2]
    url = f"{'https' if ssl_context else 'http'}://{f'[{host}]' if ':' in host else host}:{port}/cimi/cloudEntryPoint"
    try:  # any answer will do (401 too); a handshake that wants a client certificate proves the port listens
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=False if ssl_context else None) as response:
                await response.read()
    except (aiohttp.ClientError, OSError) as exc:
        logging.getLogger("cimid").info("could not ask %s itself (%s); it listens", url, exc)
    sys.stdout.write(json.dumps({"cloudEntryPoint": url, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    return url


def _tls(config, log):
    """The server's SSLContext; its certificate is made self-signed first if none exists yet."""
    from .http.tls import ensure_certificate, server_context
    certificate = ensure_certificate(config)
    context = server_context(config, certificate)
    if certificate.made_now:
        log.info("made a self-signed TLS certificate %s (key %s)", certificate.certificate, certificate.key)
    # Clients pin this on first contact, as with Incus; `cimid check` prints it too.
    log.info("TLS certificate fingerprint (SHA-256): %s", certificate.fingerprint)
    if config["server"]["tls_client_ca"]:
        log.info("client certificates signed by %s authenticate as the user named by their subject CN",
                 config["server"]["tls_client_ca"])
    return context


async def _serve(web, app, host: str, port: int, ssl_context=None) -> None:
    """Serve until SIGINT or SIGTERM; a second signal during shutdown changes nothing (systemd and make
    both send one), so the store is always closed properly. Under systemd (Type=notify): READY=1 once the
    store is open, the drivers started and the port listens; STOPPING=1 on the signal; watchdog pings
    throughout."""
    import signal

    from .systemd import ServiceManager
    manager = ServiceManager()
    pinging = manager.start_watchdog()  # from before start-up: migrations may take a while
    runner = web.AppRunner(app, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()  # (a start-up that fails stops what it started itself: see http.app, daemon)
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        url = await _announce(web, runner, ssl_context)
        manager.notify("READY=1", f"STATUS=serving {url}")
        await stop.wait()
        manager.notify("STOPPING=1", "STATUS=stopping")
    finally:
        await runner.cleanup()
        if pinging:
            pinging.cancel()


def front(args) -> int:
    from aiohttp import web
    try:
        from .front.app import front_listen, make_front_app
    except ImportError as exc:
        raise ConfigError(f"cimid front needs the federation extra ({exc.name} is missing): "
                          "pip install 'cimid[federation]'") from None
    config = load(args.config, overrides={"front": {"listen": args.listen}} if args.listen else None)
    host, port = front_listen(config)
    ssl_context = None
    if config["server"]["tls"]:  # HTTPS towards clients; a front has no state directory to make a certificate in
        if not config["server"]["tls_certificate"] or config["server"]["tls_client_ca"]:
            raise ConfigError("a front serves HTTPS with server.tls_certificate and server.tls_key (e.g. its "
                              "`cimid cluster certificate`); server.tls_client_ca is for nodes (a front passes "
                              "the client's Authorization on; it cannot pass a certificate on)")
        ssl_context = _tls(config, logging.getLogger("cimid"))
    logging.getLogger("cimid").info("cimid %s front on %s://%s:%d/cimi/cloudEntryPoint (etcd %s)", __version__,
                                    "https" if ssl_context else "http", host, port,
                                    ", ".join(config["cluster"]["endpoints"]))
    # uvloop: a front does little but move bytes between sockets, where it halves the event loop's cost
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(web, make_front_app(config), host, port, ssl_context))
    return 0


def cluster(args) -> int:
    if args.action == "certificate":
        return certificate(args)
    config = load(args.config)
    if not config["cluster"]["endpoints"]:
        raise ConfigError("[cluster] endpoints is empty: this configuration is of a standalone node")
    if args.action == "tenant":
        return tenant(args, config)
    if args.action == "token":
        return tenant_token(args, config)
    try:
        from .cluster.status import report
    except ImportError as exc:
        raise ConfigError(f"cimid cluster needs the federation extra ({exc.name} is missing): "
                          "pip install 'cimid[federation]'") from None
    lines, healthy = asyncio.run(report(config))
    print("\n".join(lines))
    return 0 if healthy else 1


def tenant(args, config) -> int:
    from .cluster.etcd import Etcd
    from .cluster.quota import GLOBAL_QUOTAS
    from .front.identity import remove_tenant, set_tenant
    from .http.auth import hash_password
    prefix = config["cluster"]["prefix"].rstrip("/") + "/"
    quotas = {}
    for item in args.limits:
        key, _, value = item.partition("=")
        if key not in GLOBAL_QUOTAS or not value.isdigit():
            raise ConfigError(f"a tenant's quota is QUOTA=N with QUOTA one of {', '.join(GLOBAL_QUOTAS)}, not '{item}'")
        quotas[key] = int(value)
    if args.verb == "add":
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if not password:
            raise ConfigError("a tenant needs a password (read from standard input)")
        hashed = hash_password(password)

    async def run() -> bool:
        etcd = Etcd.from_config(config["cluster"])
        await etcd.connect()
        try:
            if args.verb == "add":
                await set_tenant(etcd, prefix, args.name, args.role, hashed, quotas)
                return True
            return await remove_tenant(etcd, prefix, args.name)
        finally:
            await etcd.close()

    done = asyncio.run(run())
    if args.verb == "add":
        print(f"tenant {args.name} ({args.role}): " + (" ".join(f"{k}={v}" for k, v in sorted(quotas.items()))
                                                        or "no quotas"))
        return 0
    print(f"tenant {args.name} removed" if done else f"no tenant {args.name}")
    return 0 if done else 1


def tenant_token(args, config) -> int:
    from .accounts import expiry
    from .cluster.etcd import Etcd
    from .front.identity import create_token, revoke_token
    from .store.consumers import ConsumerError
    prefix = config["cluster"]["prefix"].rstrip("/") + "/"
    try:
        expires = expiry(args.expires) if args.expires else None
    except ConsumerError as exc:
        raise ConfigError(str(exc)) from None

    async def run():
        etcd = Etcd.from_config(config["cluster"])
        await etcd.connect()
        try:
            if args.verb == "create":
                return await create_token(etcd, prefix, args.name, args.description, expires)
            return await revoke_token(etcd, prefix, args.name)
        finally:
            await etcd.close()

    done = asyncio.run(run())
    if args.verb == "create":
        token_id, secret = done
        print(f"token {token_id} of tenant {args.name}" + (f", expires {expires}" if expires else "")
              + f" (shown once):\n{secret}")
        return 0
    print(f"token {args.name} revoked" if done else f"no token {args.name}")
    return 0 if done else 1


def certificate(args) -> int:
    from .cluster.certs import issue
    name, addresses = args.name, args.addresses
    cert, key, made_ca = issue(args.dir, name, addresses)
    if made_ca:
        print(f"made the federation CA {args.dir / 'ca.crt'} (its key ca.key stays here)")
    print(f"issued {cert} and {key} for {name}" + (f" ({', '.join(addresses)})" if addresses else ""))
    return 0


def check(args) -> int:
    from .plugins import Drivers, plugin_manager
    config = _config(args)
    print(f"config: ok (profile {config.profile}, state in {config.state_dir})")
    healthy = _check_tls(config)
    drivers = Drivers.load(plugin_manager(), config)

    async def report() -> None:
        nonlocal healthy
        for kind in drivers.KINDS:
            driver = getattr(drivers, kind)
            if driver is None:
                print(f"{kind}: no driver configured (not served)")
                continue
            try:
                await driver.open()
                facts = await driver.health()
                print(f"{kind}: {driver.name}: ok")
                for key, value in facts.items():
                    print(f"  {key}: {value}")
                if kind == "network":
                    healthy = await _check_networks(config, driver) and healthy
            except Exception as exc:  # report every driver, whatever failed
                healthy = False
                print(f"{kind}: {driver.name}: FAILED: {exc}")
            finally:
                close = getattr(driver, "close", None)
                if close:
                    await close()
        usage = shutil.disk_usage(config.state_dir if config.state_dir.exists() else config.state_dir.parent)
        print(f"state dir: {usage.free // 2**20} MiB free")
    asyncio.run(report())
    return 0 if healthy else 1


async def _check_networks(config, driver) -> bool:
    """Each stored network's bridge, DHCP server and rules as the driver finds them; False if one is
    missing (a reboot the daemon has not repaired yet)."""
    if not config.database.exists():
        return True
    from .store.db import Store
    store = Store(config.database, config["store"]["synchronous"].upper())
    await store.open()
    try:
        networks = await store.all_of("Network")
    finally:
        await store.close()
    complete = True
    for network in networks:
        found = await driver.network(network.id)
        label = f"  network {network.attrs.get('name') or network.id} ({network.id}, {network.state})"
        if found is None:  # the memory driver's networks live in the daemon's process, not in this one
            print(f"{label}: not known to this driver here")
            continue
        print(f"{label}: " + ", ".join(f"{key} {value}" for key, value in found.items()))
        complete = complete and "missing" not in found.values()
    return complete


def _check_tls(config) -> bool:
    """Print the TLS set-up and the certificate's fingerprint; False if the certificate is unusable."""
    if not config["server"]["tls"]:
        print("tls: off (plain HTTP)")
        return True
    from .http.tls import certificate_paths, existing_certificate, server_context
    try:
        certificate = existing_certificate(config)
        if certificate is None:
            print(f"tls: no certificate yet: `cimid serve` makes a self-signed one at "
                  f"{certificate_paths(config)[0]}")
            return True
        server_context(config, certificate)  # the key matches, the client CA reads
    except ConfigError as exc:
        print(f"tls: FAILED: {exc}")
        return False
    print(f"tls: certificate {certificate.certificate}, valid until {certificate.not_after:%Y-%m-%d}")
    print(f"  fingerprint (SHA-256): {certificate.fingerprint}")
    if config["server"]["tls_client_ca"]:
        print(f"  client certificates: signed by {config['server']['tls_client_ca']}, user = subject CN")
    return True


def plugins(_args) -> int:
    from .plugins import describe, plugin_manager
    for name, hooks in describe(plugin_manager()):
        print(f"{name}: {', '.join(hooks) or '(no hooks)'}")
    return 0


def hash_password(_args) -> int:
    from .http.auth import hash_password as make_hash
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        print("cimid: empty password", file=sys.stderr)
        return 2
    print(make_hash(password))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .systemd import stderr_log_handler
    logging.basicConfig(level=logging.INFO, handlers=[stderr_log_handler()])
    args = _parser().parse_args(argv)
    try:
        if args.command in ("consumer", "token"):
            return manage_accounts(args, _config(args))
        commands = {"serve": serve, "front": front, "cluster": cluster, "check": check, "plugins": plugins,
                    "hash-password": hash_password}
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"cimid: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
