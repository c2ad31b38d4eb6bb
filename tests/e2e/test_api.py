"""The HTTP API's operator side: commands, Prometheus metrics, authentication."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.monitor.api import ApiAuth, ApiServer
from fleetpulse.monitor.client import MonitorClient, MonitorError
from fleetpulse.monitor.service import Monitor, MonitorConfig
from fleetpulse.publisher import Agent, ControlCommand
from tests.conftest import BrokerProcess
from tests.e2e.test_monitor import AGENT_SCRIPT, eventually, rows, state_of

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def serving(
    amqtt_broker: BrokerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Monitor, str]]:
    host, auth = getattr(request, "param", ("127.0.0.1", None))
    monitor = Monitor(MonitorConfig(broker=amqtt_broker.url, db_path=tmp_path / "api.duckdb", tick_interval_s=0.1))
    api = ApiServer(monitor, host, 0, auth=auth, insecure_no_auth=True).start()
    monitor.start(api_url=api.url)
    eventually(lambda: monitor.connected)
    yield monitor, f"http://127.0.0.1:{api.port}"
    monitor.stop()
    api.stop()


def test_kill_and_pause_through_the_api_reach_the_agent_and_the_audit_log(
    amqtt_broker: BrokerProcess, serving: tuple[Monitor, str]
) -> None:
    monitor, url = serving
    client = MonitorClient(url)
    killed = threading.Event()

    def on_kill(command: ControlCommand) -> None:
        killed.set()

    with Agent("api-target", broker=amqtt_broker.url, interval_s=30, on_kill=on_kill) as agent:
        eventually(lambda: state_of(monitor, "api-target") == "healthy")
        answer = client.command("api-target", "pause", reason="cost check")
        assert answer["topic"] == "agents/api-target/control" and answer["issued_by"].startswith("api@")
        eventually(lambda: agent.paused)
        client.command("api-target", "kill", reason="runaway")
        assert killed.wait(10)
        eventually(lambda: state_of(monitor, "api-target") == "killed")
    audit = eventually(lambda: rows(monitor, 'SELECT command, reason FROM commands ORDER BY "at"'))
    eventually(lambda: len(rows(monitor, "SELECT * FROM commands")) == 2)
    audit = rows(monitor, 'SELECT command, reason FROM commands ORDER BY "at"')
    assert audit == [("pause", "cost check"), ("kill", "runaway")]
    with pytest.raises(MonitorError) as unknown:
        client.command("api-target", "explode")
    assert unknown.value.status == 404


def test_metrics_in_prometheus_text(amqtt_broker: BrokerProcess, serving: tuple[Monitor, str]) -> None:
    monitor, url = serving
    with Agent("scraped", broker=amqtt_broker.url, interval_s=30, group="web"):
        eventually(lambda: state_of(monitor, "scraped") == "healthy")
        text = MonitorClient(url).metrics()
    assert 'fleetpulse_agents{state="healthy"} 1.0' in text
    assert 'fleetpulse_agent_up{agent="scraped",group="web"} 1.0' in text
    assert "fleetpulse_broker_connected 1.0" in text
    assert "fleetpulse_received_total" in text and "fleetpulse_rejected_total 0.0" in text
    assert "fleetpulse_alerts_pending 0.0" in text


@pytest.mark.parametrize("serving", [("127.0.0.1", ApiAuth.parse("token:" + TOKEN))], indirect=True)
def test_a_token_protects_everything_but_healthz(serving: tuple[Monitor, str]) -> None:
    _, url = serving
    assert MonitorClient(url).healthz()["ok"] is True
    for call in (lambda c: c.list_agents(), lambda c: c.sql("SELECT 1"), lambda c: c.command("x", "kill")):
        with pytest.raises(MonitorError) as refused:
            call(MonitorClient(url))
        assert refused.value.status == 401
        with pytest.raises(MonitorError) as wrong:
            call(MonitorClient(url, token="not-the-token-at-all"))
        assert wrong.value.status == 401
    assert MonitorClient(url, token=TOKEN).list_agents() == []


@pytest.mark.parametrize("serving", [("0.0.0.0", None)], indirect=True)
def test_commands_over_the_network_need_auth(serving: tuple[Monitor, str]) -> None:
    _, url = serving
    client = MonitorClient(url)
    assert client.list_agents() == []  # reads stay open
    with pytest.raises(MonitorError) as refused:
        client.command("someone", "kill")
    assert refused.value.status == 403 and "--auth" in str(refused.value)


def test_auth_settings_are_checked() -> None:
    assert ApiAuth.parse("token:" + TOKEN).credentials[0].secret == TOKEN
    assert ApiAuth.parse("basic:ops:longenough").credentials[0].name == "ops"
    for bad in ("token:short", "basic:ops:short", "bearer:whatever-long-enough", "basic::nouser123"):
        with pytest.raises(ValueError):
            ApiAuth.parse(bad)


def test_basic_auth_checks_user_and_password() -> None:
    import base64

    auth = ApiAuth.parse("basic:ops:correct-horse")

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert auth.who(header("ops", "correct-horse")) == "ops"
    assert auth.who(header("ops", "wrong-horse!")) is None
    assert auth.who(header("root", "correct-horse")) is None
    assert auth.who("Basic !!!not-base64") is None
    assert auth.who(None) is None
    assert auth.who("Bearer correct-horse") is None


def test_the_read_endpoints_answer_work_figures_outages_and_counters(
    amqtt_broker: BrokerProcess, serving: tuple[Monitor, str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    monitor, url = serving
    client = MonitorClient(url)
    with Agent("worker", broker=amqtt_broker.url, interval_s=0.3) as agent:
        agent.report_metric(success=True, latency_ms=120.0, cost_usd=0.25, tokens_in=100, tokens_out=40, model="m1")
        agent.report_metric(success=False, latency_ms=80.0, cost_usd=0.25, tokens_in=10, tokens_out=0, model="m1")
        figures = eventually(lambda: next((a for a in client.list_agents() if a["tasks_ok_today"] == 1), None))
        assert figures["tasks_failed_today"] == 1 and figures["success_ratio_today"] == 0.5
        assert figures["cost_today_usd"] == pytest.approx(0.5) and figures["tokens_in_today"] == 110
        assert client.agent("worker")["cost_today_usd"] == pytest.approx(0.5)
        for verb in ("pause", "resume", "rebirth"):
            assert client.command("worker", verb)["command"] == verb
        eventually(lambda: len(rows(monitor, "SELECT * FROM commands")) == 3)

        victim = spawn(str(AGENT_SCRIPT), amqtt_broker.url, "victim", "0.5", "5")
        eventually(lambda: state_of(monitor, "victim") == "healthy")
        os.kill(victim.pid, signal.SIGKILL)
        outage = eventually(lambda: client.outages(agent="victim"))
        assert [(o["agent"], o["state"], o["ended_at"]) for o in outage] == [("victim", "unreachable", None)]
        assert client.outages(agent="worker") == [] and len(client.outages(since="1h")) == 1
        with pytest.raises(MonitorError) as bad_since:
            client.outages(since="last tuesday")
        assert bad_since.value.status == 400 and "--since" in str(bad_since.value)
        stats = client.stats()
        assert stats["rows_stored"] >= 2 and stats["transitions"] >= 1 and stats["commands"] == 3
        with pytest.raises(MonitorError) as missing:
            client.agent("nobody-here")
        assert missing.value.status == 404


def test_a_query_that_runs_too_long_is_stopped_and_the_server_stays_responsive(
    serving: tuple[Monitor, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fleetpulse.monitor.store

    monkeypatch.setattr(fleetpulse.monitor.store, "QUERY_TIMEOUT_S", 0.5)
    _, url = serving
    client = MonitorClient(url)
    answers: list[Any] = []

    def slow() -> None:
        try:
            client.sql("SELECT count(*) FROM range(100000000000) a")
        except MonitorError as error:
            answers.append(error)

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.1)
    assert client.healthz()["ok"] is True  # the event loop is not blocked by the running query
    worker.join(timeout=30)
    (refused,) = answers
    assert refused.status == 408 and "longer than 0.5 s" in str(refused)
    assert client.sql("SELECT 42")["rows"] == [[42]]  # the store goes on
