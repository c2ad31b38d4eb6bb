"""A monitor in its own process for the fleet benchmarks, so its CPU and memory are its own.

Run by `benchmarks.scale` and `benchmarks.recovery` as `python -m benchmarks._monitor_child CONFIG_JSON`, with
`{"broker": URL, "db": PATH, "notify": [URL, ...]}`. It builds the `Monitor` the way `fleetpulse monitor
--dashboard-port 0` does (default `MonitorConfig` plus broker, database and `--notify` URLs, `gc.freeze()` after
start; no HTTP API, whose Panel imports would add ~100 MiB to every figure), prints a `ready` JSON line and
then answers one JSON command per stdin line:

* `{"cmd": "stats"}`: `monitor.stats()`, whether it is connected, agents per state and the depth of its event
  queue (events received from paho, not yet handled by the core);
* `{"cmd": "wait", "what": "connected" | "known" | "healthy", "agents": N, "timeout_s": T}`: polls until the
  monitor is connected, or knows N agents (state not `unknown`), or lists N healthy, and answers `reached` with
  the `time.monotonic()` it first saw it (or `ok: false` at the timeout), and when 50, 90, 99 and 100 % of N
  were first known and first healthy while it waited;
* `{"cmd": "stop"}`: `monitor.stop()` (flush, presence offline, DISCONNECT), answers `stopped` and exits.

Counting states reads the monitor's private `_views` under its lock (a `Counter` over 10,000 views costs ~1 ms;
`list_agents()` builds a dict per agent and would cost the monitor more CPU than it is being measured with).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from benchmarks._child import EventChild
from fleetpulse.monitor.health import State

if TYPE_CHECKING:
    from fleetpulse.monitor.service import Monitor

__all__ = ["MonitorProcess"]

CHILD_MODULE = "benchmarks._monitor_child"


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _states(monitor: Monitor) -> Counter[str]:
    with monitor._views_lock:
        views = list(monitor._views.values())
    return Counter(view.state.value for view in views)


MILESTONES = (0.5, 0.9, 0.99, 1.0)  # fractions of the agents waited for, each reported with when it was reached


def _counts(monitor: Monitor) -> dict[str, int]:
    states = _states(monitor)
    return {
        "connected": int(monitor.connected),
        "known": sum(states.values()) - states[State.UNKNOWN.value],
        "healthy": states[State.HEALTHY.value],
    }


def _wait(monitor: Monitor, what: str, agents: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    poll_s = 0.02 + agents * 2e-6  # ~1 ms of counting per 10,000 agents: keep it a few % of one core
    wanted = 1 if what == "connected" else max(1, agents)
    milestones: dict[str, dict[str, float]] = {"known": {}, "healthy": {}}
    while True:
        now = time.monotonic()
        counts = _counts(monitor)
        for kind, reached in milestones.items():
            for fraction in MILESTONES:
                if counts[kind] >= fraction * max(1, agents):
                    reached.setdefault(str(fraction), now)
        if counts[what] >= wanted or now > deadline:
            ok = counts[what] >= wanted
            _emit("reached", ok=ok, at=now, states=_states(monitor), milestones=milestones)
            return
        time.sleep(poll_s)


def main(argv: list[str]) -> None:
    options = json.loads(argv[0])
    # Imported here, not at the top: the monitor's MQTT reader process imports this module again as its
    # __main__ (multiprocessing's spawn), and should cost what it costs under `fleetpulse monitor`.
    from fleetpulse.monitor.service import Monitor, MonitorConfig

    config = MonitorConfig(
        broker=options["broker"],
        db_path=Path(options["db"]),
        notify=tuple(options["notify"]),
        reader_process=True,  # as `fleetpulse monitor` does
        max_agents=0,  # no agent cap (--max-agents 0): the runs measure fleets beyond its 20,000 default
    )
    monitor = Monitor(config).start()
    gc.freeze()  # as `fleetpulse monitor` does after start
    _emit("ready", at=time.monotonic())
    for line in sys.stdin:
        command = json.loads(line)
        name = command["cmd"]
        if name == "stats":
            _emit(
                "stats",
                at=time.monotonic(),
                stats=monitor.stats(),
                connected=monitor.connected,
                states=_states(monitor),
                queued=monitor._events.qsize(),
            )
        elif name == "wait":
            _wait(monitor, command["what"], int(command.get("agents", 0)), float(command["timeout_s"]))
        elif name == "stop":
            break
    started = time.monotonic()
    monitor.stop()
    _emit("stopped", at=time.monotonic(), stop_s=time.monotonic() - started, stats=monitor.stats())


class MonitorProcess(EventChild):
    """The parent's handle on one `benchmarks._monitor_child` process (started here, ready when this returns)."""

    def __init__(self, broker_url: str, db_path: Path, notify: tuple[str, ...] = ()) -> None:
        options = {"broker": broker_url, "db": str(db_path), "notify": list(notify)}
        self.spawned_at = time.monotonic()
        super().__init__("monitor", CHILD_MODULE, json.dumps(options))
        self.process = psutil.Process(self.pid)
        self.ready_at = float(self.read_event("ready")["at"])

    def _command(self, name: str, **fields: Any) -> None:
        self.send(json.dumps({"cmd": name, **fields}))

    def stats(self) -> dict[str, Any]:
        self._command("stats")
        return self.read_event("stats")

    def wait(self, what: str, agents: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
        """The `reached` event: `ok`, `at` (monotonic) and the agents per state then."""
        self._command("wait", what=what, agents=agents, timeout_s=timeout_s)
        return self.read_event("reached")

    def wait_drained(self, quiet_s: float = 3.0, timeout_s: float = 300.0) -> tuple[dict[str, Any], float]:
        """Until the event queue is empty and rows_stored has not moved for `quiet_s`: (last stats, when it last
        moved, monotonic)."""
        stats = self.stats()
        moved_at = time.monotonic()
        deadline = moved_at + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
            latest = self.stats()
            if latest["stats"].get("rows_stored") != stats["stats"].get("rows_stored") or latest["queued"]:
                moved_at = time.monotonic()
            stats = latest
            if time.monotonic() - moved_at >= quiet_s:
                break
        return stats, moved_at

    def stop(self) -> dict[str, Any]:
        """Graceful stop; the `stopped` event (final stats)."""
        self._command("stop")
        stopped = self.read_event("stopped")
        self.wait_ok(timeout_s=60)
        return stopped


if __name__ == "__main__":
    main(sys.argv[1:])
