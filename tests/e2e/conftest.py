"""Fixtures of the end-to-end tests: monitors on real brokers, stopped at the end of each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.monitor.service import Monitor, MonitorConfig
from tests.conftest import BrokerProcess
from tests.e2e.test_monitor import MonitorFactory, eventually


@pytest.fixture
def monitor_factory(tmp_path: Path) -> Iterator[MonitorFactory]:
    monitors: list[Monitor] = []

    def make(broker: BrokerProcess, db: Path | None = None, **overrides: Any) -> Monitor:
        config = MonitorConfig(
            broker=broker.url, db_path=db or tmp_path / "fleet.duckdb", tick_interval_s=0.1, **overrides
        )
        monitor = Monitor(config).start()
        monitors.append(monitor)
        eventually(lambda: monitor.connected)
        return monitor

    yield make
    for monitor in monitors:
        monitor.stop()
