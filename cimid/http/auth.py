"""Who is asking: HTTP Basic (a consumer's name and password) or `Authorization: Bearer <token>`.

Consumers live in the store (`cimid consumer add`, `cimid token create`); the users of `[[auth.users]]` in
cimid.toml keep working beside them, as consumers that cannot be managed from the command line. With no
consumer and no configured user at all, everyone who reaches the port is admin (fine on loopback; the
first consumer added switches authentication on within a second, without a restart; it stays on until the
next start even if every consumer is removed again).
A verified client certificate (server.tls_client_ca) whose subject CN names a consumer or user logs in as
it, with no password.

Passwords are stored as `pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>` (make one with
`cimid hash-password`). Verifying one is slow on purpose, so:
- it runs in a small thread pool of its own (`auth.kdf_threads`), never on the event loop;
- an unknown user name costs the same verification, against a dummy hash, so timing does not tell which
  names exist (exactly the same when every hash has the same iteration count, as `hash-password` makes);
- a verified login is remembered under an HMAC of name and password, keyed with a random key made at
  start-up, never under the password itself;
- an address with `auth.max_failed_logins` failed logins within `auth.failed_login_window_seconds` gets
  429 with Retry-After, whatever it sends, until the oldest of those failures leaves the window.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import TooManyRequests, Unauthorized
from ..service.consumers import ConsumerDirectory

ITERATIONS = 200_000
MAX_VERIFIED = 1024  # remembered logins; a user has one password, so this only bounds memory
MAX_ADDRESSES = 10_000  # addresses with recent failures; the oldest is forgotten first
OPEN_CHECK_SECONDS = 1.0  # how often a provider without consumers looks again whether one was added


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    quotas: dict = field(default_factory=dict, hash=False, compare=False)


ANONYMOUS = Identity("anonymous", "admin")


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        actual = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(actual.hex(), digest)


def _iterations(stored: str) -> int:
    try:
        return int(stored.split("$")[1])
    except (IndexError, ValueError):
        return ITERATIONS


class FailedLogins:
    """Recent failed logins per client address (a sliding window)."""

    def __init__(self, limit: int, window: int):
        self.limit, self.window = limit, window  # limit 0: no limit
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> int:
        """Whole seconds until `address` may try to log in again; 0 if it may now."""
        times = self._failures.get(address)
        if not self.limit or times is None:
            return 0
        now = time.monotonic()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[address]
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(self.window - (now - times[0])))

    def failed(self, address: str) -> None:
        if not self.limit:
            return
        if address not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(address, deque(maxlen=self.limit)).append(time.monotonic())


class Authenticator:
    def __init__(self, users: list[dict], directory: ConsumerDirectory, *, kdf_threads: int = 2, max_failed_logins: int = 5,
                 failed_login_window_seconds: int = 60):
        self.users = {u["name"]: u for u in users}
        self.directory = directory
        self._open_until = 0.0  # while no consumer exists: when to look again
        self._closed = bool(users)  # once someone must log in, it stays so until a restart
        self.verified: dict[bytes, str] = {}  # cache_key(name, password) -> role
        self.failures = FailedLogins(max_failed_logins, failed_login_window_seconds)
        self._key = os.urandom(32)
        # Never matches (its digest is random), and costs what the configured users' hashes cost.
        iterations = max((_iterations(u["password_hash"]) for u in users), default=ITERATIONS)
        self._dummy = f"pbkdf2_sha256${iterations}${os.urandom(16).hex()}${os.urandom(32).hex()}"
        self.pool = ThreadPoolExecutor(kdf_threads, thread_name_prefix="cimid-kdf")

    @classmethod
    def from_config(cls, auth: dict, directory: ConsumerDirectory) -> Authenticator:
        return cls(auth["users"], directory, kdf_threads=auth["kdf_threads"],
                   max_failed_logins=auth["max_failed_logins"],
                   failed_login_window_seconds=auth["failed_login_window_seconds"])

    async def enabled(self) -> bool:
        """Whether anyone must log in: a configured user, or a consumer in the store."""
        if self._closed:
            return True  # a store query saved on every request; removing every consumer needs a restart
        now = time.monotonic()
        if now < self._open_until:
            return False
        if await self.directory.any():
            self._closed = True
            return True
        self._open_until = now + OPEN_CHECK_SECONDS
        return False

    def cache_key(self, name: str, password: str, stored: str = "") -> bytes:
        """A keyed hash of the credentials: a memory dump or a timing probe of the cache shows no secret."""
        message = f"{len(name)}:{name}:{len(stored)}:{stored}:{password}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def authenticate(self, header: str | None, address: str | None) -> Identity:
        """Who sent an Authorization header from `address`."""
        if not await self.enabled():
            return ANONYMOUS
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() not in ("basic", "bearer"):
            raise Unauthorized("this provider needs HTTP Basic authentication or a Bearer token")
        address = address or ""
        wait = self.failures.retry_after(address)
        if wait:  # also for the right password: otherwise the lock would still answer guesses
            raise TooManyRequests(f"too many failed logins from this address; try again in {wait} seconds",
                                  retry_after=wait)
        if scheme.lower() == "bearer":
            holder = await self.directory.token_holder(credentials.strip())
            if holder is None:
                self.failures.failed(address)
                raise Unauthorized("unknown, expired or revoked token")
            return Identity(holder.name, holder.role, holder.quotas)
        try:
            name, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the Authorization header is not valid Basic credentials") from None
        identity, stored = await self._account(name)
        # Keyed by the stored hash too: a changed password or role takes effect at once.
        key = self.cache_key(name, password, stored or "")
        if key not in self.verified:
            matches = await asyncio.get_running_loop().run_in_executor(
                self.pool, verify_password, password, stored or self._dummy)
            if identity is None or stored is None or not matches:
                self.failures.failed(address)  # a later success does not reset it: one known account
                raise Unauthorized("unknown user or wrong password")  # must not unlock guessing at another
            if len(self.verified) >= MAX_VERIFIED:
                del self.verified[next(iter(self.verified))]
            self.verified[key] = True
        return identity

    async def _account(self, name: str) -> tuple[Identity | None, str | None]:
        """(who `name` is, its password hash): a configured user first, else a consumer in the store."""
        user = self.users.get(name)
        if user is not None:
            return Identity(name, user["role"]), user["password_hash"]
        consumer = await self.directory.named(name)
        if consumer is None:
            return None, None
        return Identity(consumer.name, consumer.role, consumer.quotas), consumer.password_hash

    async def authenticate_certificate(self, name: str) -> Identity:
        """Who a client certificate the TLS layer verified against server.tls_client_ca names: its
        subject's CN, looked up like a Basic user's name. No password and no failure counting: the CA
        vouched for the name, and a stranger's certificate never gets this far."""
        if not await self.enabled():
            return Identity(name or "anonymous", "admin")  # everyone is admin, but the name says who
        identity, _ = await self._account(name)
        if identity is None:
            raise Unauthorized(f"the client certificate's subject CN {name!r} is not a consumer of this provider")
        return identity

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
