"""The dashboard in a real headless Chromium (Debian's), driven by Playwright, against `fleetpulse up --demo 3`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetpulse.broker.netutil import free_port
from tests.conftest import ROOT, cli_process, require_tool, sync_playwright
from tests.http_receiver import Receiver

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PASSWORD = "correct-horse-battery"


@dataclass
class Fleet:
    url: str
    pids: dict[str, int]

    def sql(self, query: str, headers: dict[str, str] | None = None) -> list[list[Any]]:
        request = urllib.request.Request(
            f"{self.url}api/sql",
            data=json.dumps({"sql": query}).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            rows: list[list[Any]] = json.load(response)["rows"]
        return rows


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest, receiver: Receiver) -> Iterator[Fleet]:
    """`fleetpulse up --demo 3` on free ports (demo-2 and demo-3 depend on demo-1), alerting to `receiver`."""
    http_port = free_port()
    # A callable argument is made per test from tmp_path (e.g. an --auth-file).
    extra = [arg(tmp_path) if callable(arg) else arg for arg in getattr(request, "param", [])]
    extra += ["--notify", receiver.url]
    with cli_process(
        "up", "--demo", "3", "--port", str(free_port()), "--dashboard-port", str(http_port),
        "--db", str(tmp_path / "fleet.duckdb"), *extra,
    ) as up:  # fmt: skip
        pids: dict[str, int] = {}
        assert up.stdout is not None
        for line in up.stdout:
            if match := re.search(r"demo agent (\S+) runs as pid (\d+)", line):
                pids[match[1]] = int(match[2])
            if "fleet: 3/3 healthy" in line:
                break
        try:
            yield Fleet(f"http://127.0.0.1:{http_port}/", pids)
        finally:
            os.killpg(up.pid, signal.SIGINT)  # a clean stop; cli_process kills it if that takes over 30 s
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium")
    with sync_playwright()() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(url)
    return page


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited; `up` reaps it at shutdown
    except psutil.NoSuchProcess:
        return True


def _eventually(condition: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_the_fleet_view_shows_a_kill_9_without_a_reload(fleet: Fleet, browser: Any) -> None:
    page = _page(browser, fleet.url)
    page.get_by_text("3/3 healthy").wait_for(timeout=30_000)
    assert page.get_by_text("demo-2").count() >= 1
    assert page.get_by_text("cost today $").count() == 1  # the work columns are there
    os.kill(fleet.pids["demo-2"], signal.SIGKILL)
    # No reload: the page's periodic refresh must show it.
    page.get_by_text("2/3 healthy (1 unreachable)").wait_for(timeout=10_000)
    page.get_by_text("will: connection lost").wait_for(timeout=5_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


@pytest.mark.timeout(120)
def test_the_kill_button_kills_a_live_agent_after_a_confirmation(fleet: Fleet, browser: Any) -> None:
    page = _page(browser, f"{fleet.url}?agent=demo-2")
    page.get_by_text("Demo 2 (demo-2)").wait_for(timeout=30_000)
    page.locator("button", has_text=re.compile(r"^\s*Kill\s*$")).click()
    page.get_by_text("Kill demo-2?").wait_for()
    assert not _gone(fleet.pids["demo-2"])  # nothing happens before the confirmation
    page.get_by_placeholder("reason (recorded in the audit log)").fill("runaway spend, from the browser test")
    page.locator("button", has_text="Confirm kill").click()
    page.get_by_text("2/3 healthy (1 killed)").wait_for(timeout=10_000)
    assert _eventually(lambda: _gone(fleet.pids["demo-2"])), "the agent process did not exit"
    audit = _eventually(lambda: fleet.sql("SELECT command, target, issued_by, reason FROM commands"))
    assert audit == [["kill", "agents/demo-2", "dashboard@127.0.0.1", "runaway spend, from the browser test"]]
    page.get_by_text("runaway spend, from the browser test").first.wait_for(timeout=10_000)  # detail's audit table


@pytest.mark.timeout(120)
def test_the_agent_detail_shows_its_outage(fleet: Fleet, browser: Any) -> None:
    os.kill(fleet.pids["demo-3"], signal.SIGKILL)
    page = _page(browser, f"{fleet.url}?agent=demo-3")
    page.get_by_text("Demo 3 (demo-3)").wait_for(timeout=30_000)
    outages = page.locator(".tabulator", has_text="duration (s)")
    outages.get_by_text("still open").wait_for(timeout=15_000)
    assert outages.get_by_text("unreachable").count() >= 1
    page.get_by_text("will: connection lost").first.wait_for()  # recent transitions
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "agent-detail.png"), full_page=True)


@pytest.mark.timeout(120)
def test_the_dependency_view_names_the_root_cause(fleet: Fleet, browser: Any) -> None:
    page = _page(browser, fleet.url)
    page.get_by_text("3/3 healthy").wait_for(timeout=30_000)
    page.locator(".bk-tab", has_text="Dependencies").click()
    page.locator('.dependency-node[data-agent="demo-1"][data-state="healthy"]').wait_for()
    os.kill(fleet.pids["demo-1"], signal.SIGKILL)
    page.get_by_text("demo-1 is unreachable; impacted: demo-2 (healthy), demo-3 (healthy)").wait_for()
    page.locator('.dependency-node[data-agent="demo-1"][data-state="unreachable"]').wait_for()


@pytest.mark.timeout(120)
def test_the_alerts_view_shows_the_incident_and_its_delivery(fleet: Fleet, browser: Any, receiver: Receiver) -> None:
    os.kill(fleet.pids["demo-3"], signal.SIGKILL)
    assert _eventually(lambda: [b["event"] for b in receiver.delivered()] == ["trigger"])
    page = _page(browser, fleet.url)
    page.get_by_text("2/3 healthy (1 unreachable)").wait_for(timeout=30_000)
    page.locator(".bk-tab", has_text="Alerts").click()
    incidents = page.locator(".tabulator", has_text="folded into")
    incidents.get_by_text("demo-3").wait_for()
    assert incidents.get_by_text("critical").count() == 1
    deliveries = page.locator(".tabulator", has_text="attempts")
    deliveries.get_by_text("trigger").wait_for()
    assert deliveries.get_by_text("127.0.0.1").count() == 1  # the channel, by its (redacted) name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fleet", [["--auth", f"basic:admin:{PASSWORD}"]], indirect=True)
def test_with_auth_the_dashboard_and_api_ask_for_the_same_credentials(fleet: Fleet, browser: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        fleet.sql("SELECT 1")
    assert refused.value.code == 401
    page = _page(browser, fleet.url)
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill("wrong-password")
    page.locator("button[type=submit], input[type=submit]").first.click()
    page.get_by_text("Invalid username or password").wait_for()
    assert page.get_by_text("3/3 healthy").count() == 0
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("button[type=submit], input[type=submit]").first.click()
    page.get_by_text("3/3 healthy").wait_for(timeout=30_000)
    answer = page.request.get(f"{fleet.url}api/agents")  # the login cookie opens the API's reads too
    assert answer.status == 200 and len(answer.json()) == 3
    refused = page.request.post(f"{fleet.url}api/agents/demo-1/kill", data="{}")  # but no command (CSRF)
    assert refused.status == 401
