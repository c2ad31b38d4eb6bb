"""Every string an agent sends is text on every dashboard view, in a real Chromium (issue 14, item 3).

Agents here are plain paho clients on the broker of a real `fleetpulse up`: each free-text field of their
heartbeats (name, reason, host, version, label keys and values, by_model keys) and of the operators'
commands and silences carries HTML, script and Markdown. Each view must show that text literally, create
no element from it, and run none of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor.report import format_html
from tests.browser import test_dashboard
from tests.browser.test_dashboard import _eventually, _page
from tests.conftest import cli_process
from tests.hostile import heartbeat, hostile
from tests.http_receiver import Receiver
from tests.monitor.test_report import HOSTILE, hostile_report

browser = test_dashboard.browser  # the same real-Chromium fixture


NAME, HOST, VERSION, LABEL_KEY, LABEL_VALUE = (hostile(tag) for tag in ("N", "H", "V", "LK", "LV"))
REASON, STOP_REASON, MODEL, COMMAND_REASON = (hostile(tag) for tag in ("R", "S", "M", "C"))
SILENCE_PATTERN, SILENCE_REASON = hostile("P*"), hostile("Q")  # the pattern is a glob that matches no agent

# What no view may contain: anything an agent's string could have made (searched through shadow roots).
_INJECTED = """() => {
    const found = [];
    const visit = (root) => {
        for (const element of root.querySelectorAll("*")) {
            const tag = element.tagName.toLowerCase();
            if (tag === "img" && element.getAttribute("src") === "x") found.push("img[src=x]");
            // (a chart's own script may carry the strings as JSON data: inert)
            if (tag === "script" && element.textContent.trim().startsWith("window.__pwned")) found.push("script");
            if (element.hasAttribute("onerror")) found.push(tag + "[onerror]");
            const href = element.getAttribute("href") || "";
            if (/^\\s*javascript:/i.test(href)) found.push(tag + "[href=javascript:]");
            if (element.shadowRoot) visit(element.shadowRoot);
        }
    };
    visit(document);
    return found;
}"""


@dataclass
class Site:
    """What a test visits, and the dialogs its pages opened (a script that ran might open one)."""

    url: str
    dialogs: list[str]


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (201, 202), response.status


def _agents(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{url}api/agents", timeout=10) as response:
        return {record["agent"]: record for record in json.load(response)}


@pytest.fixture
def hostile_fleet(tmp_path: Path, receiver: Receiver) -> Iterator[Site]:
    """`fleetpulse up` with four paho agents: xss-a healthy (needs b and c), xss-b degraded, xss-c dead by its
    will, xss-d stopped; an operator's pause of xss-a and a silence, with hostile reasons (and pattern)."""
    broker_port, http_port = free_port(), free_port()
    with cli_process(
        "up", "--port", str(broker_port), "--dashboard-port", str(http_port), "--db", str(tmp_path / "x.duckdb"),
        "--notify", receiver.url,
    ) as up:  # fmt: skip
        assert up.stdout is not None
        for line in up.stdout:
            if "fleet as JSON" in line:
                break
        url = f"http://127.0.0.1:{http_port}/"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"xss-test-{uuid.uuid4().hex[:6]}")
        client.connect("127.0.0.1", broker_port, keepalive=30)
        client.loop_start()
        try:

            def publish(agent: str, payload: bytes) -> None:
                client.publish(f"agents/{agent}/health", payload, qos=1, retain=True).wait_for_publish(10)

            sessions = {agent: uuid.uuid4().hex for agent in ("xss-a", "xss-b", "xss-c", "xss-d")}
            for agent, session in sessions.items():
                publish(agent, heartbeat(agent, session, 0, depends_on=["xss-b", "xss-c"] if agent == "xss-a" else []))
            assert _eventually(lambda: len(_agents(url)) == 4, timeout_s=15)
            publish("xss-b", heartbeat("xss-b", sessions["xss-b"], 1, status="degraded", reason=REASON))
            will = {"v": 1, "agent": "xss-c", "kind": "will", "session": sessions["xss-c"],
                    "sent_at": datetime.now(UTC).isoformat(), "interval_s": 30}  # fmt: skip
            publish("xss-c", json.dumps(will).encode())  # what the broker sends when the connection dies
            stop = {**will, "agent": "xss-d", "kind": "stop", "session": sessions["xss-d"], "reason": STOP_REASON}
            publish("xss-d", json.dumps(stop).encode())
            states = {"xss-a": "healthy", "xss-b": "degraded", "xss-c": "unreachable", "xss-d": "killed"}
            assert _eventually(
                lambda: {a: r["health_status"] for a, r in _agents(url).items()} == states, timeout_s=15
            ), _agents(url)
            _post(f"{url}api/agents/xss-a/pause", {"reason": COMMAND_REASON})
            _post(f"{url}api/silences", {"pattern": SILENCE_PATTERN, "for": "1h", "reason": SILENCE_REASON})
            assert _eventually(lambda: receiver.delivered(), timeout_s=15), "no alert was delivered"
            yield Site(url, [])
        finally:
            client.loop_stop()
            client.disconnect()
            os.killpg(up.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(timeout=30)


def _open(browser: Any, site: Site, path: str = "") -> Any:
    page = _page(browser, site.url + path)

    def on_dialog(dialog: Any) -> None:
        site.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return page


def _show(page: Any, tab: str) -> None:
    page.locator(".bk-tab", has_text=re.compile(rf"^\s*{tab}\s*$")).click()


def _assert_inert(page: Any, fleet: Site, *shown: str) -> None:
    """Each of `shown` is on the page as text; nothing was injected, nothing ran."""
    for text in shown:
        page.get_by_text(text).first.wait_for()
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate(_INJECTED) == []
    assert page.evaluate("window.__pwned") is None
    assert fleet.dialogs == []


@pytest.mark.timeout(180)
def test_every_view_shows_agent_strings_as_text(hostile_fleet: Site, browser: Any) -> None:
    fleet = hostile_fleet
    page = _open(browser, fleet)
    page.get_by_text("1/4 healthy").first.wait_for(timeout=30_000)
    # Fleet: name, host, version and reason columns (the killed agent's stop reason too).
    _assert_inert(page, fleet, f"{NAME} xss-a", HOST, VERSION, REASON, STOP_REASON)
    _show(page, "History")
    _assert_inert(page, fleet, MODEL)  # cost per model
    _show(page, "Dependencies")
    page.locator('.dependency-node[data-agent="xss-c"][data-state="unreachable"]').wait_for()
    _assert_inert(page, fleet, "xss-c is unreachable; impacted: xss-a (healthy)")
    _show(page, "Alerts")
    page.locator(".tabulator", has_text="folded into").get_by_text("xss-c").first.wait_for()
    _assert_inert(page, fleet, SILENCE_PATTERN, SILENCE_REASON)
    _show(page, "Monitor")
    _assert_inert(page, fleet, "messages received")

    # Agent detail, by URL: the facts (the Markdown pane where the stored XSS was found), the audit log.
    page = _open(browser, fleet, "?agent=xss-a")
    _assert_inert(page, fleet, f"{NAME} xss-a", HOST, VERSION, LABEL_KEY, LABEL_VALUE, COMMAND_REASON)
    page = _open(browser, fleet, "?agent=xss-b")
    _assert_inert(page, fleet, f"{NAME} xss-b", f"reported: {REASON}")  # facts and recent transitions
    assert page.locator(".tabulator", has_text="from").get_by_text(f"reported: {REASON}").count() >= 1
    # The state timeline's tooltip (a Bokeh hover, `@reason`): over the latest stay, just left of the toolbar.
    timeline = page.locator("canvas").first.bounding_box()
    page.mouse.move(timeline["x"] + timeline["width"] - 50, timeline["y"] + timeline["height"] * 0.4)
    page.locator(".bk-tooltip-row-value", has_text=f"reported: {REASON}").wait_for()
    _assert_inert(page, fleet)
    page = _open(browser, fleet, "?agent=xss-d")
    _assert_inert(page, fleet, f"stopped: {STOP_REASON}")


@pytest.mark.timeout(60)
def test_the_html_report_shows_every_string_as_text(browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(format_html(hostile_report()), encoding="utf-8")
    report = Site(path.as_uri(), [])
    page = _open(browser, report)
    page.locator("canvas").first.wait_for()  # the chart drew: its JSON (with the strings) was read
    _assert_inert(page, report, f"{HOSTILE}-agent", f"{HOSTILE}-model", f"{HOSTILE}.duckdb")
