"""Hostile command-line arguments: refused in one line before they reach a topic, a file name or a shell."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT

# Path traversal, MQTT wildcards, shell syntax, a newline, too long, a full-width look-alike letter.
HOSTILE_IDS = ["../../etc/passwd", "a/+/#", "a;touch /tmp/pwned $(reboot)", "a\nb", "x" * 65, "\uff41gent"]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
@pytest.mark.parametrize(
    "command",
    [
        ["kill", "{id}", "--broker", "mqtt://127.0.0.1:9"],
        ["pause", "{id}", "--group", "--broker", "mqtt://127.0.0.1:9"],
        ["outages", "--agent", "{id}", "--db", "{db}"],
        ["demo", "--id", "{id}", "--broker", "mqtt://127.0.0.1:9"],
        ["credentials", "add", "{id}", "--password", "long-enough-pw", "--file", "{db}.passwd"],
    ],
    ids=["kill", "pause-group", "outages", "demo", "credentials"],
)
def test_hostile_ids_are_refused_in_one_line(hostile: str, command: list[str], tmp_path: Path) -> None:
    db = str(tmp_path / "x.duckdb")
    argv = [part.replace("{id}", hostile).replace("{db}", db) for part in command]
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "invalid" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing was written on the way to the refusal
    assert not Path("/tmp/pwned").exists()


def test_no_module_runs_a_shell() -> None:
    """Every subprocess gets an argument list, never a command line a shell would parse."""
    offenders = []
    for path in [*ROOT.glob("monitor/*.py"), *ROOT.glob("broker/*.py"), *ROOT.glob("publisher/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                offenders.append(f"{path.name}:{node.lineno}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("system", "popen")
                and getattr(node.value, "id", "") == "os"
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
