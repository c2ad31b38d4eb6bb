"""Secrets and files (issue 14 items 6-8): credentials go only to a proven monitor, files are 0600, no secret in
`ps`, the logs or the database."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import pytest

from fleetpulse.broker import EmbeddedBroker, PasswordFile, Role
from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.alert_policy import AlertSettings
from fleetpulse.monitor.client import MonitorClient, MonitorError
from fleetpulse.monitor.sidecar import proof, sidecar_path
from fleetpulse.monitor.store import Store
from tests.conftest import CLI, ROOT, BrokerProcess, cli_process, read_until
from tests.e2e.test_monitor import AGENT_SCRIPT, eventually, state_of
from tests.http_receiver import Receiver

TOKEN = "api-token-Vq8sLw2Rk9Xz"
BROKER_PW = "broker-pw-J4mTq7Yc"
AGENT_PW = "agent-pw-8GdPx2Kq"
HOOK_PW = "hook-pw-Rb5Nw3Ls"
QUERY_TOKEN = "query-tok-Hy6Fz1Qm"
FILE_TOKEN = "file-tok-Uc2Ve9Ja"
RULES_TOKEN = "rules-tok-Pn4Kd8Wb"
SECRETS = (TOKEN, BROKER_PW, HOOK_PW, QUERY_TOKEN, FILE_TOKEN, RULES_TOKEN)


def _environment(**extra: str) -> dict[str, str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("FLEETPULSE_")}
    return {**clean, **extra}


def fleetpulse(*args: str, env: dict[str, str] | None = None) -> Any:
    """`fleetpulse ARGS` under umask 022, as a login shell has it: files the monitor makes private are its doing."""
    return cli_process(*args, env=env or _environment(), umask=0o022)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Squatter:
    """Whoever binds a port after the monitor that had it died: answers everything, records every request."""

    def __init__(self, port: int, nonce: str | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        squatter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._answer()

            def _answer(self) -> None:
                squatter.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                parts = urlsplit(self.path)
                document: Any = {"columns": ["x"], "rows": [[1]], "truncated": False}
                if parts.path == "/healthz":
                    challenge = parse_qs(parts.query).get("challenge", [""])[0]
                    answer = proof(nonce, challenge) if nonce is not None else "0" * 64
                    document = {"ok": True, "broker_connected": True, "monitor": "default", "proof": answer}
                elif parts.path in ("/api/agents", "/api/outages"):
                    document = []
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> Squatter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorizations(self) -> list[str]:
        return [headers["authorization"] for _, headers in self.requests if "authorization" in headers]


# -- item 7: files --------------------------------------------------------------------------------------------


def test_a_monitor_makes_its_database_wal_and_sidecar_private(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    db = tmp_path / "fleet.duckdb"
    with fleetpulse(
        "monitor", "--broker", amqtt_broker.url, "--db", str(db), "--dashboard-port", str(free_port())
    ) as m:
        read_until(m, "HTTP API:")
        wal = db.with_name(db.name + ".wal")  # written by the monitor's first commit ("started"), not yet checkpointed
        for path in (db, wal, sidecar_path(db)):
            assert mode(path) == 0o600, f"{path.name} is {mode(path):03o}"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([db.name, wal.name, sidecar_path(db).name])
        os.killpg(m.pid, signal.SIGTERM)
        assert m.wait(timeout=30) == 0
    assert mode(db) == 0o600 and not sidecar_path(db).exists()


def test_the_store_makes_a_database_other_users_could_read_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "old.duckdb"
    duckdb.connect(str(db)).close()
    db.chmod(0o644)
    Store(db, read_only=True).close()
    assert mode(db) == 0o644  # a reader changes nothing
    Store(db).close()
    assert mode(db) == 0o600
    assert any("was readable by other users (mode 644)" in record.getMessage() for record in caplog.records)


# -- item 6: the CLI trusts only a proven monitor ------------------------------------------------------------


def test_the_cli_sends_no_credential_to_whoever_took_a_dead_monitors_port(
    amqtt_broker: BrokerProcess, tmp_path: Path
) -> None:
    db, port = tmp_path / "fleet.duckdb", free_port()
    env = _environment(FLEETPULSE_AUTH=f"token:{TOKEN}")
    with fleetpulse(
        "monitor", "--broker", amqtt_broker.url, "--db", str(db), "--dashboard-port", str(port), env=env
    ) as m:
        read_until(m, "HTTP API:")
        os.killpg(m.pid, signal.SIGKILL)
        m.wait()
    assert json.loads(sidecar_path(db).read_text())["api"] == f"http://127.0.0.1:{port}"  # left behind
    with Squatter(port) as squatter:
        for command in (["status", "--json", "--broker", amqtt_broker.url], ["sql", "SELECT 42"], ["outages"]):
            result = run_cli(*command, "--db", str(db), env=env)
            assert result.returncode == 0, result.stderr
            assert f"http://127.0.0.1:{port}" in result.stderr and "is gone" in result.stderr, result.stderr
        assert "42" in run_cli("sql", "SELECT 42", "--db", str(db), env=env).stdout  # from the file itself
    assert squatter.authorizations() == []


@pytest.mark.parametrize(
    ("holder_holds_db", "knows_nonce"), [(True, True), (True, False), (False, True)], ids=["both", "no-nonce", "no-db"]
)
def test_credentials_need_both_the_process_holding_the_database_and_the_nonce(
    tmp_path: Path, holder_holds_db: bool, knows_nonce: bool
) -> None:
    # A forged sidecar: its writer knows the nonce; its pid is a live process that holds the database, or not.
    db = tmp_path / "fleet.duckdb"
    duckdb.connect(str(db)).close()
    held = db if holder_holds_db else tmp_path / "other.duckdb"
    hold = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print(1, flush=True); input()"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(held)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
        port, nonce = free_port(), "ab" * 32
        sidecar = {"pid": holder.pid, "api": f"http://127.0.0.1:{port}", "nonce": nonce, "monitor_id": "default"}
        sidecar_path(db).write_text(json.dumps(sidecar))
        with Squatter(port, nonce=nonce if knows_nonce else None) as squatter:
            result = run_cli("sql", "SELECT 1", "--db", str(db), env=_environment(FLEETPULSE_AUTH=f"token:{TOKEN}"))
    finally:
        holder.kill()
        holder.wait()
    if holder_holds_db and knows_nonce:  # the control: this is how a real monitor is recognised
        assert result.returncode == 0, result.stderr
        assert squatter.authorizations() and set(squatter.authorizations()) == {f"Bearer {TOKEN}"}
        return
    assert squatter.authorizations() == []
    why = "does not prove" if holder_holds_db else f"does not hold {db}"
    assert why in result.stderr, result.stderr


def test_a_proven_monitor_gets_the_token_and_answers(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    db = tmp_path / "fleet.duckdb"
    env = _environment(FLEETPULSE_AUTH=f"token:{TOKEN}")
    args = ("monitor", "--broker", amqtt_broker.url, "--db", str(db), "--dashboard-port", str(free_port()))
    with fleetpulse(*args, env=env) as m:
        read_until(m, "HTTP API:")
        sidecar = json.loads(sidecar_path(db).read_text())
        anonymous = MonitorClient(sidecar["api"])
        challenge = "c0ffee" * 8
        assert anonymous.healthz(challenge)["proof"] == proof(sidecar["nonce"], challenge)
        with pytest.raises(MonitorError) as bad:
            anonymous.healthz("not hex")
        assert bad.value.status == 400
        # The database is held: an answer can only come from the monitor's API, with the token.
        answer = run_cli("sql", "SELECT event FROM monitor_events", "--json", "--db", str(db), env=env)
        assert answer.returncode == 0, answer.stderr
        assert ["started"] in json.loads(answer.stdout)["rows"]
        refused = run_cli("sql", "SELECT 1", "--db", str(db), env=_environment())
        assert refused.returncode == 2 and "authentication required" in refused.stderr, refused.stderr
        basic = run_cli("sql", "SELECT 1", "--db", str(db), env=_environment(FLEETPULSE_AUTH="basic:ops:wrong-pw-1"))
        assert basic.returncode == 2 and "authentication required" in basic.stderr


# -- item 8: no secret in ps, logs or the database -----------------------------------------------------------


def _process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def test_secrets_given_by_environment_and_file_reach_no_argv_log_or_row(
    tmp_path: Path, receiver: Receiver, spawn: Any
) -> None:
    passwords = PasswordFile(tmp_path / "fleet.passwd")
    passwords.add("watcher", BROKER_PW, Role.MONITOR)
    passwords.add("agent-x", AGENT_PW, Role.AGENT)
    passwords.save()
    broker = EmbeddedBroker("127.0.0.1", 0, password_file=tmp_path / "fleet.passwd").start()
    try:
        notify_file = tmp_path / "notify.txt"
        notify_file.write_text(f"# on-call, second hook\n\n  {receiver.url}2?token={FILE_TOKEN}  \n")
        env = _environment(
            FLEETPULSE_BROKER=f"mqtt://watcher:{BROKER_PW}@127.0.0.1:{broker.port}",
            FLEETPULSE_AUTH=f"token:{TOKEN}",
            FLEETPULSE_NOTIFY=f"http://hook:{HOOK_PW}@127.0.0.1:{receiver.port}/hook?key={QUERY_TOKEN}",
        )
        db, port = tmp_path / "fleet.duckdb", free_port()
        args = ("monitor", "--db", str(db), "--dashboard-port", str(port), "--notify-file", str(notify_file))
        with fleetpulse(*args, env=env) as m:
            output = read_until(m, "HTTP API:")
            client = MonitorClient(f"http://127.0.0.1:{port}", token=TOKEN)
            eventually(lambda: client.healthz()["broker_connected"])
            tree = _process_tree(m.pid)
            assert len(tree) >= 2, "the monitor reads MQTT in a child process"
            for pid in tree:
                command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                assert not [s for s in SECRETS if s in command_line], command_line

            agent = spawn(AGENT_SCRIPT, f"mqtt://agent-x:{AGENT_PW}@127.0.0.1:{broker.port}", "agent-x", "0.5", "5")
            eventually(lambda: [a["health_status"] for a in client.list_agents()] == ["healthy"])
            agent.kill()
            paths = {f"/hook?key={QUERY_TOKEN}", f"/hook2?token={FILE_TOKEN}"}
            eventually(lambda: {r.path for r in receiver.requests} == paths)
            (hook,) = [r for r in receiver.requests if r.path.startswith("/hook?")]
            assert hook.headers["authorization"] == "Basic " + base64.b64encode(f"hook:{HOOK_PW}".encode()).decode()
            eventually(lambda: all(a["delivered_at"] for a in client.alerts()) and len(client.alerts()) == 2)

            answers = [json.dumps(client.alerts()), json.dumps(client.stats()), client.metrics()]
            answers += [json.dumps(client.healthz()), json.dumps(client.list_agents()), sidecar_path(db).read_text()]
            answers += [json.dumps(client.incidents())]
            assert client.incidents(), "the agent's incident is open"
            for answer in answers:
                assert not [s for s in SECRETS if s in answer], answer
            assert {a["channel"] for a in client.alerts()} == {
                f"http://hook:***@127.0.0.1:{receiver.port}/hook?key=***",
                f"{receiver.url}2?token=***",
            }
            os.killpg(m.pid, signal.SIGTERM)
            assert m.wait(timeout=30) == 0
            assert m.stdout is not None
            output += m.stdout.readlines()
    finally:
        broker.stop()
    log = "".join(output)
    assert "agent-x: healthy -> unreachable" in log and "delivered" in log, log
    assert not [s for s in SECRETS if s in log], log

    connection = duckdb.connect(str(db), read_only=True)
    tables = [row[0] for row in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    assert {"alerts", "alert_attempts", "alert_incidents", "monitor_events"} <= set(tables)
    for table in tables:
        text = json.dumps(connection.execute(f'SELECT * FROM "{table}"').fetchall(), default=str)
        assert not [s for s in SECRETS if s in text], (table, text)
    assert connection.execute("SELECT count(*) FROM monitor_events WHERE detail LIKE 'mqtt://watcher@%'").fetchone()
    connection.close()


def test_a_secret_on_the_command_line_works_with_one_warning_and_never_shows(tmp_path: Path) -> None:
    closed = free_port()
    url = f"mqtt://ops:{BROKER_PW}@127.0.0.1:{closed}"
    result = run_cli("kill", "agent-1", "--broker", url, "--wait-s", "0", env=_environment())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    warning, error = result.stderr.strip().splitlines()
    assert "--broker mqtt://ops@127.0.0.1" in warning and "FLEETPULSE_BROKER" in warning
    assert f"cannot reach the broker at mqtt://ops@127.0.0.1:{closed}" in error
    malformed = run_cli("demo", "--broker", f"{url}/path", env=_environment())
    assert malformed.returncode == 2 and "unexpected path" in malformed.stderr
    from_env = run_cli("kill", "agent-1", "--wait-s", "0", env=_environment(FLEETPULSE_BROKER=url))
    assert from_env.returncode == 2 and len(from_env.stderr.strip().splitlines()) == 1, from_env.stderr
    assert f"mqtt://ops@127.0.0.1:{closed}" in from_env.stderr
    with fleetpulse(
        "monitor", "--broker", f"mqtt://127.0.0.1:{closed}", "--db", str(tmp_path / "x.duckdb"),
        "--dashboard-port", "0", "--notify", f"https://hooks.example.com/x?token={QUERY_TOKEN}",
        "--auth", f"token:{TOKEN}",
    ) as m:  # fmt: skip
        lines = read_until(m, "monitor default:")
    text = "".join(lines)
    assert "--notify https://hooks.example.com/x?token=***" in text and "FLEETPULSE_NOTIFY" in text
    assert "--auth token:***" in text and "env FLEETPULSE_AUTH" in text
    for completed in (result, malformed, from_env):
        assert not [s for s in SECRETS if s in completed.stderr + completed.stdout]
    assert not [s for s in SECRETS if s in text], text


def test_up_hands_its_demo_agents_their_issued_credentials_outside_argv(tmp_path: Path) -> None:
    passwords = PasswordFile(tmp_path / "fleet.passwd")
    passwords.add("ops", BROKER_PW, Role.MONITOR)
    passwords.save()
    args = ("up", "--demo", "1", "--password-file", str(tmp_path / "fleet.passwd"), "--port", str(free_port()))
    args += ("--dashboard-port", str(free_port()), "--db", str(tmp_path / "up.duckdb"))
    with fleetpulse(*args) as up:
        lines = read_until(up, "fleet: 1/1 healthy")  # so the demo agent logged in with what it was given
        (pid,) = [int(line.split(" runs as pid ")[1].split()[0]) for line in lines if "demo agent demo-1 " in line]
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert "--broker" not in command_line and "@" not in command_line, command_line
        assert "FLEETPULSE_BROKER=mqtt://demo-1:" in Path(f"/proc/{pid}/environ").read_bytes().decode()


def test_an_incidents_channel_urls_are_stored_without_their_secrets_and_still_resolve_after_a_restart(
    amqtt_broker: BrokerProcess, monitor_factory: Any, spawn: Any, receiver: Receiver, tmp_path: Path
) -> None:
    url = f"{receiver.url}?token={RULES_TOKEN}"
    settings = AlertSettings(notify=(url,))  # as a rules file's [defaults] notify gives it
    db = tmp_path / "fleet.duckdb"
    monitor = monitor_factory(amqtt_broker, db=db, alerts=settings, alert_backoff_s=(0.2, 0.5))
    agent = spawn(AGENT_SCRIPT, amqtt_broker.url, "orders", "0.5", "5")
    eventually(lambda: state_of(monitor, "orders") == "healthy")
    agent.kill()
    eventually(lambda: [r.json()["event"] for r in receiver.requests] == ["trigger"])
    stored = monitor.store.query("SELECT channels FROM alert_incidents")[1]
    assert stored == [([f"{receiver.url}?token=*** #{hashlib.sha256(url.encode()).hexdigest()[:16]}"],)]
    monitor.stop()

    restarted = monitor_factory(amqtt_broker, db=db, alerts=settings, alert_backoff_s=(0.2, 0.5))
    spawn(AGENT_SCRIPT, amqtt_broker.url, "orders", "0.5", "5")
    eventually(lambda: [r.json()["event"] for r in receiver.requests] == ["trigger", "resolve"], timeout_s=20)
    assert {r.path for r in receiver.requests} == {
        f"/hook?token={RULES_TOKEN}"
    }  # the resolve went where the trigger did
    for table in ("alert_incidents", "alerts", "alert_attempts"):
        rows = restarted.store.query(f"SELECT * FROM {table}")[1]
        assert rows and RULES_TOKEN not in json.dumps(rows, default=str), table
