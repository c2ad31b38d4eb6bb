"""Agent arguments, broker URLs and the metrics window, without sockets."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest

from fleetpulse.publisher import Agent
from fleetpulse.publisher._metrics import MAX_MODELS, OTHER_MODEL, RESERVOIR_SIZE, MetricsWindow
from fleetpulse.publisher.mqtt import parse_broker_url
from fleetpulse.publisher.protocol import Metrics


def drain(window: MetricsWindow) -> Metrics:
    """Drain the window through the monitor's strict parser, so the SDK's plain dict must be protocol-valid."""
    return Metrics.model_validate_json(json.dumps(window.drain()), strict=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agent_id": "a/b"}, "invalid agent id"),
        ({"agent_id": "agents/+/health"}, "invalid agent id"),
        ({"agent_id": "#"}, "invalid agent id"),
        ({"agent_id": ""}, "invalid agent id"),
        ({"interval_s": 0}, "interval_s must be > 0"),
        ({"interval_s": -5}, "interval_s must be > 0"),
        ({"interval_s": math.nan}, "interval_s must be a finite number"),
        ({"interval_s": math.inf}, "interval_s must be a finite number"),
        ({"interval_s": "30"}, "interval_s must be a finite number"),
        ({"interval_s": True}, "interval_s must be a finite number"),
        ({"keepalive_s": 0}, "keepalive_s must be a whole number"),
        ({"keepalive_s": 2.5}, "keepalive_s must be a whole number"),
        ({"keepalive_s": 70_000}, "keepalive_s must be a whole number"),
        ({"depends_on": "inventory-sync"}, "depends_on must be a list"),
        ({"depends_on": ["ok", "not ok"]}, "invalid depends_on id"),
        ({"group": "g/1"}, "invalid group"),
        ({"labels": {"team": 5}}, "labels must map"),
        ({"labels": {"": "x"}}, "labels must map"),
        ({"display_name": ""}, "display_name"),
        ({"version": 3}, "version"),
        ({"broker": "http://127.0.0.1:1883"}, "scheme must be mqtt:// or mqtts://"),
        ({"broker": "127.0.0.1:1883"}, "scheme must be"),
        ({"broker": "mqtt://"}, "has no host"),
        ({"broker": "mqtt://host:99999"}, "port must be a number"),
        ({"broker": "mqtt://host/topic"}, "unexpected path"),
        ({"broker": "mqtt://host?protocol=7"}, "protocol must be 3.1.1 or 5"),
        ({"broker": "mqtt://host?qos=2"}, "unknown option"),
        ({"broker": "mqtt://host?ca=/x.pem"}, "only makes sense with mqtts"),
    ],
)
def test_bad_arguments_raise_clear_value_errors_before_connecting(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"agent_id": "ok-agent", "broker": "mqtt://127.0.0.1:1"} | kwargs
    with pytest.raises(ValueError, match=message):
        Agent(arguments.pop("agent_id"), **arguments)


def test_broker_urls() -> None:
    plain = parse_broker_url("mqtt://10.0.0.5")
    assert (plain.host, plain.port, plain.tls, plain.protocol_version) == (
        "10.0.0.5",
        1883,
        False,
        paho.MQTTv311,
    )
    secure = parse_broker_url("mqtts://agent%40corp:p%3Ass@broker.example:8884?protocol=5&ca=/etc/ca.pem")
    assert (secure.port, secure.tls, secure.username, secure.password) == (8884, True, "agent@corp", "p:ss")
    assert secure.protocol_version == paho.MQTTv5 and secure.ca_file == "/etc/ca.pem"
    assert parse_broker_url("mqtts://h").port == 8883
    assert "p:ss" not in secure.display and "agent@corp" in secure.display


def test_an_agent_without_a_connection_is_inert() -> None:
    agent = Agent("inert", broker="mqtt://127.0.0.1:1")
    agent.report_metric(success=True, latency_ms=5)
    agent.stop()  # never started: nothing to do, no error
    assert not agent.connected and agent.session == ""


@pytest.mark.parametrize(
    "kwargs", [{"latency_ms": -1}, {"latency_ms": math.nan}, {"cost_usd": math.inf}, {"tokens_in": -3}]
)
def test_report_metric_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Agent("m", broker="mqtt://127.0.0.1:1").report_metric(**kwargs)


def test_window_aggregates_and_resets() -> None:
    window = MetricsWindow(seed=1)
    for latency in range(1, 101):
        window.record(latency % 10 != 0, float(latency), 0.5, 2, 1, "m" if latency % 2 else None, 1_700_000_000.0)
    metrics = drain(window)
    assert (metrics.ok, metrics.failed) == (90, 10)
    assert (metrics.latency_ms_p50, metrics.latency_ms_p95, metrics.latency_ms_max) == (50, 95, 100)
    assert metrics.cost_usd == pytest.approx(50.0)
    assert (metrics.tokens_in, metrics.tokens_out) == (200, 100)
    assert metrics.by_model["m"].cost_usd == pytest.approx(25.0)
    assert metrics.last_progress_at is not None and metrics.last_progress_at.timestamp() == 1_700_000_000.0
    empty = drain(window)
    assert (empty.ok, empty.failed, empty.latency_ms_p50, empty.by_model) == (0, 0, None, {})
    assert empty.last_progress_at == metrics.last_progress_at  # progress is a moment, not a window sum


def test_window_memory_is_bounded_and_percentiles_stay_close() -> None:
    window = MetricsWindow(seed=7)
    samples = 50 * RESERVOIR_SIZE
    for n in range(samples):
        window.record(True, float(n % 1000), 0.0, 0, 0, None, 0.0)
    assert len(window._window.latencies_ms) == RESERVOIR_SIZE
    metrics = drain(window)
    assert metrics.ok == samples and metrics.latency_ms_max == 999
    assert metrics.latency_ms_p50 == pytest.approx(500, abs=40)
    assert metrics.latency_ms_p95 == pytest.approx(950, abs=25)


def test_restore_puts_counts_back_when_a_heartbeat_could_not_be_sent() -> None:
    window = MetricsWindow()
    window.record(True, 10.0, 1.0, 5, 5, "m", 0.0)
    lost = window.drain()
    window.record(False, 20.0, 2.0, 1, 1, "m", 0.0)
    window.restore(lost)
    merged = drain(window)
    assert (merged.ok, merged.failed, merged.cost_usd, merged.tokens_in) == (1, 1, 3.0, 6)
    assert merged.by_model["m"].tokens_out == 6 and merged.latency_ms_max == 20


def test_concurrent_reports_are_all_counted() -> None:
    window = MetricsWindow()

    def hammer() -> None:
        for _ in range(20_000):
            window.record(True, 1.0, 0.001, 1, 1, "m", 0.0)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    drained = [drain(window) for _ in range(50)]
    for thread in threads:
        thread.join()
    drained.append(drain(window))
    assert sum(m.ok for m in drained) == 80_000
    assert sum(m.tokens_in for m in drained) == 80_000


def test_distinct_models_are_capped_so_a_heartbeat_stays_small() -> None:
    window = MetricsWindow()
    for n in range(MAX_MODELS + 10):
        window.record(True, None, 1.0, 1, 1, f"model-{n}", 0.0)
    metrics = drain(window)
    assert len(metrics.by_model) == MAX_MODELS + 1
    assert metrics.by_model[OTHER_MODEL].cost_usd == 10.0
    assert sum(usage.cost_usd for usage in metrics.by_model.values()) == MAX_MODELS + 10


def test_oversized_labels_are_refused_before_connecting() -> None:
    labels = {f"label-{n}": "v" * 500 for n in range(30)}
    with pytest.raises(ValueError, match="keep it under"):
        Agent("wordy", broker="mqtt://127.0.0.1:1", labels=labels)
