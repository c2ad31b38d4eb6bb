"""The HTTP server's own surface (issue 14, items 2, 4, 9, 10, 11): Host, cross-site requests, roles, login backoff."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.access import ApiAuth, FailureBackoff, Role, cross_site_refusal, host_allowed
from fleetpulse.monitor.api import ApiServer
from fleetpulse.monitor.client import MonitorClient
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.publisher import Agent
from tests.conftest import CLI, ROOT, BrokerProcess, cli_process, read_until
from tests.e2e.test_monitor import eventually, rows, state_of

OPERATOR_SECRET = "operator-secret-0123456789"
VIEWER_SECRET = "viewer-secret-0123456789ab"
AUTH_FILE = f"# who  role  secret\nalice operator {OPERATOR_SECRET}\n\nwall viewer {VIEWER_SECRET}\n"


# -- pure rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8080", True),
        ("127.0.0.1", True),
        ("[::1]:8080", True),
        ("10.1.2.3:80", True),  # any IP literal: no rebinding page has one as its origin
        ("localhost:8080", True),
        ("LOCALHOST.:8080", True),
        ("monitor.internal", True),  # given with --allowed-host
        ("evil.example:8080", False),
        ("localhost.evil.example:8080", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
    ],
)
def test_the_host_header_must_name_this_server(host: str, allowed: bool) -> None:
    assert host_allowed(host, frozenset({"localhost", "monitor.internal"})) is allowed


@pytest.mark.parametrize(
    ("content_type", "origin", "host", "status"),
    [
        ("application/json", None, "127.0.0.1:8080", None),
        ("application/json; charset=utf-8", "http://127.0.0.1:8080", "127.0.0.1:8080", None),
        ("Application/JSON", "https://mon.example", "mon.example", None),  # behind a TLS proxy
        ("text/plain", None, "127.0.0.1:8080", 415),
        ("application/x-www-form-urlencoded", None, "127.0.0.1:8080", 415),
        ("multipart/form-data; boundary=x", None, "127.0.0.1:8080", 415),
        (None, None, "127.0.0.1:8080", 415),
        ("text/plain; application/json", None, "127.0.0.1:8080", 415),
        ("application/json", "http://127.0.0.1:9999", "127.0.0.1:8080", 403),  # another port: another origin
        ("application/json", "http://localhost:8080", "127.0.0.1:8080", 403),
        ("application/json", "null", "127.0.0.1:8080", 403),  # sandboxed frames, file:// pages
        ("application/json", "http://evil.example", "127.0.0.1:8080", 403),
    ],
)
def test_unsafe_requests_must_be_same_origin_json(
    content_type: str | None, origin: str | None, host: str, status: int | None
) -> None:
    refusal = cross_site_refusal(content_type, origin, host)
    assert (refusal[0] if refusal else None) == status


def test_the_backoff_doubles_after_five_failures_caps_and_forgets_on_success() -> None:
    backoff = FailureBackoff(free_failures=5, first_delay_s=1.0, max_delay_s=60.0, forget_after_s=300.0)
    now = 1000.0
    for _ in range(4):
        backoff.failed("10.0.0.1", now)
        assert backoff.retry_after("10.0.0.1", now) == 0.0
    waits = []
    for _ in range(9):
        backoff.failed("10.0.0.1", now)
        waits.append(backoff.retry_after("10.0.0.1", now))
        now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff.retry_after("10.0.0.2", now) == 0.0  # per address
    backoff.succeeded("10.0.0.1")
    assert backoff.retry_after("10.0.0.1", now) == 0.0
    backoff.failed("10.0.0.1", now)
    assert backoff.retry_after("10.0.0.1", now) == 0.0  # a success starts the count again


def test_the_backoff_forgets_quiet_addresses_and_keeps_bounded_state() -> None:
    backoff = FailureBackoff(free_failures=1, forget_after_s=300.0, max_addresses=100)
    backoff.failed("a", 0.0)
    backoff.failed("a", 1.0)
    assert backoff.retry_after("a", 1.0) == 2.0
    backoff.failed("a", 400.0)  # quiet for longer than forget_after_s: a fresh count
    assert backoff.retry_after("a", 400.0) == 1.0
    for number in range(10_000):
        backoff.failed(f"10.{number // 256}.{number % 256}.1", 500.0)
    assert len(backoff) == 100


def _auth_file(tmp_path: Path, text: str = AUTH_FILE, mode: int = 0o600) -> Path:
    path = tmp_path / "fleetpulse.auth"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        (AUTH_FILE, 0o644, "chmod 600"),
        (AUTH_FILE, 0o640, "chmod 600"),
        ("alice operator short-secret\n", 0o600, "line 1: the secret of 'alice' is shorter than 16"),
        (f"# c\nbob admin {OPERATOR_SECRET}\n", 0o600, "line 2: role 'admin' is neither viewer nor operator"),
        ("alice operator\n", 0o600, "line 1: expected NAME ROLE SECRET"),
        (f"al:ice viewer {VIEWER_SECRET}\n", 0o600, "line 1: name 'al:ice'"),
        ("# nobody\n", 0o600, "names no credential"),
    ],
)
def test_a_bad_auth_file_is_refused_in_one_line(tmp_path: Path, text: str, mode: int, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        ApiAuth.load(_auth_file(tmp_path, text, mode))
    assert "\n" not in str(refused.value)


def test_credentials_from_a_file_open_bearer_basic_and_the_login_form(tmp_path: Path) -> None:
    auth = ApiAuth.load(_auth_file(tmp_path)).merged(ApiAuth.parse("token:legacy-token-0123456789"))

    def basic(name: str, secret: str) -> str:
        return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()

    assert auth.who(f"Bearer {OPERATOR_SECRET}") == "alice"
    assert auth.who(basic("wall", VIEWER_SECRET)) == "wall"
    assert auth.who(basic("alice", VIEWER_SECRET)) is None  # the secret must be that name's
    assert auth.who("Bearer legacy-token-0123456789") == "api-token"
    login = auth.login("wall", VIEWER_SECRET)
    assert login is not None and login.role is Role.VIEWER
    assert auth.login("anyone", "legacy-token-0123456789") is not None  # the legacy token, as before
    assert auth.operators() == frozenset({"alice", "api-token"})
    with pytest.raises(ValueError, match="given twice"):
        auth.merged(ApiAuth.parse(f"basic:alice:{OPERATOR_SECRET}"))


# -- a real server ---------------------------------------------------------------------------------


class Server:
    def __init__(self, monitor: Monitor, api: ApiServer) -> None:
        self.monitor = monitor
        self.port = api.port
        self.url = f"http://127.0.0.1:{api.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            headers = dict(response.getheaders())
            headers["Set-Cookie"] = "\n".join(response.msg.get_all("Set-Cookie") or [])
            return response.status, headers, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, document: Any, **headers: str) -> int:
        status, _, _ = self.request(
            method, path, json.dumps(document).encode(), {"Content-Type": "application/json", **headers}
        )
        return status


@pytest.fixture
def serve(amqtt_broker: BrokerProcess, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[tuple[Monitor, ApiServer]] = []

    def start(**options: Any) -> Server:
        db = tmp_path / f"http-{len(started)}.duckdb"
        config = MonitorConfig(broker=amqtt_broker.url, db_path=db, monitor_id=db.stem, tick_interval_s=0.1)
        monitor = Monitor(config)
        api = ApiServer(monitor, options.pop("host", "127.0.0.1"), 0, **options).start()
        monitor.start(api_url=api.url)
        started.append((monitor, api))
        eventually(lambda: monitor.connected)
        return Server(monitor, api)

    yield start
    for monitor, api in started:
        monitor.stop()
        api.stop()


def test_a_foreign_host_gets_421_on_every_route(serve: Callable[..., Server]) -> None:
    server = serve(allowed_hosts=["monitor.internal"])
    for path in ("/", "/api/agents", "/healthz", "/metrics", "/ws", "/static/js/bokeh.min.js", "/login"):
        status, _, body = server.request("GET", path, headers={"Host": f"rebind.evil.example:{server.port}"})
        assert status == 421, (path, status)
        assert b"not this server" in body
    status, _, _ = server.request("POST", "/api/sql", b'{"sql": "SELECT 1"}', {"Host": "evil.example"})
    assert status == 421
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "monitor.internal", "[::1]"):
        assert server.request("GET", "/api/agents", headers={"Host": host})[0] == 200, host
    assert server.request("GET", "/", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_cross_site_shapes_of_a_command_or_sql_are_refused_and_nothing_is_sent(
    amqtt_broker: BrokerProcess, serve: Callable[..., Server]
) -> None:
    server = serve()
    pause = "/api/agents/csrf-target/pause"
    with Agent("csrf-target", broker=amqtt_broker.url, interval_s=30) as agent:
        eventually(lambda: state_of(server.monitor, "csrf-target") == "healthy")
        foreign = {"Origin": "http://127.0.0.1:1"}
        multipart = b'--b\r\nContent-Disposition: form-data; name="sql"\r\n\r\nSELECT 1\r\n--b--\r\n'
        for content_type, body in (
            ("text/plain", b'{"sql": "SELECT 1", "reason": "x"}'),  # what a no-cors fetch() can send
            ("application/x-www-form-urlencoded", b"sql=SELECT+1"),  # what a <form> can send
            ("multipart/form-data; boundary=b", multipart),
        ):
            for path in (pause, "/api/sql", "/api/silences"):
                status, _, answer = server.request("POST", path, body, {"Content-Type": content_type, **foreign})
                assert status == 415, (path, content_type, answer)
        assert server.request("POST", pause, b"{}", {})[0] == 415  # no Content-Type at all
        assert server.json("POST", pause, {}, Origin=f"http://evil.example:{server.port}") == 403
        assert server.json("POST", "/api/sql", {"sql": "SELECT 1"}, Origin="http://127.0.0.1:1") == 403
        assert server.json("DELETE", "/api/silences/abc", {}, Origin="null") == 403
        time.sleep(0.5)  # a command would reach the agent within milliseconds
        assert not agent.paused
        assert rows(server.monitor, "SELECT * FROM commands") == []
        # The same requests from this server's own origin, or from no browser, go through.
        assert server.json("POST", "/api/sql", {"sql": "SELECT 1"}, Origin=server.url) == 200
        assert server.json("POST", pause, {"reason": "same origin"}, Origin=server.url) == 202
        eventually(lambda: agent.paused)
        assert MonitorClient(server.url).command("csrf-target", "resume")["command"] == "resume"
        eventually(lambda: not agent.paused)


def test_roles_viewers_read_operators_act_and_the_audit_log_names_the_credential(
    amqtt_broker: BrokerProcess, serve: Callable[..., Server], tmp_path: Path
) -> None:
    server = serve(auth=ApiAuth.load(_auth_file(tmp_path)))
    viewer, operator = MonitorClient(server.url, token=VIEWER_SECRET), MonitorClient(server.url, token=OPERATOR_SECRET)
    with Agent("role-target", broker=amqtt_broker.url, interval_s=30) as agent:
        eventually(lambda: state_of(server.monitor, "role-target") == "healthy")
        assert [a["agent"] for a in viewer.list_agents()] == ["role-target"]
        assert viewer.sql("SELECT 42")["rows"] == [[42]]  # read-only SQL is a read
        for action in (
            lambda c: c.command("role-target", "pause"),
            lambda c: c.silence("*", "1h", "quiet"),
            lambda c: c.unsilence("abc"),
        ):
            with pytest.raises(Exception) as refused:
                action(viewer)
            assert getattr(refused.value, "status", None) == 403 and "viewer" in str(refused.value)
        time.sleep(0.3)
        assert not agent.paused
        answer = operator.command("role-target", "pause", reason="by alice")
        assert answer["issued_by"] == "alice@127.0.0.1"
        eventually(lambda: agent.paused)
        basic = "Basic " + base64.b64encode(f"wall:{VIEWER_SECRET}".encode()).decode()
        assert server.request("GET", "/api/agents", headers={"Authorization": basic})[0] == 200
    assert eventually(lambda: rows(server.monitor, "SELECT issued_by, reason FROM commands")) == [
        ("alice@127.0.0.1", "by alice")
    ]


def test_200_wrong_tokens_meet_429_and_the_right_one_works_after_the_wait(serve: Callable[..., Server]) -> None:
    server = serve(auth=ApiAuth.parse("token:the-right-token-0123456789"))
    statuses = []
    retry_after = None
    for number in range(200):
        status, headers, _ = server.request("GET", "/api/agents", headers={"Authorization": f"Bearer wrong-{number}"})
        statuses.append(status)
        retry_after = headers.get("Retry-After", retry_after)
    assert statuses[:5] == [401] * 5
    assert statuses.count(429) >= 190  # only the retries after each wait are judged
    assert retry_after is not None and int(retry_after) >= 1
    right = {"Authorization": "Bearer the-right-token-0123456789"}
    assert server.request("GET", "/api/agents", headers=right)[0] == 429  # even the right one waits its turn
    deadline = time.monotonic() + 70
    while (status := server.request("GET", "/api/agents", headers=right)[0]) == 429 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status == 200
    assert server.request("GET", "/api/agents", headers={"Authorization": "Bearer wrong-again"})[0] == 401


def test_the_login_form_backs_off_and_names_the_credential(serve: Callable[..., Server], tmp_path: Path) -> None:
    server = serve(auth=ApiAuth.load(_auth_file(tmp_path)))
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def login(name: str, secret: str) -> tuple[int, dict[str, str]]:
        body = urllib.parse.urlencode({"username": name, "password": secret}).encode()
        status, headers, _ = server.request("POST", "/login", body, form)
        return status, headers

    status, headers = login("wall", VIEWER_SECRET)
    assert status == 302 and "user=" in headers.get("Set-Cookie", "")
    statuses = [login("alice", f"guess-{number}")[0] for number in range(20)]
    assert statuses[:5] == [302] * 5 and statuses[5:].count(429) >= 10
    status, headers = login("alice", OPERATOR_SECRET)
    assert status == 429 and int(headers["Retry-After"]) >= 1


def test_components_route_imports_nothing_and_needs_a_login(serve: Callable[..., Server]) -> None:
    module = "tabnanny"  # in the standard library, imported by nothing here
    assert module not in sys.modules
    server = serve()
    status, _, _ = server.request("GET", f"/components/{module}/NannyNag/_css/x.css")
    assert status == 404 and module not in sys.modules
    guarded = serve(auth=ApiAuth.parse("token:the-right-token-0123456789"))
    status, _, _ = guarded.request("GET", "/components/panel/widgets/_stylesheets/x.css")
    assert status == 403
    status, _, _ = guarded.request("GET", f"/components/{module}/NannyNag/_css/x.css")
    assert status == 403 and module not in sys.modules


# -- the CLI ---------------------------------------------------------------------------------------


def test_beyond_loopback_without_auth_the_cli_refuses_in_one_line(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    for command in (
        ["monitor", "--broker", amqtt_broker.url],
        ["up", "--port", str(free_port())],
    ):
        argv = [*command, "--http-host", "0.0.0.0", "--dashboard-port", str(free_port()), "--db", str(tmp_path / "x")]
        result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--auth" in result.stderr and "--insecure-no-auth" in result.stderr


def test_insecure_no_auth_starts_with_a_loud_warning(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    port = free_port()
    with cli_process(
        "monitor", "--broker", amqtt_broker.url, "--http-host", "0.0.0.0", "--dashboard-port", str(port),
        "--db", str(tmp_path / "open.duckdb"), "--insecure-no-auth",
    ) as monitor:  # fmt: skip
        lines = read_until(monitor, "listening on")
        warning = next(line for line in lines if "INSECURE" in line)
        assert "WARNING" in warning and "/api/sql" in warning and str(port) in warning


def test_an_auth_file_open_to_others_stops_the_cli_in_one_line(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    path = _auth_file(tmp_path, mode=0o644)
    env = {**os.environ, "FLEETPULSE_AUTH_FILE": str(path)}
    argv = ["monitor", "--broker", amqtt_broker.url, "--dashboard-port", str(free_port()), "--db", str(tmp_path / "x")]
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"chmod 600 {path}" in result.stderr
