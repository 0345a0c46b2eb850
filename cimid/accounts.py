"""`cimid consumer ...` and `cimid token ...`: who may use this provider, managed on the host itself.

They open the store directly (the daemon may be running: SQLite's WAL lets both work), and the daemon
reads consumers and tokens on every request, so a change takes effect at once.
"""

from __future__ import annotations


import asyncio
import datetime as dt
import getpass
import re
import sys

from .config import Config
from .store import consumers
from .store.consumers import ROLES, ConsumerError
from .store.db import Store

QUOTAS = ("machines", "cpu", "memory", "volume_capacity", "networks")  # memory in KiB, like a MachineConfiguration's;
# volume_capacity in KB, the sum of a consumer's Volumes' capacities


def add_commands(command, config_options) -> None:
    """The `consumer` and `token` subcommands, on cli.py's parser."""
    consumer = command("consumer", "manage consumers (who may use the API, with which role)",
                       "Add, list, remove consumers, set their password, role and quotas. A consumer logs in "
                       "with HTTP Basic (name and password) or with a token. Roles: admin (everything), "
                       "user (the public catalogue and what it made), reader (everything, read-only).")
    verbs = consumer.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add a consumer", description="Add a consumer. Its password is read "
                           "from standard input (prompted on a terminal); with --no-password it logs in "
                           "with tokens only.")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="user")
    add.add_argument("--no-password", action="store_true", help="tokens only")
    verbs.add_parser("list", help="list consumers", description="List consumers, roles and quotas.")
    verbs.add_parser("remove", help="remove a consumer and its tokens",
                     description="Remove a consumer and its tokens; what it made stays, for an admin to "
                                 "see and delete.").add_argument("name")
    verbs.add_parser("passwd", help="set a consumer's password (read from standard input)",
                     description="Set a consumer's password, read from standard input (prompted on a "
                                 "terminal).").add_argument("name")
    role = verbs.add_parser("role", help="set a consumer's role", description="Set a consumer's role.")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    quota = verbs.add_parser("quota", help="set a consumer's quotas",
                             description="Set quotas, e.g. `cimid consumer quota bob machines=4 cpu=8 "
                                         "memory=8388608` (memory in KiB); `name=` removes one.")
    quota.add_argument("name")
    quota.add_argument("limits", nargs="*", metavar="NAME=VALUE")
    for sub in verbs.choices.values():
        config_options(sub)

    token = command("token", "manage API tokens",
                    "Create, list and revoke tokens. A token is shown once, when it is made, and is sent as "
                    "`Authorization: Bearer <token>`; only its hash is stored.")
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="make a token for a consumer",
                              description="Make a token for a consumer and print it (once).")
    create.add_argument("consumer")
    create.add_argument("--expires", metavar="WHEN",
                        help="a duration (30d, 12h, 90m) or a date/time (2027-01-31, 2027-01-31T12:00:00Z)")
    create.add_argument("--description", default="")
    verbs.add_parser("list", help="list tokens", description="List tokens (never their secrets)."
                     ).add_argument("consumer", nargs="?")
    verbs.add_parser("revoke", help="revoke a token", description="Revoke a token by its id."
                     ).add_argument("id")
    for sub in verbs.choices.values():
        config_options(sub)


def run(args, config: Config) -> int:
    try:
        return asyncio.run(_run(args, config))
    except ConsumerError as exc:
        print(f"cimid: {exc}", file=sys.stderr)
        return 2


async def _run(args, config: Config) -> int:
    store = Store(config.database, config["store"]["synchronous"].upper())
    await store.open()
    try:
        if args.command == "consumer":
            return await _consumer(store, args)
        return await _token(store, args)
    finally:
        await store.close()


async def _consumer(store: Store, args) -> int:
    from .http.auth import hash_password
    if args.verb == "add":
        password = None if args.no_password else _read_password()
        await consumers.add(store, args.name, args.role, hash_password(password) if password else None)
        print(f"consumer {args.name} added ({args.role})")
    elif args.verb == "list":
        for c in await consumers.listed(store):
            quotas = " ".join(f"{k}={v}" for k, v in sorted(c.quotas.items())) or "no quotas"
            login = "password and tokens" if c.password_hash else "tokens only"
            print(f"{c.name}\t{c.role}\t{login}\t{quotas}")
    elif args.verb == "remove":
        await consumers.remove(store, args.name)
        print(f"consumer {args.name} removed")
    elif args.verb == "passwd":
        await consumers.set_password(store, args.name, hash_password(_read_password()))
        print(f"password of {args.name} changed")
    elif args.verb == "role":
        await consumers.set_role(store, args.name, args.role)
        print(f"{args.name} is now {args.role}")
    elif args.verb == "quota":
        consumer = await consumers.get(store, args.name)
        if consumer is None:
            raise ConsumerError(f"there is no consumer '{args.name}'")
        quotas = dict(consumer.quotas)
        for item in args.limits:
            key, _, value = item.partition("=")
            if key not in QUOTAS:
                raise ConsumerError(f"unknown quota '{key}'; quotas are {', '.join(QUOTAS)}")
            if value == "":
                quotas.pop(key, None)
            elif value.isdigit():
                quotas[key] = int(value)
            else:
                raise ConsumerError(f"quota {key} must be a whole number, not '{value}'")
        await consumers.set_quotas(store, args.name, quotas)
        print(f"{args.name}: " + (" ".join(f"{k}={v}" for k, v in sorted(quotas.items())) or "no quotas"))
    return 0


async def _token(store: Store, args) -> int:
    if args.verb == "create":
        expires = expiry(args.expires) if args.expires else None
        token, secret = await consumers.create_token(store, args.consumer, description=args.description,
                                                     expires=expires)
        print(secret)
        print(f"token {token.id} for {token.consumer}" + (f", expires {expires}" if expires else "")
              + "; it is shown only now", file=sys.stderr)
    elif args.verb == "list":
        for t in await consumers.tokens(store, args.consumer):
            status = f"revoked {t.revoked}" if t.revoked else f"expires {t.expires}" if t.expires else "no expiry"
            print(f"{t.id}\t{t.consumer}\t{t.created}\t{status}\t{t.description}")
    elif args.verb == "revoke":
        await consumers.revoke_token(store, args.id)
        print(f"token {args.id} revoked")
    return 0


def expiry(text: str, now: dt.datetime | None = None) -> str:
    """'30d', '12h', '90m' from now, or an ISO date/time -> a stored UTC dateTime."""
    now = now or dt.datetime.now(dt.timezone.utc)
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
        when = now + dt.timedelta(**{unit: int(match[1])})
    else:
        try:
            when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConsumerError(f"--expires takes 30d, 12h, 90m or a date like 2027-01-31, not '{text}'") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _read_password() -> str:
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        raise ConsumerError("empty password (use --no-password for a consumer with tokens only)")
    return password



