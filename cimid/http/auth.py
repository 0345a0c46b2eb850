"""HTTP Basic authentication against `[[auth.users]]`, or a verified client certificate whose subject CN
names one of them; with no users configured everyone is admin.

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

from ..errors import TooManyRequests, Unauthorized

ITERATIONS = 200_000
MAX_VERIFIED = 1024  # remembered logins; a user has one password, so this only bounds memory
MAX_ADDRESSES = 10_000  # addresses with recent failures; the oldest is forgotten first


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
    def __init__(self, users: list[dict], *, kdf_threads: int = 2, max_failed_logins: int = 5,
                 failed_login_window_seconds: int = 60):
        self.users = {u["name"]: u for u in users}
        self.verified: dict[bytes, str] = {}  # cache_key(name, password) -> role
        self.failures = FailedLogins(max_failed_logins, failed_login_window_seconds)
        self._key = os.urandom(32)
        # Never matches (its digest is random), and costs what the configured users' hashes cost.
        iterations = max((_iterations(u["password_hash"]) for u in users), default=ITERATIONS)
        self._dummy = f"pbkdf2_sha256${iterations}${os.urandom(16).hex()}${os.urandom(32).hex()}"
        self.pool = ThreadPoolExecutor(kdf_threads, thread_name_prefix="cimid-kdf") if users else None

    @classmethod
    def from_config(cls, auth: dict) -> Authenticator:
        return cls(auth["users"], kdf_threads=auth["kdf_threads"], max_failed_logins=auth["max_failed_logins"],
                   failed_login_window_seconds=auth["failed_login_window_seconds"])

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def cache_key(self, name: str, password: str) -> bytes:
        """A keyed hash of the credentials: a memory dump or a timing probe of the cache shows no secret."""
        message = f"{len(name)}:{name}:{password}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def authenticate(self, header: str | None, address: str | None) -> tuple[str, str]:
        """(user, role) for an Authorization header sent from `address`."""
        if not self.enabled:
            return "anonymous", "admin"
        if not header or not header.lower().startswith("basic "):
            raise Unauthorized("this provider needs HTTP Basic authentication")
        try:
            name, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the Authorization header is not valid Basic credentials") from None
        address = address or ""
        wait = self.failures.retry_after(address)
        if wait:  # also for the right password: otherwise the lock would still answer guesses
            raise TooManyRequests(f"too many failed logins from this address; try again in {wait} seconds",
                                  retry_after=wait)
        key = self.cache_key(name, password)
        role = self.verified.get(key)
        if role is None:
            user = self.users.get(name)
            stored = user["password_hash"] if user is not None else self._dummy
            matches = await asyncio.get_running_loop().run_in_executor(self.pool, verify_password, password, stored)
            if user is None or not matches:
                self.failures.failed(address)  # a later success does not reset it: one known account
                raise Unauthorized("unknown user or wrong password")  # must not unlock guessing at another
            role = user["role"]
            if len(self.verified) >= MAX_VERIFIED:
                del self.verified[next(iter(self.verified))]
            self.verified[key] = role
        return name, role

    async def authenticate_certificate(self, name: str) -> tuple[str, str]:
        """(user, role) for a client certificate the TLS layer verified against server.tls_client_ca;
        `name` is its subject's CN, looked up like a Basic user's name. No password and no failure
        counting: the CA vouched for the name, and a stranger's certificate never gets this far."""
        if not self.enabled:
            return name or "anonymous", "admin"  # everyone is admin, but the name says who
        user = self.users.get(name)
        if user is None:
            raise Unauthorized(f"the client certificate's subject CN {name!r} is not a user of this provider")
        return name, user["role"]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
