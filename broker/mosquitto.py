"""A Mosquitto process on a free port with its own config file: for tests, benchmarks and trying things out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from broker.netutil import free_port, wait_for_port

__all__ = ["MosquittoProcess", "mosquitto_binary", "mosquitto_version"]


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
    """`mosquitto -c <conf>` listening on 127.0.0.1 and a free port; `extra_config` lines are appended."""

    def __init__(self, directory: Path, extra_config: tuple[str, ...] = ()) -> None:
        self.binary = mosquitto_binary()
        self.version = mosquitto_version(self.binary)
        self.port = free_port()
        self.config_lines = (
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
