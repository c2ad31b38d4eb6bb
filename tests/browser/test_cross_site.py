"""In a real Chromium: a page from another origin cannot pause an agent or run SQL; roles hold on the dashboard."""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.broker.netutil import free_port
from tests.browser.test_dashboard import PASSWORD, Fleet, _eventually, _page, browser, fleet

__all__ = ["browser", "fleet"]  # the fixtures, shared with test_dashboard

ATTACK = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink" action="{monitor}api/agents/demo-1/pause">
  <input name='{{"reason": "' value='form"}}'>
</form>
<script>
const monitor = "{monitor}";
const outcome = {{}};
async function attempt(name, url, options) {{
  try {{
    const response = await fetch(url, options);
    outcome[name] = response.type === "opaque" ? "opaque" : (await response.text());
  }} catch (error) {{
    outcome[name] = "blocked";
  }}
}}
(async () => {{
  const pause = monitor + "api/agents/demo-1/pause";
  const sql = monitor + "api/sql";
  await attempt("pause-text", pause, {{method: "POST", mode: "no-cors", body: '{{"reason": "text"}}'}});
  await attempt("pause-json-no-cors", pause, {{method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "application/json"}}, body: '{{"reason": "no-cors"}}'}});
  await attempt("pause-json-cors", pause, {{method: "POST",
      headers: {{"Content-Type": "application/json"}}, body: '{{"reason": "cors"}}'}});
  await attempt("sql-text", sql, {{method: "POST", mode: "no-cors", body: '{{"sql": "SELECT 42"}}'}});
  await attempt("sql-json-cors", sql, {{method: "POST",
      headers: {{"Content-Type": "application/json"}}, body: '{{"sql": "SELECT 42"}}'}});
  await attempt("read-agents", monitor + "api/agents", {{}});
  document.getElementById("form").submit();
  document.title = "done " + JSON.stringify(outcome);
}})();
</script></body></html>"""


@pytest.fixture
def attacker(fleet: Fleet) -> Iterator[str]:
    """Another origin on 127.0.0.1 (its own port) serving the attacking page."""
    page = ATTACK.format(monitor=fleet.url).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _paused(fleet: Fleet, agent: str) -> bool:
    with urllib.request.urlopen(f"{fleet.url}api/agents/{agent}", timeout=10) as answer:
        return bool(json.load(answer)["paused"])


@pytest.mark.timeout(120)
def test_a_page_from_another_origin_cannot_pause_an_agent_or_run_sql(fleet: Fleet, browser: Any, attacker: str) -> None:
    page = browser.new_page()
    page.set_default_timeout(15_000)
    answered: list[tuple[str, str, int]] = []
    page.on("response", lambda r: answered.append((r.request.method, r.url, r.status)))
    page.goto(attacker)
    page.wait_for_function("document.title.startsWith('done')")
    outcome = json.loads(page.title()[len("done ") :])
    assert outcome["pause-json-cors"] == "blocked" and outcome["sql-json-cors"] == "blocked"  # no preflight grant
    assert outcome["read-agents"] == "blocked"  # and no answer is readable across origins
    page.wait_for_timeout(1_000)  # the form's POST, into the iframe
    to_monitor = [(method, status) for method, url, status in answered if url.startswith(fleet.url)]
    posts = [status for method, status in to_monitor if method == "POST"]
    assert len(posts) >= 4 and set(posts) <= {403, 415}, to_monitor  # text, no-cors JSON, form: all refused
    assert fleet.sql("SELECT count(*) FROM commands") == [[0]]
    assert not _paused(fleet, "demo-1")
    # The control: the dashboard's own Pause button (same origin, over its websocket) does reach the agent.
    own = browser.new_page(viewport={"width": 1400, "height": 900})
    own.set_default_timeout(15_000)
    loaded: list[tuple[str, int]] = []
    own.on("response", lambda r: loaded.append((r.url, r.status)))
    own.goto(f"{fleet.url}?agent=demo-1")
    own.get_by_text("Demo 1 (demo-1)").wait_for(timeout=30_000)
    assert [(url, status) for url, status in loaded if status >= 400] == []  # nothing it needs is closed
    own.locator("button", has_text=re.compile(r"^\s*Pause\s*$")).click()
    own.locator("button", has_text="Confirm pause").click()
    assert _eventually(lambda: _paused(fleet, "demo-1")), "the dashboard's own Pause did not reach the agent"
    audit = _eventually(lambda: fleet.sql("SELECT command, issued_by FROM commands"))  # written in the background
    assert audit == [["pause", "dashboard@127.0.0.1"]]


def _auth_file(tmp_path: Path) -> str:
    path = tmp_path / "fleetpulse.auth"
    path.write_text(f"ops operator {PASSWORD}-operator\nwall viewer {PASSWORD}-viewer\n")
    path.chmod(0o600)
    return str(path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fleet", [["--auth-file", _auth_file]], indirect=True)
def test_a_viewer_login_sees_the_fleet_but_cannot_command(fleet: Fleet, browser: Any) -> None:
    page = _page(browser, f"{fleet.url}?agent=demo-1")
    page.locator("input[name=username]").fill("wall")
    page.locator("input[name=password]").fill(f"{PASSWORD}-viewer")
    page.locator("button[type=submit], input[type=submit]").first.click()
    page.get_by_text("Demo 1 (demo-1)").wait_for(timeout=30_000)
    page.get_by_text("wall is a viewer login").wait_for()
    for name in ("Pause", "Resume", "Kill"):
        assert page.locator("button", has_text=re.compile(rf"^\s*{name}\s*$")).is_disabled()
    # Enable the buttons in the browser (Bokeh syncs that to the server) and press Pause: the server refuses.
    enabled = page.evaluate(
        """() => {
          let count = 0;
          for (const model of Bokeh.documents[0].all_models) {
            if (["Pause", "Resume", "Kill"].includes(model.label)) { model.disabled = false; count += 1; }
          }
          return count;
        }"""
    )
    assert enabled == 3
    pause = page.locator("button", has_text=re.compile(r"^\s*Pause\s*$"))
    _eventually(lambda: pause.is_enabled())
    pause.click()
    page.locator("button", has_text="Confirm pause").click()
    page.wait_for_timeout(1_000)
    assert page.request.get(f"{fleet.url}api/agents").status == 200  # the cookie opens reads
    operator = {"Authorization": f"Bearer {PASSWORD}-operator", "Content-Type": "application/json"}
    viewer = {"Authorization": f"Bearer {PASSWORD}-viewer", "Content-Type": "application/json"}
    refused = page.request.post(f"{fleet.url}api/agents/demo-1/pause", data="{}", headers=viewer)
    assert refused.status == 403 and "viewer" in refused.text()
    assert fleet.sql("SELECT count(*) FROM commands", headers=operator) == [[0]]
    answer = page.request.get(f"{fleet.url}api/agents/demo-1", headers={"Authorization": viewer["Authorization"]})
    assert answer.json()["paused"] is False
