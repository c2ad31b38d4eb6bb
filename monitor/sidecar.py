"""The sidecar `<db>.monitor.json`: a running monitor says where its API listens, and proves it is that monitor."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "holds_database",
    "new_nonce",
    "process_owner",
    "proof",
    "read_sidecar",
    "sidecar_path",
    "write_private",
]

PROC = Path("/proc")


def sidecar_path(db_path: Path) -> Path:
    """Where a running monitor says who it is and where its API listens, next to the database it holds."""
    return db_path.with_name(db_path.name + ".monitor.json")


def new_nonce() -> str:
    """A secret made fresh for every start: only the monitor and readers of its 0600 sidecar know it."""
    return secrets.token_hex(32)


def proof(nonce: str, challenge: str) -> str:
    """What the API answers to `GET /healthz?challenge=...`: HMAC-SHA256 of the challenge under the nonce.

    Whoever answers this right knows the nonce, so it is the monitor that wrote the sidecar (issue 14
    item 6: after a `kill -9`, whoever binds the dead monitor's port must not collect the CLI's token).
    """
    return hmac.new(nonce.encode(), challenge.encode(), hashlib.sha256).hexdigest()


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, mode 0600 whatever the umask: a temp file, then a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def read_sidecar(db_path: Path) -> tuple[dict[str, Any], os.stat_result] | None:
    """The sidecar's document and the file's stat (its owner matters), or None without a readable one."""
    try:
        with sidecar_path(db_path).open("rb") as file:
            status = os.fstat(file.fileno())
            document = json.loads(file.read(64 * 1024))
    except (OSError, ValueError):
        return None
    return (document, status) if isinstance(document, dict) else None


def holds_database(pid: int, db_path: Path) -> bool | None:
    """Whether process `pid` holds `db_path` open and locked; None where this system cannot tell (no /proc).

    Two ways, either suffices: its open files (readable for one's own processes or as root), or the
    system's lock table (`/proc/locks`, readable by everyone: DuckDB takes a POSIX lock on the file it
    holds for writing), which covers a CLI run by another user than the monitor.
    """
    if not (PROC / "self").is_dir():
        return None
    try:
        database = db_path.resolve()
        status = database.stat()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        for descriptor in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                if Path(os.readlink(descriptor)) == database:
                    return True
    device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    try:
        locks = (PROC / "locks").read_text()
    except OSError:
        return False
    for line in locks.splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 18253 fe:00:2148688 0 EOF"; blocked waiters ("1: -> POSIX ...") hold nothing.
        if len(fields) >= 6 and fields[1] != "->" and fields[4] == str(pid) and fields[5] == device:
            return True
    return False


def process_owner(pid: int) -> int | None:
    """The user id process `pid` runs as, or None if it does not exist (or this system has no /proc)."""
    try:
        return (PROC / str(pid)).stat().st_uid
    except OSError:
        return None
