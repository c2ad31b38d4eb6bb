"""The dashboard in a real headless Chromium (Debian's), driven by Playwright, against `fleetpulse up`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.netutil import free_port
from tests.conftest import IN_CI, ROOT, require_tool

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _playwright() -> object:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(f"CI must not skip: {message}")
        pytest.skip(message)
    return sync_playwright


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """`fleetpulse up --demo 3` on free ports; yields the dashboard URL and the demo agents' pids."""
    http_port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "up", "--demo", "3", "--port", str(free_port()),
         "--dashboard-port", str(http_port), "--db", str(tmp_path / "fleet.duckdb")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    pids: dict[str, int] = {}
    assert up.stdout is not None
    for line in up.stdout:
        if match := re.search(r"demo agent (\S+) runs as pid (\d+)", line):
            pids[match[1]] = int(match[2])
        if "fleet: 3/3 healthy" in line:
            break
    try:
        yield f"http://127.0.0.1:{http_port}/", pids
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        up.stdout.close()


@pytest.mark.timeout(120)
def test_the_fleet_view_shows_a_kill_9_without_a_reload(fleet: tuple[str, dict[str, int]]) -> None:
    chromium = require_tool("chromium")
    sync_playwright = _playwright()
    url, pids = fleet
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:  # type: ignore[operator]
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 700})
        page.goto(url)
        page.get_by_text("3/3 healthy").wait_for(timeout=30_000)
        assert page.get_by_text("demo-2").count() >= 1
        os.kill(pids["demo-2"], signal.SIGKILL)
        # No reload: the page's periodic refresh must show it.
        page.get_by_text("2/3 healthy (1 unreachable)").wait_for(timeout=10_000)
        page.get_by_text("will: connection lost").wait_for(timeout=5_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
