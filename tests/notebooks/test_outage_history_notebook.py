"""notebooks/outage_history.ipynb, executed top to bottom on a history a real fleet wrote.

A real broker, a real monitor on a temporary DuckDB file, three agent processes (`fleetpulse demo`: the SDK
doing metered work, so the cost section has figures), kill -9 of two of them at known times and restarts
after known delays. The notebook runs twice — over the running monitor's POST /api/sql, then over the file
once the monitor has stopped — and writes the figures it showed as JSON (FLEETPULSE_SUMMARY), which the test
compares with what it did to the fleet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import paho.mqtt.client as paho
import pytest
from nbclient import NotebookClient
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.monitor.api import ApiServer
from fleetpulse.monitor.health import ThresholdPolicy, Thresholds
from fleetpulse.monitor.service import Monitor, MonitorConfig
from tests.conftest import ROOT, BrokerProcess
from tests.e2e.test_monitor import eventually, state_of
from tests.hostile import heartbeat, hostile
from tests.parsed_html import ParsedHtml

NOTEBOOK = ROOT / "notebooks" / "outage_history.ipynb"
Spawn = Callable[..., subprocess.Popen[bytes]]
TOLERANCE_S = 0.75  # an outage starts when the will is handled and ends at the birth; the test polls at 50 ms


def executed_notebook(tmp_path: Path, name: str, **settings: str) -> tuple[Any, dict[str, Any]]:
    """Execute the notebook with FLEETPULSE_* `settings` in its environment; it with its outputs, and the summary."""
    summary = tmp_path / f"{name}.json"
    environment = {**os.environ, **{f"FLEETPULSE_{k.upper()}": v for k, v in settings.items()}}
    environment["FLEETPULSE_SUMMARY"] = str(summary)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute(
        env=environment
    )
    result: dict[str, Any] = json.loads(summary.read_text())
    return notebook, result


def run_notebook(tmp_path: Path, name: str, **settings: str) -> dict[str, Any]:
    """Execute the notebook with FLEETPULSE_* `settings` in its environment; the summary it wrote."""
    return executed_notebook(tmp_path, name, **settings)[1]


NEEDS = {"refunds": "orders"}  # refunds depends_on orders: their overlapping outages make one incident


def demo_agent(spawn: Spawn, broker: BrokerProcess, agent_id: str) -> subprocess.Popen[bytes]:
    command = ["-m", "fleetpulse.monitor.cli", "demo", "--broker", broker.url, "--id", agent_id, "--interval-s", "0.5"]
    command += ["--keepalive-s", "5", "--failure-ratio", "0"]
    return spawn(*command, *(["--depends-on", NEEDS[agent_id]] if agent_id in NEEDS else []))


def test_the_notebook_is_clean_json_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert code[0].metadata.get("tags") == ["parameters"]


@pytest.mark.timeout(120)
def test_the_notebook_shows_the_crashes_a_real_fleet_went_through(
    amqtt_broker: BrokerProcess, spawn: Spawn, tmp_path: Path
) -> None:
    db = tmp_path / "fleet.duckdb"
    started = datetime.now(UTC) - timedelta(seconds=1)
    # Deaths are announced by the broker (the will); generous clock thresholds keep a busy machine's late
    # heartbeat from adding an outage nobody caused.
    thresholds = ThresholdPolicy(default=Thresholds(degraded_after_s=15, unreachable_after_s=60))
    monitor = Monitor(MonitorConfig(broker=amqtt_broker.url, db_path=db, tick_interval_s=0.1, thresholds=thresholds))
    api = ApiServer(monitor, "127.0.0.1", 0).start()
    monitor.start(api_url=api.url)
    try:
        eventually(lambda: monitor.connected)
        agents = {name: demo_agent(spawn, amqtt_broker, name) for name in ("orders", "refunds", "mailer")}

        def all_in(state: str, *names: str) -> bool:
            return all(state_of(monitor, name) == state for name in names)

        eventually(lambda: all_in("healthy", *agents), timeout_s=20)
        time.sleep(1.0)

        # Crash 1: orders dies, refunds (which needs it) dies while it is down; both come back.
        os.kill(agents["orders"].pid, signal.SIGKILL)
        orders_killed = time.time()
        time.sleep(0.3)
        os.kill(agents["refunds"].pid, signal.SIGKILL)
        refunds_killed = time.time()
        eventually(lambda: all_in("unreachable", "orders", "refunds"), timeout_s=5)
        both_down_at = datetime.now(UTC)
        time.sleep(1.5)
        gaps_s = []
        for name, killed in (("orders", orders_killed), ("refunds", refunds_killed)):
            agents[name] = demo_agent(spawn, amqtt_broker, name)
            eventually(lambda name=name: all_in("healthy", name), timeout_s=15)
            gaps_s.append(time.time() - killed)
        time.sleep(1.0)

        # Crash 2: orders alone, back after about a second.
        os.kill(agents["orders"].pid, signal.SIGKILL)
        killed = time.time()
        eventually(lambda: all_in("unreachable", "orders"), timeout_s=5)
        time.sleep(1.0)
        agents["orders"] = demo_agent(spawn, amqtt_broker, "orders")
        eventually(lambda: all_in("healthy", "orders"), timeout_s=15)
        gaps_s.append(time.time() - killed)
        time.sleep(1.0)

        window = {"since": started.isoformat(), "down_at": both_down_at.isoformat()}
        over_api = run_notebook(tmp_path, "over-api", api=api.url, **window)
        # The report command finds the running monitor through the file's sidecar and asks its API.
        report = subprocess.run(
            [sys.executable, "-m", "fleetpulse.monitor.cli", "report", "--db", str(db), "--since", started.isoformat()],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

        for process in agents.values():  # a clean stop: `killed`, neither up nor down, so the file's history ends
            process.send_signal(signal.SIGTERM)
        for process in agents.values():
            process.wait(timeout=15)
        eventually(lambda: all_in("killed", *agents), timeout_s=10)
        time.sleep(0.5)  # the stop rows are committed right after the views change
    finally:
        monitor.stop()
        api.stop()
    over_file = run_notebook(tmp_path, "over-file", db=str(db), **window)

    assert report.returncode == 0, report.stderr
    assert f"(from monitor at {api.url})" in report.stdout
    assert "Outages             3 begun" in report.stdout

    for summary in (over_api, over_file):
        outages = summary["outages"]
        assert [(o["agent"], o["state"]) for o in outages] == [
            ("orders", "unreachable"),
            ("refunds", "unreachable"),
            ("orders", "unreachable"),
        ]
        assert all(o["ended_at"] is not None for o in outages)
        for outage, gap_s in zip(outages, gaps_s, strict=True):
            assert gap_s - TOLERANCE_S <= outage["duration_s"] <= gap_s + 0.1, (outage, gap_s)
        orders, refunds, mailer = (summary["agents"][name] for name in ("orders", "refunds", "mailer"))
        assert (orders["outages"], refunds["outages"], mailer["outages"]) == (2, 1, 0)
        assert orders["mttr_s"] == pytest.approx((gaps_s[0] + gaps_s[2]) / 2, abs=TOLERANCE_S)
        assert orders["mtbf_s"] > 0 and mailer["mtbf_s"] is None
        assert 0.5 < orders["availability"] < 1 and 0.5 < refunds["availability"] < 1
        assert mailer["availability"] == 1.0
        assert summary["fleet"]["agents_below_slo"] == ["orders", "refunds"]
        assert summary["fleet"]["outages"] == 3
        assert summary["down_at"]["agents"] == {"orders": "unreachable", "refunds": "unreachable"}
        assert [(i["root_agent"], i["agents"]) for i in summary["incidents"]] == [
            ("orders", ["orders", "refunds"]),
            ("orders", ["orders"]),
        ]
        assert set(summary["cost_usd"]) == {"orders", "refunds", "mailer"}
        assert all(cost > 0 for cost in summary["cost_usd"].values())
    assert over_api["source"] == f"the monitor at {api.url}" and over_file["source"] == str(db)
    # The same stored rows by either road (the API's timestamps carry milliseconds).
    for by_file, by_api in zip(over_file["outages"], over_api["outages"], strict=True):
        assert by_file["duration_s"] == by_api["duration_s"]
        file_start, api_start = (datetime.fromisoformat(o["started_at"]) for o in (by_file, by_api))
        assert abs(file_start - api_start) < timedelta(milliseconds=1)


@pytest.mark.timeout(120)
def test_the_notebook_shows_an_agents_strings_as_text(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    """A heartbeat whose reason, name, host, labels and model names carry HTML: no table or chart makes markup
    of them, and the reason reads as text in "what was down at ..."."""
    db = tmp_path / "fleet.duckdb"
    started = datetime.now(UTC) - timedelta(seconds=1)
    monitor = Monitor(MonitorConfig(broker=amqtt_broker.url, db_path=db, tick_interval_s=0.1)).start()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"xss-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", amqtt_broker.port, keepalive=30)
    client.loop_start()
    try:
        eventually(lambda: monitor.connected)
        session, topic = uuid.uuid4().hex, "agents/xss-n/health"
        client.publish(topic, heartbeat("xss-n", session, 0), qos=1, retain=True).wait_for_publish(10)
        eventually(lambda: state_of(monitor, "xss-n") == "healthy")
        degraded = heartbeat("xss-n", session, 1, status="degraded", reason=hostile("R"))
        client.publish(topic, degraded, qos=1, retain=True).wait_for_publish(10)
        eventually(lambda: state_of(monitor, "xss-n") == "degraded")
        time.sleep(0.5)
        down_at = datetime.now(UTC)
        time.sleep(0.5)
    finally:
        client.loop_stop()
        client.disconnect()
        monitor.stop()
    notebook, summary = executed_notebook(
        tmp_path, "hostile", db=str(db), since=started.isoformat(), down_at=down_at.isoformat()
    )

    assert summary["down_at"]["agents"] == {"xss-n": "degraded"} and summary["cost_usd"] == {"xss-n": 0.5}
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    shown = [output.get("data", {}).get("text/html", "") for output in outputs]
    assert not any(output.get("data", {}).get("text/markdown") for output in outputs)
    parsed = ParsedHtml("".join(shown))
    assert "img" not in parsed.tags and "a" not in parsed.tags
    assert sum("<script>window" in html for html in shown) == 0
    # The table of what was down at DOWN_AT, as text (pandas cuts cells at 50 characters).
    assert 'reported: <img src=x onerror="window' in parsed.text
