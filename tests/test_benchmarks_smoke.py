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
    figures = run_benchmark("ingest", "--seconds", "1", "--agents", "100")
    for key in ("stored_per_s", "raw_paho_per_s", "lost", "ratio", "backlog_stored_per_s", "backlog_lost"):
        assert key in figures
    assert figures["published"] > 0 and figures["backlog_published"] > 0
    assert figures["lost"] == 0  # every heartbeat the broker acknowledged is a row, live and after a restart
    assert figures["backlog_lost"] == 0
    assert figures["stored_distinct"] == figures["stored"] == figures["published"]
    assert figures["raw_received"] == figures["raw_published"]
    assert figures["stored_per_s"] > 0 and figures["raw_paho_per_s"] > 0


@pytest.mark.timeout(60)
def test_alert_latency_benchmark_smoke() -> None:
    figures = run_benchmark("alert_latency", "--kills", "3", "--broker", "amqtt")
    assert figures["kills"] == 3
    assert "mosquitto" not in figures  # only the brokers asked for are run
    for key in ("count", "unalerted", "p50_ms", "p99_ms", "max_ms", "breakdown_p50_ms", "target_met"):
        assert key in figures["amqtt"]
    assert figures["amqtt"]["count"] == 3  # every SIGKILL became a `trigger` webhook POST
    assert figures["amqtt"]["unalerted"] == 0
    assert figures["amqtt"]["webhook_events"] == {"trigger": 3}
    assert 0 < figures["amqtt"]["p50_ms"] <= figures["amqtt"]["p99_ms"] <= figures["amqtt"]["max_ms"]
    assert figures["amqtt"]["p99_ms"] < 5000


@pytest.mark.timeout(120)
def test_dashboard_benchmark_smoke() -> None:
    from tests.conftest import sync_playwright

    require_tool("chromium")
    sync_playwright()  # fails in CI, skips elsewhere, when playwright is missing
    figures = run_benchmark(
        "dashboard", "--agents", "50", "--seconds", "2", "--renders", "1", "--sessions", "2", "--transitions", "2"
    )
    for key in (
        "first_render_s_median", "refresh_ms_median", "refresh_ms_p95", "list_agents_ms_median",
        "fleet_frame_ms_median", "availability_ms", "cpu_percent_idle", "cpu_percent_1_session",
        "cpu_percent_2_sessions", "ws_bytes_per_s_1_session", "transition_to_browser_s",
    ):  # fmt: skip
        assert key in figures
    assert figures["agents"] == 50
    assert figures["first_render_s_median"] > 0
    assert 0 < figures["refresh_ms_median"] <= figures["refresh_ms_p95"]
    assert figures["ws_bytes_per_s_1_session"] > 0  # the open page really received the 1 s updates
    assert figures["cpu_percent_1_session"] > 0
    assert 0 < figures["transition_to_browser_s"] < 10  # every will reached the page (a timeout fails the run)
    assert len(figures["transition_to_browser_s_all"]) == 2


@pytest.mark.timeout(60)
def test_store_append_benchmark_smoke() -> None:
    figures = run_benchmark("store_append", "--rows", "2000", "--pandas")
    for key in ("rows_per_s", "us_per_row", "cpu_us_per_row", "pandas", "pandas_over_arrow", "machine"):
        assert key in figures
    assert figures["rows"] == figures["stored"] == 2000  # every row of the timed batches was committed
    assert figures["same_rows"]  # the Arrow path stores exactly what the old DataFrame path stored
    assert figures["rows_per_s"] > 0 and figures["us_per_row"] > 0 and figures["pandas"]["us_per_row"] > 0
    assert all(us > 0 for us in figures["add_message_us"].values())


