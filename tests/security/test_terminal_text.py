"""An agent's strings reach an operator's terminal as text: `status`, `sql`, `outages` and `up`'s transition
lines never pass an escape sequence through."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.monitor.api import ApiServer
from fleetpulse.monitor.service import Monitor, MonitorConfig
from tests.conftest import CLI, ROOT, BrokerProcess
from tests.e2e.test_monitor import eventually, state_of
from tests.hostile import heartbeat

# Retitle the window, clear the screen, overwrite the line: what a terminal obeys if it is handed these.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\rall healthy\x9b1m"


def test_status_and_sql_print_an_agents_escape_sequences_as_text(amqtt_broker: BrokerProcess, tmp_path: Path) -> None:
    monitor = Monitor(MonitorConfig(broker=amqtt_broker.url, db_path=tmp_path / "fleet.duckdb", tick_interval_s=0.1))
    api = ApiServer(monitor, "127.0.0.1", 0).start()
    monitor.start(api_url=api.url)
    try:
        eventually(lambda: monitor.connected)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="escapes")
        client.connect("127.0.0.1", amqtt_broker.port)
        client.loop_start()
        payload = heartbeat(
            "escapes", "s1", 0, name=f"name{ESCAPES}", status="degraded", reason=f"reason{ESCAPES}", host=ESCAPES
        )
        client.publish("agents/escapes/health", payload, qos=1, retain=True).wait_for_publish(5)
        eventually(lambda: state_of(monitor, "escapes") == "degraded")
        eventually(lambda: monitor.store.query("SELECT count(*) FROM agents")[1][0][0] == 1)
        client.loop_stop()
        client.disconnect()
        db = str(monitor.config.db_path)
        for args in (
            ["status", "--db", db],
            ["sql", "--db", db, "SELECT name, reason, host FROM agents"],
            ["outages", "--db", db],
        ):
            finished = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
            assert finished.returncode == 0, finished.stderr
            for stream in (finished.stdout, finished.stderr):
                assert not any(c in stream for c in "\x1b\x07\r\x9b"), f"{args[0]} passed a control character"
            if args[0] != "outages":
                assert "reason\ufffd]0;pwned\ufffd\ufffd[2J\ufffdall healthy\ufffd1m" in finished.stdout
        # --json keeps the exact string, escaped the JSON way (a program reads it, not a terminal)
        finished = subprocess.run(
            [*CLI, "status", "--json", "--db", db], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        (record,) = json.loads(finished.stdout)["agents"]
        assert record["reason"].endswith(f"reason{ESCAPES}") and "\x1b" not in finished.stdout
    finally:
        monitor.stop()
        api.stop()
