"""Who may use the HTTP server and how: credentials with roles, login backoff, Host and cross-site request rules."""

from __future__ import annotations

import base64
import collections
import enum
import hmac
import ipaddress
import re
import stat
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ApiAuth", "Credential", "FailureBackoff", "Role", "cross_site_refusal", "host_allowed"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # no ':' (Basic's separator), no '@' (issued_by's)
MIN_SECRET_CHARS = 16
# Requests that may change something, or (POST /api/sql) are dangerous though they do not.
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class Role(enum.StrEnum):
    VIEWER = "viewer"  # the dashboard and every read (GET, and /api/sql, which is read-only)
    OPERATOR = "operator"  # also commands, silences, forgetting: every state-changing request


@dataclass(frozen=True)
class Credential:
    """One secret and what it opens. `any_login_name`: the legacy `--auth token:` takes any user name."""

    name: str
    role: Role
    secret: str = field(repr=False)
    bearer: bool = True
    any_login_name: bool = False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class ApiAuth:
    """The credentials the HTTP server accepts (`--auth`, `--auth-file`): Bearer, Basic and the login form."""

    credentials: tuple[Credential, ...]

    @classmethod
    def parse(cls, text: str) -> ApiAuth:
        """`token:SECRET` or `basic:USER:PASSWORD`: one operator credential (names `api-token` and USER)."""
        kind, _, rest = text.partition(":")
        if kind == "token" and len(rest) >= MIN_SECRET_CHARS:
            return cls((Credential("api-token", Role.OPERATOR, rest, any_login_name=True),))
        user, _, password = rest.partition(":")
        if kind == "basic" and _NAME.match(user) and len(password) >= 8:
            return cls((Credential(user, Role.OPERATOR, password, bearer=False),))
        raise ValueError("--auth takes token:SECRET (16+ characters) or basic:USER:PASSWORD (8+ characters)")

    @classmethod
    def load(cls, path: Path) -> ApiAuth:
        """`--auth-file`: one `NAME ROLE SECRET` a line; refuses a file others may read, weak secrets, bad roles."""
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"--auth-file {path}: {error.strerror or error}") from None
        if mode & 0o077:
            raise ValueError(
                f"--auth-file {path} is open to group or others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
            )
        credentials: list[Credential] = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(maxsplit=2)
            where = f"--auth-file {path} line {number}"
            if len(fields) != 3:
                raise ValueError(f"{where}: expected NAME ROLE SECRET")
            name, role, secret = fields
            if not _NAME.match(name):
                raise ValueError(f"{where}: name {name!r} must be letters, digits, '_', '.', '-' (at most 64)")
            if role not in Role.__members__.values():
                raise ValueError(f"{where}: role {role!r} is neither viewer nor operator")
            if len(secret) < MIN_SECRET_CHARS:
                raise ValueError(f"{where}: the secret of {name!r} is shorter than {MIN_SECRET_CHARS} characters")
            credentials.append(Credential(name, Role(role), secret))
        if not credentials:
            raise ValueError(f"--auth-file {path} names no credential (NAME ROLE SECRET a line)")
        return cls(tuple(credentials))

    def merged(self, other: ApiAuth) -> ApiAuth:
        names = [c.name for c in (*self.credentials, *other.credentials)]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"credential name {twice[0]!r} is given twice (--auth and --auth-file)")
        return ApiAuth((*self.credentials, *other.credentials))

    @property
    def challenge(self) -> str:
        """The `WWW-Authenticate` answer: Basic when some credential works only that way."""
        return 'Basic realm="fleetpulse"' if any(not c.bearer for c in self.credentials) else "Bearer"

    def login(self, name: str, secret: str) -> Credential | None:
        """The credential `name` and `secret` open (login form, Basic); every candidate compared in constant time."""
        found = None
        for credential in self.credentials:
            name_matches = credential.any_login_name or _same(name, credential.name)
            if _same(secret, credential.secret) and name_matches and found is None:
                found = credential
        return found

    def identify(self, authorization: str | None) -> Credential | None:
        """The credential an `Authorization` header (Bearer SECRET or Basic NAME:SECRET) carries, else None."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            found = None
            for credential in self.credentials:
                if _same(value.strip(), credential.secret) and credential.bearer and found is None:
                    found = credential
            return found
        if scheme.lower() == "basic":
            try:
                name, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return self.login(name, secret)
        return None

    def who(self, authorization: str | None) -> str | None:
        credential = self.identify(authorization)
        return credential.name if credential else None

    def role_of(self, name: str | None) -> Role | None:
        return next((c.role for c in self.credentials if c.name == name), None)

    def operators(self) -> frozenset[str]:
        return frozenset(c.name for c in self.credentials if c.role is Role.OPERATOR)


@dataclass
class _Failures:
    count: int
    last_at: float
    blocked_until: float


class FailureBackoff:
    """Per remote address: after `free_failures` wrong secrets, each further try waits a doubling delay.

    Time comes in as `now` (monotonic seconds). An address's record is forgotten after `forget_after_s`
    without a failure, or a success; at most `max_addresses` are kept (least recently failed go first),
    so a flood of addresses costs bounded memory and at worst forgets some counts.
    """

    def __init__(
        self,
        free_failures: int = 5,
        first_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        forget_after_s: float = 300.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.free_failures = free_failures
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_addresses = max_addresses
        self._records: collections.OrderedDict[str, _Failures] = collections.OrderedDict()
        self._lock = threading.Lock()  # the login form and the API may run on different threads one day

    def retry_after(self, address: str, now: float) -> float:
        """Seconds `address` must still wait before its next try counts (0.0: go ahead)."""
        with self._lock:
            record = self._records.get(address)
            return max(0.0, record.blocked_until - now) if record else 0.0

    def failed(self, address: str, now: float) -> None:
        with self._lock:
            record = self._records.pop(address, None)
            if record is None or (now - record.last_at > self.forget_after_s and now >= record.blocked_until):
                record = _Failures(0, now, now)
            record.count += 1
            record.last_at = now
            beyond = record.count - self.free_failures
            if beyond >= 0:
                record.blocked_until = now + min(self.first_delay_s * 2.0 ** min(beyond, 32), self.max_delay_s)
            self._records[address] = record
            while len(self._records) > self.max_addresses:
                self._records.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._records.pop(address, None)

    def __len__(self) -> int:
        return len(self._records)


def _split_host(host: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port` or `name` -> (name, port)."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return name.lower().rstrip("."), int(port) if port.isdigit() else None


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a `Host` header names this server: any IP literal, or one of `names` (lower case).

    A DNS-rebinding page reaches us under its own domain name, so its requests carry that name; a
    page whose origin is an IP literal is no rebinding page (and same-origin rules hold for it).
    """
    name, _ = _split_host(host.strip())
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name in names
    return True


def cross_site_refusal(content_type: str | None, origin: str | None, host: str) -> tuple[int, str] | None:
    """Why an unsafe request (POST, PUT, DELETE, PATCH) is refused, as (status, message); None: allowed.

    JSON only: a page elsewhere can send `text/plain`, forms and `no-cors` fetches without asking us,
    but `application/json` across origins needs a CORS preflight, which this server never grants. And
    the `Origin` a browser adds must be this server as the request reached it (absent: no browser).
    The scheme is not compared: behind a TLS-terminating proxy we see http for an https page, and a
    page on this very host and port is this server whatever the scheme.
    """
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        return 415, "send Content-Type: application/json"
    if origin is None:
        return None
    parsed = urllib.parse.urlsplit(origin.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return 403, f"cross-origin request refused (Origin {origin[:100]!r})"
    name, port = _split_host(host)
    default_port = 443 if parsed.scheme == "https" else 80
    origin_port = parsed.port or default_port
    if parsed.hostname.lower().rstrip(".") != name or (port is not None and origin_port != port):
        return 403, f"cross-origin request refused (Origin {origin[:100]!r})"
    return None
