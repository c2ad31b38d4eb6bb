"""The password file both brokers read (Mosquitto's own `user:$7$...` format) and its companion roles file.

`PATH` holds exactly what `mosquitto_passwd` writes: one `name:$7$<iterations>$<salt>$<hash>` line per user,
PBKDF2-HMAC-SHA512 with Mosquitto's 101 iterations and 12-byte salt, so Mosquitto reads it unchanged.
Roles cannot go in it (Mosquitto would take a comment for a user), so they live next to it in
`PATH.roles`: one `name:role` or `name:role:group` line per user. A user with no roles line is an `agent`,
the least privileged role, so a file edited with `mosquitto_passwd` alone grants nothing more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fleetpulse.publisher.errors import FleetpulseError
from fleetpulse.publisher.wire import is_valid_id, validate_id

__all__ = [
    "CredentialsError",
    "PasswordFile",
    "Role",
    "User",
    "hash_password",
    "roles_path",
    "verify_password",
]

# What mosquitto_passwd 2.0 writes by default (`-H sha512-pbkdf2`): checked in tests/broker/test_credentials.py.
PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12


class CredentialsError(FleetpulseError, ValueError):
    """A password file or roles file that cannot be used, or a request it cannot satisfy; says which line."""


class Role(StrEnum):
    AGENT = "agent"  # publishes only agents/<name>/health, reads only its own (and its group's) control topic
    MONITOR = "monitor"  # reads everything, publishes control commands and its own presence


@dataclass(frozen=True)
class User:
    name: str
    role: Role = Role.AGENT
    group: str | None = None  # an agent's group: it may also read groups/<group>/control


def roles_path(password_file: Path) -> Path:
    return password_file.with_name(password_file.name + ".roles")


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`$7$<iterations>$<salt>$<hash>` as mosquitto_passwd writes it (PBKDF2-HMAC-SHA512, base64)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Check `password` against a `$7$` (PBKDF2-SHA512) or older `$6$` (salted SHA-512) Mosquitto hash."""
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations = int(parts[2])
            if not 1 <= iterations <= 1_000_000:  # a hostile file must not make every CONNECT take minutes
                return False
            salt, expected = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
            actual = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
        elif len(parts) == 4 and parts[1] == "6":
            # Mosquitto <= 1.6's `sha512`: SHA-512(password || salt), not crypt(3)'s $6$.
            salt, expected = base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
            actual = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class _Entry:
    user: User
    password_hash: str


class PasswordFile:
    """The users of one password file and its roles file, read at construction; `save()` writes both."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, _Entry] = {}
        if path.exists():
            self._read()

    def _read(self) -> None:
        hashes: dict[str, str] = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            name, separator, password_hash = line.partition(":")
            if not separator or not password_hash:
                raise CredentialsError(f"{self.path}:{number}: not a `name:hash` line")
            hashes[name] = password_hash
        roles: dict[str, User] = {}
        if roles_path(self.path).exists():
            for number, line in enumerate(roles_path(self.path).read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                name, _, rest = line.partition(":")
                role_name, _, group = rest.partition(":")
                where = f"{roles_path(self.path)}:{number}"
                if role_name not in Role.__members__.values():
                    raise CredentialsError(f"{where}: role must be agent or monitor, got {role_name!r}")
                if group and not is_valid_id(group):
                    raise CredentialsError(f"{where}: invalid group {group!r}")
                roles[name] = User(name, Role(role_name), group or None)
        for name, password_hash in hashes.items():
            # A user name that cannot be a topic level would make the ACL's `agents/%u/...` mean something else.
            if not is_valid_id(name):
                raise CredentialsError(f"{self.path}: user name {name!r} cannot be an agent id (A-Z a-z 0-9 _ . -)")
            self._entries[name] = _Entry(roles.get(name, User(name)), password_hash)

    def users(self) -> list[User]:
        return sorted((entry.user for entry in self._entries.values()), key=lambda user: user.name)

    def user(self, name: str) -> User | None:
        entry = self._entries.get(name)
        return entry.user if entry is not None else None

    def check(self, name: str, password: str) -> User | None:
        """The user if `password` is right, else None."""
        entry = self._entries.get(name)
        if entry is None or not verify_password(password, entry.password_hash):
            return None
        return entry.user

    def add(self, name: str, password: str, role: Role = Role.AGENT, group: str | None = None) -> User:
        """Add the user, or replace its password, role and group."""
        validate_id(name, "user name")
        if group is not None:
            validate_id(group, "group")
            if role is not Role.AGENT:
                raise CredentialsError("only an agent has a group")
        if not password:
            raise CredentialsError("the password must not be empty")
        user = User(name, role, group)
        self._entries[name] = _Entry(user, hash_password(password))
        return user

    def remove(self, name: str) -> None:
        if self._entries.pop(name, None) is None:
            raise CredentialsError(f"no user {name!r} in {self.path}")

    def save(self) -> None:
        """Write both files atomically, readable by their owner only (they hold password hashes)."""
        users = self.users()
        _write_private(self.path, "".join(f"{u.name}:{self._entries[u.name].password_hash}\n" for u in users))
        roles = "".join(f"{u.name}:{u.role}" + (f":{u.group}" if u.group else "") + "\n" for u in users)
        _write_private(roles_path(self.path), roles)


def _write_private(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
