"""Each benchmark runs in a short smoke version so it cannot rot; figures are checked for shape, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT, require_tool


def run_benchmark(name: str, *arguments: str) -> dict[str, Any]:
    """Run `python -m benchmarks.<name> ARGUMENTS`; its figures, the JSON object on its last line."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


@pytest.mark.timeout(120)
def test_sdk_overhead_benchmark_smoke() -> None:
    figures = run_benchmark("sdk_overhead", "--seconds", "3")
    for key in ("overhead_cpu_percent", "extra_rss_mib", "report_metric_calls_per_s", "heartbeats_received"):
        assert key in figures
    assert figures["heartbeats_received"] >= 2  # the agent really heartbeated through a real broker
    assert figures["report_metric_calls_per_s"] > 0
    assert figures["reported_ok_received"] == figures["iterations"]  # no reported work lost, stop included


@pytest.mark.mosquitto
@pytest.mark.timeout(120)
def test_detection_benchmark_smoke() -> None:
    require_tool("mosquitto")
    figures = run_benchmark("detection", "--kills", "3")
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
    figures = run_benchmark("ingest", "--seconds", "2", "--agents", "100")
    for key in ("stored_per_s", "raw_paho_per_s", "lost", "ratio", "backlog_stored_per_s", "backlog_lost"):
        assert key in figures
    assert figures["published"] > 0 and figures["backlog_published"] > 0
    assert figures["lost"] == 0  # every heartbeat the broker acknowledged is a row, live and after a restart
    assert figures["backlog_lost"] == 0
    assert figures["stored_distinct"] == figures["stored"] == figures["published"]
    assert figures["raw_received"] == figures["raw_published"]
    assert figures["stored_per_s"] > 0 and figures["raw_paho_per_s"] > 0
