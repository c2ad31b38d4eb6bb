"""The password file: Mosquitto's format both ways (mosquitto_passwd <-> fleetpulse), roles, and the CLI."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from fleetpulse.broker import EmbeddedBroker, PasswordFile, Role
from fleetpulse.broker.credentials import CredentialsError, hash_password, roles_path, verify_password
from fleetpulse.monitor.cli import main
from tests.broker.conftest import SecuredBroker
from tests.conftest import require_tool


def test_a_hash_verifies_its_password_only() -> None:
    encoded = hash_password("s3cret: with spaces and ünïcode")
    assert encoded.startswith("$7$101$")
    assert verify_password("s3cret: with spaces and ünïcode", encoded)
    assert not verify_password("s3cret", encoded)
    for broken in ("", "$7$", "$7$101$not base64$x", "$7$99999999$AAAA$AAAA", "$2b$12$whatever", "plain"):
        assert not verify_password("x", broken)


def test_mosquitto_passwd_hashes_verify_here(tmp_path: Path) -> None:
    tool = require_tool("mosquitto_passwd")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), "pbkdf2", "pw one"], check=True, capture_output=True)
    subprocess.run([tool, "-H", "sha512", "-b", str(path), "legacy", "pw:two"], check=True, capture_output=True)
    lines = dict(line.split(":", 1) for line in path.read_text().splitlines())
    assert lines["pbkdf2"].startswith("$7$101$") and lines["legacy"].startswith("$6$")  # what Debian's tool writes
    passwords = PasswordFile(path)
    assert passwords.check("pbkdf2", "pw one") is not None
    assert passwords.check("legacy", "pw:two") is not None
    assert passwords.check("pbkdf2", "pw two") is None
    assert passwords.users()[0].role is Role.AGENT  # no roles file: the least privileged role


def test_a_file_written_here_takes_users_added_by_mosquitto_passwd_and_the_embedded_broker_lets_them_in(
    tmp_path: Path,
) -> None:
    tool = require_tool("mosquitto_passwd")
    path = tmp_path / "fleet.passwd"
    passwords = PasswordFile(path)
    passwords.add("mon", "pw-mon", Role.MONITOR)
    passwords.save()
    subprocess.run([tool, "-b", str(path), "a9", "pw-a9"], check=True, capture_output=True)
    assert path.read_text().count("\n") == 2 and PasswordFile(path).user("mon") == passwords.user("mon")
    with EmbeddedBroker("127.0.0.1", 0, password_file=path) as broker:
        secured = SecuredBroker("amqtt", broker.port, path)
        assert secured.connect("a9", "pw-a9")[1]
        assert secured.connect("mon", "pw-mon")[1]
        assert not secured.connect("a9", "pw-mon")[1]
        secured.close()


def test_both_files_are_private_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "fleet.passwd"
    passwords = PasswordFile(path)
    passwords.add("w-1", "pw", group="workers")
    passwords.add("ops", "pw", Role.MONITOR)
    passwords.save()
    for written in (path, roles_path(path)):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert roles_path(path).read_text() == "ops:monitor\nw-1:agent:workers\n"
    assert [(u.name, u.role, u.group) for u in PasswordFile(path).users()] == [
        ("ops", Role.MONITOR, None),
        ("w-1", Role.AGENT, "workers"),
    ]


@pytest.mark.parametrize(
    ("passwd", "roles", "complaint"),
    [
        ("a1\n", "", "not a `name:hash` line"),
        ("bad/name:$7$101$AAAA$AAAA\n", "", "cannot be an agent id"),
        ("a1:$7$101$AAAA$AAAA\n", "a1:admin\n", "role must be agent or monitor"),
        ("a1:$7$101$AAAA$AAAA\n", "a1:agent:bad group\n", "invalid group"),
    ],
)
def test_a_broken_file_is_refused_with_the_line(tmp_path: Path, passwd: str, roles: str, complaint: str) -> None:
    path = tmp_path / "fleet.passwd"
    path.write_text(passwd)
    roles_path(path).write_text(roles)
    with pytest.raises(CredentialsError, match=complaint):
        PasswordFile(path)


def test_the_credentials_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(tmp_path / "fleet.passwd")
    assert main(["credentials", "add", "demo-1", "--password", "pw", "--file", file]) == 0
    assert main(["credentials", "add", "ops", "--password", "pw", "--role", "monitor", "--file", file]) == 0
    assert main(["credentials", "add", "w-1", "--password", "pw", "--group", "workers", "--file", file]) == 0
    assert main(["credentials", "remove", "demo-1", "--file", file]) == 0
    capsys.readouterr()
    assert main(["credentials", "list", "--json", "--file", file]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "ops", "role": "monitor", "group": None},
        {"name": "w-1", "role": "agent", "group": "workers"},
    ]
    assert main(["credentials", "add", "a/b", "--password", "pw", "--file", file]) == 2
    assert main(["credentials", "add", "ops", "--password", "pw", "--role", "monitor", "--group", "g", "--file", file])
    assert main(["credentials", "remove", "nobody", "--file", file]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err


def test_mosquitto_config_writes_the_same_users_and_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "fleet.passwd"
    assert main(["credentials", "add", "ops", "--password", "pw", "--role", "monitor", "--file", str(file)]) == 0
    assert main(["credentials", "add", "w-1", "--password", "pw", "--group", "workers", "--file", str(file)]) == 0
    out = tmp_path / "mosquitto"
    assert main(["broker", "mosquitto-config", "--out", str(out), "--password-file", str(file), "--port", "8883"]) == 0
    conf = (out / "mosquitto.conf").read_text()
    for line in ("listener 8883 127.0.0.1", "allow_anonymous false", f"password_file {out / 'passwd'}"):
        assert line in conf.splitlines()
    assert (out / "passwd").read_text() == file.read_text()
    acl = (out / "acl").read_text().splitlines()
    assert "pattern write agents/%u/health" in acl and "pattern read agents/%u/control" in acl
    assert acl[acl.index("user ops") + 1 : acl.index("user ops") + 5] == [
        "topic read #",
        "topic write agents/+/control",
        "topic write groups/+/control",
        "topic write fleetpulse/monitor/#",
    ]
    assert acl[acl.index("user w-1") + 1] == "topic read groups/workers/control"
    assert main(["broker", "mosquitto-config", "--out", str(out)]) == 2  # no password file: refused
