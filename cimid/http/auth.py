"""HTTP Basic authentication against `[[auth.users]]`; with no users configured everyone is admin.

Passwords are stored as `pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>` (make one with
`cimid hash-password`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from ..errors import Unauthorized

ITERATIONS = 200_000


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


class Authenticator:
    def __init__(self, users: list[dict]):
        self.users = {u["name"]: u for u in users}
        self._cache: dict[tuple[str, str], str] = {}  # (name, password) -> role: PBKDF2 is slow on purpose

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def authenticate(self, header: str | None) -> tuple[str, str]:
        """(user, role) for an Authorization header."""
        if not self.enabled:
            return "anonymous", "admin"
        if not header or not header.lower().startswith("basic "):
            raise Unauthorized("this provider needs HTTP Basic authentication")
        try:
            name, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the Authorization header is not valid Basic credentials") from None
        key = (name, password)
        if key not in self._cache:
            user = self.users.get(name)
            if user is None or not verify_password(password, user["password_hash"]):
                raise Unauthorized("unknown user or wrong password")
            self._cache[key] = user["role"]
        return name, self._cache[key]
