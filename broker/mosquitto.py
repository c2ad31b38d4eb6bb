"""Mosquitto: the configuration equivalent to the embedded broker's, and a process on a free port for tests."""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from fleetpulse.broker.acl import mosquitto_acl
from fleetpulse.broker.credentials import PasswordFile
from fleetpulse.broker.embedded import MAX_MESSAGE_BYTES, TlsFiles
from fleetpulse.broker.netutil import free_port, wait_for_port

__all__ = [
    "MONITOR_QUEUE_CONFIG",
    "MosquittoProcess",
    "mosquitto_binary",
    "mosquitto_version",
    "write_mosquitto_config",
]

# The account Debian's Mosquitto drops to when started as root, before it reads the password file.
_MOSQUITTO_ACCOUNT = "mosquitto"


def write_mosquitto_config(
    out_dir: Path, password_file: Path, host: str = "127.0.0.1", port: int = 1883, tls: TlsFiles | None = None
) -> list[Path]:
    """Write `mosquitto.conf`, `passwd` (a copy of `password_file`) and `acl` into `out_dir`; the paths written.

    Same users, same rules (broker/acl.py), anonymous access off. The copy is needed because Mosquitto
    reads the password file as the account it drops to; when run as root here, the copy is given to it.
    """
    users = PasswordFile(password_file).users()  # also checks the file before anything is written
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    passwd, acl, conf = out_dir / "passwd", out_dir / "acl", out_dir / "mosquitto.conf"
    for path, text in ((passwd, password_file.read_text(encoding="utf-8")), (acl, mosquitto_acl(users))):
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        if os.geteuid() == 0 and _account_exists(_MOSQUITTO_ACCOUNT):
            shutil.chown(path, user=_MOSQUITTO_ACCOUNT)
    lines = [
        "# Written by `fleetpulse broker mosquitto-config`: the embedded broker's users and rules for Mosquitto 2.0.",
        f"# Run: mosquitto -c {conf}",
        "# After `fleetpulse credentials add/remove`, run that command again and send Mosquitto SIGHUP.",
        "per_listener_settings false",
        f"listener {port} {host}",
    ]
    if tls is not None:
        lines += [f"certfile {tls.cert.resolve()}", f"keyfile {tls.key.resolve()}"]
    lines += [
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        "# Health messages are <= 16 KiB (SPEC §2): a client sending a bigger packet is disconnected.",
        f"max_packet_size {MAX_MESSAGE_BYTES}",
        *MONITOR_QUEUE_CONFIG,
    ]
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [conf, passwd, acl]


# Mosquitto queues at most 1,000 QoS 1 messages for a slow or reconnecting client and silently drops the
# rest: a burst (one flooding client, a monitor restart with a large fleet) would cost the monitor other
# agents' heartbeats. 100,000 messages of <= 16 KiB bound the broker's memory at ~1.6 GiB per monitor.
MONITOR_QUEUE_CONFIG = ("max_queued_messages 100000",)


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if path is None:
        raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install -y mosquitto mosquitto-clients)")
    return path


def mosquitto_version(binary: str) -> str:
    """'2.0.11', from the first line of `mosquitto -h`."""
    result = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    words = (result.stdout or result.stderr).split()
    return words[2] if len(words) > 2 and words[:2] == ["mosquitto", "version"] else "unknown"


class MosquittoProcess:
    """`mosquitto -c <conf>` listening on 127.0.0.1 and a free port; `extra_config` lines are appended.

    `MosquittoProcess.from_config(directory, conf, port)` runs a written configuration instead
    (e.g. from `write_mosquitto_config`), which must listen on `port`.
    """

    def __init__(self, directory: Path, extra_config: tuple[str, ...] = (), *, port: int | None = None) -> None:
        self.binary = mosquitto_binary()
        self.version = mosquitto_version(self.binary)
        self.port = port or free_port()
        self.config_lines: tuple[str, ...] = (
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            *extra_config,
        )
        self._config = directory / f"mosquitto-{self.port}.conf"
        self._log_path = directory / f"mosquitto-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_config(cls, directory: Path, config_file: Path, port: int) -> MosquittoProcess:
        process = cls(directory, port=port)
        process.config_lines = (
            *config_file.read_text(encoding="utf-8").splitlines(),
            # Started as root, Mosquitto drops to its own account before reading the password file, which
            # a test keeps in a private temporary directory: stay the invoking user (a no-op unless root).
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
        )
        return process

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self) -> MosquittoProcess:
        self._config.write_text("\n".join(self.config_lines) + "\n")
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen([self.binary, "-c", str(self._config)], stdout=log, stderr=log)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