@pytest.mark.timeout(120)
def test_history_benchmark_smoke() -> None:
    figures = run_benchmark("history", "--agents", "20", "--days", "2", "--raw-retention-days", "1")
    for key in (
        "agents", "days", "heartbeats", "db_mib_raw", "db_mib_after_rollup", "db_mib_after_checkpoint",
        "db_mib_compacted", "query_ms", "query_ms_after_rollup", "rollup_max_call_ms", "rollup", "target_met",
    ):  # fmt: skip
        assert key in figures
    assert figures["agents"] == 20 and figures["days"] == 2
    assert figures["heartbeats"] == figures["storage"]["raw"]["tables"]["heartbeats"]["rows"] > 100_000
    queries = ("outages_7d", "availability_daily", "reliability_30d", "incidents", "cost_daily", "down_at")
    for name in queries:
        assert figures["query_ms"][name] > 0 and figures["query_ms_after_rollup"][name] > 0
        assert figures["query_rows"][name] > 0  # every question had an answer, before and after
        assert figures["query_rows_after_rollup"][name] == figures["query_rows"][name]
    assert all(figures["history_views_unchanged_by_rollup"].values())
    assert figures["cost_daily_max_abs_difference_usd"] < 1e-9
    assert figures["rollup"]["raw_rows"] > 0 and figures["rollup"]["minute_rows_added"] > 0  # a day moved
    assert figures["rollup"]["summed_rows"] >= figures["rollup"]["raw_rows"]
    assert figures["db_mib_raw"] > 0 and figures["db_mib_after_rollup"] > 0


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_fleet_sim_smoke() -> None:
    require_tool("mosquitto")
    figures = run_benchmark(
        "fleet_sim", "--agents", "50", "--interval-s", "1", "--seconds", "3", "--keepalive-s", "2",
        "--kill", "sim-000001@1", "--freeze", "sim-000002@1",
    )  # fmt: skip
    assert figures["agents"] == 50 and figures["connect_failures"] == 0
    assert figures["published"] >= 100  # births and heartbeats of real connections
    assert figures["acked"] == figures["ledger_acked"] > 0
    assert sorted(action["action"] for action in figures["actions"]) == ["freeze", "kill"]
    assert figures["largest_payload_bytes"] < 16 * 1024  # the monitor's parser accepted every payload kind


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_scale_benchmark_smoke() -> None:
    require_tool("mosquitto")
    figures = run_benchmark("scale", "--agents", "200", "--interval-s", "1", "--seconds", "3")
    for key in (
        "sent_per_s", "stored_per_s", "monitor_cpu_percent", "monitor_rss_mib", "db_growth_gib_per_day",
        "tick_full_fleet_us_median", "tick_due_only_us_median", "lost",
    ):  # fmt: skip
        assert key in figures
    assert figures["lost"] == 0  # every acknowledged heartbeat is a row
    assert figures["stored_distinct"] == figures["stored"] >= figures["acked"] > 0
    assert figures["transitions"] == 0  # a healthy fleet: no state changes during the window
    assert figures["tick_transitions_agree"]  # the due-only tick finds what ticking every view finds
    assert figures["sent_per_s"] > 0 and figures["stored_per_s"] > 0 and figures["monitor_rss_mib"] > 0


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_recovery_monitor_restart_smoke() -> None:
    require_tool("mosquitto")
    arguments = ("--agents", "100", "--interval-s", "2", "--down-s", "1", "--only", "monitor")
    figures = run_benchmark("recovery", *arguments)["monitor_restart"]
    assert figures["all_known"] and figures["all_known_s"] > 0
    assert figures["lost"] == 0  # heartbeats sent while no monitor ran were queued by the broker and stored
    assert figures["duplicates"] == 0
    assert figures["transitions"] == 0  # a restart is not an outage


@pytest.fixture(scope="module")
def broker_restart_figures() -> dict[str, Any]:
    require_tool("mosquitto")
    return run_benchmark(
        "recovery", "--agents", "100", "--interval-s", "2", "--down-s", "1", "--only", "broker", "--timeout-s", "10"
    )["broker_restart"]


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_recovery_broker_restart_smoke(broker_restart_figures: dict[str, Any]) -> None:
    figures = broker_restart_figures
    for key in ("broker_up_s", "fleet_reborn_s", "healthy_s", "monitor_triggers", "agent_triggers", "lost"):
        assert key in figures
    assert 0 < figures["broker_up_s"] < figures["fleet_reborn_s"]  # every agent reconnected with a new session
    assert figures["connect_failures"] == 0


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_recovery_broker_restart_recovers(broker_restart_figures: dict[str, Any]) -> None:
    figures = broker_restart_figures
    assert figures["all_healthy"]
    assert figures["agent_triggers"] == 0  # no false `unreachable` alert
    assert figures["monitor_triggers"] <= 1 and figures["monitor_resolves"] == figures["monitor_triggers"]
    assert figures["lost"] == 0


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_detection_reference_benchmark_smoke() -> None:
    require_tool("mosquitto")
    figures = run_benchmark("detection_reference", "--kills", "3", "--freezes", "1", "--sdk-kills", "0")
    for broker in ("amqtt", "mosquitto"):
        assert figures[broker]["undetected"] == 0
        assert figures[broker]["kill_ms"]["count"] == 3 and figures[broker]["freeze_s"]["count"] == 1
        assert 0 < figures[broker]["kill_ms"]["max"] < 5000  # a closed socket: the broker's will, at once
        # A frozen agent is found by the broker's keep-alive check, 1.5 x keep-alive after its last packet.
        assert figures[broker]["freeze_since_last_packet_s"]["min"] >= figures["keepalive_grace_s"]
    assert figures["amqtt"]["freeze_since_last_packet_s"]["max"] < figures["keepalive_grace_s"] + 1
    assert figures["mosquitto"]["freeze_since_last_packet_s"]["max"] < figures["keepalive_grace_s"] + 7
    assert figures["classic_random_dead_s"]["min"] >= 60 and figures["classic_random_dead_s"]["max"] <= 120


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_ingest_ceiling_benchmark_smoke() -> None:
    require_tool("mosquitto")
    require_tool("mosquitto_pub")
    figures = run_benchmark("ingest_ceiling", "--seconds", "1", "--agents", "100", "--messages", "10000")
    for key in ("stored_per_s", "raw_paho_per_s", "c_clients_per_s", "lost"):
        assert key in figures
    assert figures["lost"] == 0 and figures["c_clients_lost"] == 0
    assert figures["c_clients_received"] == figures["c_clients_published"] == 10000
    assert figures["stored_per_s"] > 0 and figures["raw_paho_per_s"] > 0 and figures["c_clients_per_s"] > 0


@pytest.mark.timeout(60)
def test_core_cost_benchmark_smoke() -> None:
    figures = run_benchmark("core_cost", "--agents", "200", "--rounds", "2")
    assert figures["heartbeats"] == 400 and figures["stats"]["rows_stored"] == 400  # every heartbeat applied
    assert figures["us_per_heartbeat"] == pytest.approx(figures["handling_us"] + figures["committing_us"], abs=0.02)
    assert set(figures["stages_us"]) >= {"parse_health", "apply_message", "add_message", "rate_limit"}
    assert all(us > 0 for us in figures["stages_us"].values())
