"""Each benchmark runs in a short smoke version so it cannot rot; figures are checked for shape, not speed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, require_tool


@pytest.mark.timeout(120)
def test_sdk_overhead_benchmark_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sdk_overhead", "--seconds", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("overhead_cpu_percent", "extra_rss_mib", "report_metric_calls_per_s", "heartbeats_received"):
        assert key in figures
    assert figures["heartbeats_received"] >= 2  # the agent really heartbeated through a real broker
    assert figures["report_metric_calls_per_s"] > 0
    assert figures["reported_ok_received"] == figures["iterations"]  # no reported work lost, stop included


@pytest.mark.mosquitto
@pytest.mark.timeout(120)
def test_detection_benchmark_smoke() -> None:
    require_tool("mosquitto")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.detection", "--kills", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for broker in ("amqtt", "mosquitto"):
        for key in ("count", "undetected", "p50_ms", "p99_ms", "max_ms", "will_seen_p50_ms", "target_met"):
            assert key in figures[broker]
        assert figures[broker]["count"] == 3  # every SIGKILL became an `unreachable` transition
        assert figures[broker]["undetected"] == 0
        assert 0 < figures[broker]["p50_ms"] <= figures[broker]["p99_ms"] <= figures[broker]["max_ms"]


@pytest.mark.mosquitto
@pytest.mark.timeout(120)
def test_ingest_benchmark_smoke() -> None:
    require_tool("mosquitto")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest", "--seconds", "2", "--agents", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("stored_per_s", "raw_paho_per_s", "lost", "ratio", "backlog_stored_per_s", "backlog_lost"):
        assert key in figures
    assert figures["published"] > 0 and figures["backlog_published"] > 0
    assert figures["lost"] == 0  # every heartbeat the broker acknowledged is a row, live and after a restart
    assert figures["backlog_lost"] == 0
    assert figures["stored_distinct"] == figures["stored"] == figures["published"]
    assert figures["raw_received"] == figures["raw_published"]
    assert figures["stored_per_s"] > 0 and figures["raw_paho_per_s"] > 0
