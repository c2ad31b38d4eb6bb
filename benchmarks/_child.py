"""A benchmark child process that reports JSON events on stdout, one per line (`{"event": "ready", ...}`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["EventChild"]

REPO_ROOT = Path(__file__).resolve().parents[1]


class EventChild:
    """`python -m MODULE ARGS`, read event by event; `label` names it in errors."""

    def __init__(self, label: str, module: str, *arguments: str) -> None:
        self.label = label
        command = [sys.executable, "-m", module, *arguments]
        self._process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def read_event(self, expected: str) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait(timeout=15)
            raise RuntimeError(f"{self.label} exited with {code} before printing {expected!r}")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") != expected:
            raise RuntimeError(f"{self.label} printed {line.strip()[:200]!r}, expected {expected!r}")
        return event

    def send(self, line: str, close: bool = False) -> None:
        """Write a line to the child's stdin (where it waits for its cue)."""
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        if close:
            self._process.stdin.close()
        else:
            self._process.stdin.flush()

    def wait_ok(self, timeout_s: float = 30) -> None:
        code = self._process.wait(timeout=timeout_s)
        if code != 0:
            raise RuntimeError(f"{self.label} exited with {code}")

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
