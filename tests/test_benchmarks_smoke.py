"""Each benchmark runs in a short smoke version so it cannot rot; figures are checked for shape, not speed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


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
