"""Measure whether the dashboard stays responsive with a large fleet: refresh cost, first render, update cost, latency.

Run from the repository root: `python -m benchmarks.dashboard [--agents 2000] [--seconds 20]` (`--agents 50
--seconds 3 --renders 1 --sessions 3` is the CI smoke run). This process is the server side, as `fleetpulse up`
runs it: the embedded amqtt broker on its own thread (`--broker mosquitto` for a Mosquitto process instead), a
`Monitor` on a fresh DuckDB file and its `ApiServer` (dashboard and API), all on free ports. A
`benchmarks._dashboard_publisher` process makes `--agents` agents appear: births first, then one heartbeat per
agent every 30 s, spread evenly, each carrying a metrics window, so the table's work columns are filled. Once
the monitor lists every agent as healthy, in this order:

1. server cost of one fleet-table refresh, no browser open: `monitor.list_agents()`, `fleet_frame()` and both
   together (with `headline()`) as the page's 1 s refresh calls them, median and p95 over `--calls` calls; and
   `history.availability()` over 24 h (the uptime column, which the dashboard caches for 15 s);
2. steady state with no session: the server side's CPU over `--seconds` (see below);
3. first render in Debian's headless Chromium (the browser tests' flags): page.goto -> the headline "N/N
   healthy" visible, on `--renders` fresh pages (a new browser context each), each rendered while no other
   session exists. A closed page's Bokeh session keeps running for 15-32 s (Bokeh's defaults), so before each
   render the run waits until the server has destroyed the previous one, and reports how long that took;
4. steady state with the last of those pages open: CPU and the bytes per second the page receives over its
   websocket (Playwright's `framereceived` payloads, summed);
5. transitions, with that one page open: an agent's will is published (`kind: "will"`, its session) and the
   time until the page shows "N-1/N healthy" is taken, `--transitions` times (the page polls every second);
6. steady state with `--sessions` pages open (the others opened now; their render times are reported too).

CPU is the server side's: this process's time (psutil, per thread) minus its main thread, which only drives
Playwright, and minus the broker's thread, which is reported on its own, in % of one core. With two cores or
more, the server side's threads are pinned to the first half of the cores and Chromium, the Playwright driver,
the publisher and the main thread to the other half (`--no-pin` turns it off): on a small machine the browser
stands in for the operators' own computers, and its pages must not take the CPU from the server it measures.
The figures are printed as a table with the machine, and on the last line as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import panel as pn
import psutil

from benchmarks._child import EventChild
from benchmarks._ingest_publisher import INTERVAL_S
from benchmarks.sdk_overhead import cpu_model
from fleetpulse.broker.embedded import EmbeddedBroker
from fleetpulse.broker.mosquitto import MosquittoProcess
from fleetpulse.broker.netutil import free_port
from fleetpulse.monitor import history
from fleetpulse.monitor.api import ApiServer
from fleetpulse.monitor.dashboard import REFRESH_MS, fleet_frame
from fleetpulse.monitor.fleet import headline
from fleetpulse.monitor.health import Transition
from fleetpulse.monitor.service import Monitor, MonitorConfig

PUBLISHER_MODULE = "benchmarks._dashboard_publisher"
# The same Chromium flags as tests/browser/test_dashboard.py.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 900}
FLEET_READY_TIMEOUT_S = 180.0
RENDER_TIMEOUT_MS = 120_000
TRANSITION_TIMEOUT_MS = 15_000
SESSION_GONE_TIMEOUT_S = 60.0  # Bokeh destroys an unused session 15 s after its last connection, checked every 17 s
SETTLE_S = 2.0  # after a page rendered, before its steady state is measured
AVAILABILITY_CALLS = 5
DISTURBED_PERCENT = 10.0  # other processes' CPU in a phase beyond which the report warns
MIB = 1024 * 1024

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """Where the run is, on stderr (the figures go to stdout)."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# -- figures -----------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def rounded(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def timed_ms(call: Callable[[], object], count: int) -> list[float]:
    """Wall milliseconds of `count` calls, one after the other."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(1000.0 * (time.perf_counter() - started))
    return samples


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "panel": pn.__version__,
    }


# -- where things run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """The server side's cores and everyone else's."""

    server: frozenset[int]
    client: frozenset[int]

    @classmethod
    def split(cls) -> Cores | None:
        """First half for the server, second half for the rest; None with a single core."""
        if not hasattr(os, "sched_setaffinity"):  # Linux only
            return None
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return None
        half = len(available) // 2
        return cls(frozenset(available[:half]), frozenset(available[half:]))


def pin_this_thread(cores: frozenset[int] | None) -> None:
    """Linux applies an affinity to the calling thread only; threads and processes it starts inherit it."""
    if cores is not None:
        os.sched_setaffinity(0, cores)


# -- CPU accounting ------------------------------------------------------------------------------------


def _busy_s(times: Any) -> float:
    return float(times.user + times.system)


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds at one moment, split by who spent them."""

    at: float  # time.monotonic()
    process_s: float  # this whole process
    harness_s: float  # its main thread (Playwright's client) and asyncio's waitpid threads
    broker_thread_s: float  # the embedded broker's thread (0 with Mosquitto)
    broker_process_s: float  # the Mosquitto process (0 with the embedded broker)
    browser_s: dict[tuple[int, float], float]  # per (pid, create time): Chromium's processes and Playwright's driver
    publisher_s: float
    cores_busy_s: list[float]  # every process's, per core of the machine


class CpuMeter:
    """Samples where this process's CPU goes, per thread, and what the browser and publisher processes use."""

    def __init__(self, broker_thread: str | None, broker_pid: int | None, publisher_pid: int) -> None:
        self._process = psutil.Process()
        self._broker_thread = broker_thread
        self._broker = psutil.Process(broker_pid) if broker_pid is not None else None
        self._publisher = psutil.Process(publisher_pid)

    def snapshot(self) -> CpuSnapshot:
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        main_id = threading.main_thread().native_id
        harness = broker_thread = 0.0
        for thread in self._process.threads():
            name = names.get(thread.id, "")
            if thread.id == main_id or name.startswith("waitpid"):
                harness += thread.user_time + thread.system_time
            elif name == self._broker_thread:
                broker_thread += thread.user_time + thread.system_time
        browser: dict[tuple[int, float], float] = {}
        for child in self._process.children(recursive=True):
            if child.pid in (self._publisher.pid, self._broker.pid if self._broker else None):
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                browser[(child.pid, child.create_time())] = _busy_s(child.cpu_times())
        return CpuSnapshot(
            at=time.monotonic(),
            process_s=_busy_s(self._process.cpu_times()),
            harness_s=harness,
            broker_thread_s=broker_thread,
            broker_process_s=_busy_s(self._broker.cpu_times()) if self._broker is not None else 0.0,
            browser_s=browser,
            publisher_s=_busy_s(self._publisher.cpu_times()),
            cores_busy_s=[times.user + times.nice + times.system + times.irq + times.softirq + times.steal
                          for times in psutil.cpu_times(percpu=True)],
        )  # fmt: skip


class GcPauses:
    """Full (generation 2) garbage collections while installed: when each ended and how long it held the GIL.

    A full collection walks every tracked object of the process (Panel, Bokeh and pandas make that a big heap)
    and stops every Python thread meanwhile: the monitor's core, the MQTT client and the dashboard alike.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []  # (time.monotonic() at the end, milliseconds)
        self._started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((time.monotonic(), 1000.0 * (time.perf_counter() - self._started)))

    @contextlib.contextmanager
    def installed(self) -> Iterator[GcPauses]:
        gc.callbacks.append(self._on_gc)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._on_gc)

    def between(self, start: float, end: float) -> list[float]:
        return [pause_ms for at, pause_ms in self.pauses if start <= at <= end]


@dataclass(frozen=True)
class Steady:
    """One steady-state phase: CPU in % of one core; websocket bytes per second over all open pages."""

    sessions: int
    seconds: float
    server_percent: float  # this process minus the harness and the broker thread: monitor, DuckDB, Panel/Bokeh
    harness_percent: float
    broker_percent: float
    browser_percent: float
    publisher_percent: float
    ws_bytes_per_s: float
    live_sessions: int  # Bokeh sessions the server had during the phase
    gc_pauses_ms: list[float]  # full garbage collections during the phase
    cores_busy_percent: list[float]  # each core's busy share, whoever used it
    others_percent: float  # CPU that processes outside this run used meanwhile: it disturbs the figures


def steady_between(
    start: CpuSnapshot, end: CpuSnapshot, sessions: int, ws_bytes: int, live: int, gc_pauses: GcPauses
) -> Steady:
    wall_s = end.at - start.at

    def percent(seconds: float) -> float:
        return 100.0 * seconds / wall_s

    harness = end.harness_s - start.harness_s
    broker_thread = end.broker_thread_s - start.broker_thread_s
    # Processes started during the phase count in full; those that ended during it are lost (rare).
    browser = sum(busy - start.browser_s.get(key, 0.0) for key, busy in end.browser_s.items())
    cores = [after - before for before, after in zip(start.cores_busy_s, end.cores_busy_s, strict=True)]
    ours = (
        end.process_s - start.process_s + browser + end.publisher_s - start.publisher_s
        + end.broker_process_s - start.broker_process_s
    )  # fmt: skip
    return Steady(
        sessions=sessions,
        seconds=wall_s,
        server_percent=percent(end.process_s - start.process_s - harness - broker_thread),
        harness_percent=percent(harness),
        broker_percent=percent(broker_thread + end.broker_process_s - start.broker_process_s),
        browser_percent=percent(browser),
        publisher_percent=percent(end.publisher_s - start.publisher_s),
        ws_bytes_per_s=ws_bytes / wall_s,
        live_sessions=live,
        gc_pauses_ms=gc_pauses.between(start.at, end.at),
        cores_busy_percent=[percent(busy) for busy in cores],
        others_percent=max(0.0, percent(sum(cores) - ours)),
    )


# -- the pieces ----------------------------------------------------------------------------------------


class FleetPublisherChild(EventChild):
    """The `benchmarks._dashboard_publisher` process."""

    def __init__(self, broker_url: str, agents: int, connections: int) -> None:
        super().__init__("publisher", PUBLISHER_MODULE, broker_url, str(agents), str(connections))

    def stop(self) -> dict[str, Any]:
        self.send("stop")
        done = self.read_event("done")
        self.wait_ok()
        return done


class SessionCount:
    """Live Bokeh sessions of this process's Panel server, from Panel's session-created and -destroyed hooks."""

    def __init__(self) -> None:
        self.created = 0
        self.destroyed = 0
        pn.state.on_session_created(self._on_created)
        pn.state.on_session_destroyed(self._on_destroyed)

    def _on_created(self, context: Any) -> None:
        self.created += 1

    def _on_destroyed(self, context: Any) -> None:
        self.destroyed += 1

    @property
    def live(self) -> int:
        return self.created - self.destroyed

    def wait_none(self) -> float:
        """Until the server has destroyed every session; how long that took."""
        started = time.monotonic()
        while self.live > 0:
            if time.monotonic() - started > SESSION_GONE_TIMEOUT_S:
                raise RuntimeError(f"{self.live} closed sessions still alive after {SESSION_GONE_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        return time.monotonic() - started


@dataclass
class WebsocketBytes:
    """Bytes a page received over its websockets (Bokeh's: text and binary frames)."""

    received: int = 0

    def watch(self, page: Any) -> None:
        page.on("websocket", lambda websocket: websocket.on("framereceived", self._on_frame))

    def _on_frame(self, payload: str | bytes) -> None:
        self.received += len(payload.encode() if isinstance(payload, str) else payload)


@dataclass
class Session:
    """One browser page on the dashboard."""

    page: Any
    websocket: WebsocketBytes
    render_s: float


def open_session(browser: Any, url: str, expected: str) -> Session:
    """A fresh page (a new browser context) on the dashboard, timed from goto until `expected` is visible."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    websocket = WebsocketBytes()
    websocket.watch(page)
    started = time.monotonic()
    page.goto(url)
    page.get_by_text(expected).wait_for()
    return Session(page, websocket, time.monotonic() - started)


@dataclass(frozen=True)
class Broker:
    url: str
    kind: str
    thread: str | None = None  # the embedded broker's thread in this process
    pid: int | None = None  # Mosquitto's process


@contextlib.contextmanager
def running_broker(kind: str, directory: Path) -> Iterator[Broker]:
    if kind == "mosquitto":
        with MosquittoProcess(directory) as mosquitto:
            yield Broker(mosquitto.url, f"Mosquitto {mosquitto.version} (own process)", pid=mosquitto.pid)
        return
    with EmbeddedBroker("127.0.0.1", 0) as embedded:
        # EmbeddedBroker names its event-loop thread after its port.
        thread = f"fleetpulse-broker-{embedded.port}"
        yield Broker(embedded.url, "embedded amqtt 0.12.1 (a thread of this process)", thread)


def wait_fleet_healthy(monitor: Monitor, agents: int, publisher: FleetPublisherChild) -> float:
    """Births go out; then until the monitor lists `agents` agents, all healthy. Seconds from the first birth."""
    started = time.monotonic()
    publisher.send("go")
    births = publisher.read_event("births")
    if births["acked"] != agents:
        raise RuntimeError(f"the broker acknowledged {births['acked']} of {agents} births")
    while True:
        records = monitor.list_agents()
        healthy = sum(record["health_status"] == "healthy" for record in records)
        if len(records) == agents and healthy == agents:
            return time.monotonic() - started
        if time.monotonic() - started > FLEET_READY_TIMEOUT_S:
            raise RuntimeError(
                f"after {FLEET_READY_TIMEOUT_S:.0f} s the monitor lists {len(records)} agents, {healthy} healthy"
            )
        time.sleep(0.1)


@dataclass(frozen=True)
class ServerCost:
    list_agents_ms: list[float]
    fleet_frame_ms: list[float]
    refresh_ms: list[float]
    availability_ms: list[float]
    rows: int
    gc_pauses_ms: list[float]  # full garbage collections while the calls were timed


def measure_server_cost(monitor: Monitor, calls: int, gc_pauses: GcPauses) -> ServerCost:
    """The data work behind one fleet-table refresh, as the page's refresh does it, without Panel and Bokeh."""

    def uptime() -> dict[str, float]:
        now = datetime.now(UTC)
        return history.availability(monitor.store, now - timedelta(hours=24), now)

    started = time.monotonic()
    availability_ms = timed_ms(uptime, AVAILABILITY_CALLS)
    uptime_24h = uptime()
    records = monitor.list_agents()
    list_ms = timed_ms(monitor.list_agents, calls)
    frame_ms = timed_ms(lambda: fleet_frame(records, datetime.now(UTC), uptime_24h), calls)

    def refresh() -> None:
        current = monitor.list_agents()
        headline(current)
        fleet_frame(current, datetime.now(UTC), uptime_24h)

    refresh_ms = timed_ms(refresh, calls)
    gc_during = gc_pauses.between(started, time.monotonic())
    rows = len(fleet_frame(records, datetime.now(UTC)))
    return ServerCost(list_ms, frame_ms, refresh_ms, availability_ms, rows, gc_during)


class TransitionClock:
    """When the monitor committed each agent's move to `unreachable` (a transition listener, on its core thread)."""

    def __init__(self, monitor: Monitor) -> None:
        self.committed_at: dict[str, float] = {}
        monitor.add_listener(self._on_transitions)

    def _on_transitions(self, transitions: list[Transition]) -> None:
        now = time.monotonic()
        for transition in transitions:
            if transition.to_state == "unreachable":
                self.committed_at.setdefault(transition.agent, now)


@dataclass
class Transitions:
    to_monitor_s: list[float] = field(default_factory=list)  # will sent -> the monitor committed the transition
    to_browser_s: list[float] = field(default_factory=list)  # will sent -> the page shows the new headline


def measure_transitions(
    publisher: FleetPublisherChild, page: Any, agents: int, count: int, clock: TransitionClock
) -> Transitions:
    result = Transitions()
    for number in range(1, count + 1):
        index = number * agents // (count + 1)
        expected = f"{agents - number}/{agents} healthy"
        started = time.monotonic()
        publisher.send(f"will {index}")
        page.get_by_text(expected).wait_for(timeout=TRANSITION_TIMEOUT_MS)
        result.to_browser_s.append(time.monotonic() - started)
        will = publisher.read_event("will")
        committed = clock.committed_at.get(will["agent"])
        result.to_monitor_s.append(committed - started if committed is not None else math.nan)
        page.wait_for_timeout(370)  # off the page's 1 s beat, so the next will lands elsewhere in it
    return result


@dataclass(frozen=True)
class Meters:
    cpu: CpuMeter
    sessions: SessionCount
    gc_pauses: GcPauses


def measure_steady(meters: Meters, seconds: float, sessions: list[Session], wait: Callable[[float], None]) -> Steady:
    wait(SETTLE_S)
    before = [session.websocket.received for session in sessions]
    start = meters.cpu.snapshot()
    wait(seconds)
    end = meters.cpu.snapshot()
    received = sum(session.websocket.received - b for session, b in zip(sessions, before, strict=True))
    return steady_between(start, end, len(sessions), received, meters.sessions.live, meters.gc_pauses)


def once(action: Callable[[], object]) -> Callable[[], None]:
    """`action`, run on the first call only."""
    done = threading.Event()

    def call() -> None:
        if not done.is_set():
            done.set()
            action()

    return call


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    cores: Cores | None = None
    broker_kind: str = ""
    fleet_ready_s: float = math.nan
    server: ServerCost | None = None
    steady: list[Steady] = field(default_factory=list)
    renders_s: list[float] = field(default_factory=list)  # fresh pages, each with no other session alive
    session_gone_s: list[float] = field(default_factory=list)  # page closed -> Bokeh destroyed its session
    sessions: list[Session] = field(default_factory=list)  # the pages of the last phase
    transitions: Transitions = field(default_factory=Transitions)
    publisher_done: dict[str, Any] = field(default_factory=dict)
    monitor_stats: dict[str, int] = field(default_factory=dict)
    rss_mib: float = math.nan
    load_at_start: float = field(default_factory=lambda: os.getloadavg()[0])


def run(args: argparse.Namespace, chromium: str) -> Run:
    from playwright.sync_api import sync_playwright

    result = Run(args, cores=Cores.split() if args.pin else None)
    server_cores = result.cores.server if result.cores else None
    client_cores = result.cores.client if result.cores else None
    agents = args.agents
    with contextlib.ExitStack() as stack:
        if result.cores is not None:
            stack.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))
        gc_pauses = stack.enter_context(GcPauses().installed())
        live = SessionCount()
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetpulse-dashboard-")))
        pin_this_thread(server_cores)  # the threads started now (broker, monitor, HTTP, DuckDB's) inherit it
        broker = stack.enter_context(running_broker(args.broker, directory))
        result.broker_kind = broker.kind
        monitor = Monitor(MonitorConfig(broker=broker.url, db_path=directory / "dashboard.duckdb"))
        stack.callback(monitor.stop)
        api = ApiServer(monitor, "127.0.0.1", free_port()).start()
        stop_api = once(api.stop)  # ApiServer.stop() may not be called twice
        stack.callback(stop_api)  # before the monitor stops: no page may refresh from a stopped monitor
        monitor.start(api_url=api.url)
        clock = TransitionClock(monitor)
        url = f"{api.url}/"

        pin_this_thread(client_cores)  # the publisher, the browser and this thread from now on
        publisher = FleetPublisherChild(broker.url, agents, args.connections)
        stack.callback(publisher.kill)
        publisher.read_event("ready")
        progress(f"broker {broker.url}, dashboard {url}; {agents} agents are born")
        result.fleet_ready_s = wait_fleet_healthy(monitor, agents, publisher)
        progress(f"the monitor lists {agents} agents, all healthy, {result.fleet_ready_s:.2f} s after the first birth")

        pin_this_thread(server_cores)
        result.server = measure_server_cost(monitor, args.calls, gc_pauses)
        pin_this_thread(client_cores)
        meters = Meters(CpuMeter(broker.thread, broker.pid, publisher.pid), live, gc_pauses)
        progress(f"refresh {median(result.server.refresh_ms):.1f} ms; steady state with no session")
        result.steady.append(measure_steady(meters, args.seconds, [], time.sleep))

        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        healthy = f"{agents}/{agents} healthy"
        session = open_session(browser, url, healthy)
        result.renders_s.append(session.render_s)
        progress(f"first render 1: {session.render_s:.2f} s")
        for number in range(2, args.renders + 1):
            session.page.context.close()
            result.session_gone_s.append(live.wait_none())
            progress(f"page closed; the server destroyed its session {result.session_gone_s[-1]:.1f} s later")
            session = open_session(browser, url, healthy)
            result.renders_s.append(session.render_s)
            progress(f"first render {number}: {session.render_s:.2f} s")
        result.sessions.append(session)
        page = session.page

        def wait(seconds: float) -> None:  # Playwright delivers the websocket events meanwhile
            page.wait_for_timeout(seconds * 1000)

        progress("steady state with 1 session")
        result.steady.append(measure_steady(meters, args.seconds, result.sessions, wait))
        progress("transitions")
        result.transitions = measure_transitions(publisher, page, agents, args.transitions, clock)
        now_healthy = f"{agents - args.transitions}/{agents} healthy"
        while len(result.sessions) < args.sessions:
            result.sessions.append(open_session(browser, url, now_healthy))
            progress(f"page {len(result.sessions)} rendered in {result.sessions[-1].render_s:.2f} s")
        progress(f"steady state with {len(result.sessions)} sessions")
        result.steady.append(measure_steady(meters, args.seconds, result.sessions, wait))
        result.rss_mib = psutil.Process().memory_info().rss / MIB

        result.publisher_done = publisher.stop()
        if result.publisher_done.get("error"):
            raise RuntimeError(f"publisher: {result.publisher_done['error']}")
        result.monitor_stats = monitor.stats()
        progress("shutting down")
        stop_api()  # before the browser goes: its pages' websockets would close under the server's writes
    return result


# -- the report ----------------------------------------------------------------------------------------


def summary(result: Run) -> dict[str, Any]:
    assert result.server is not None
    server = result.server
    idle, one, many = result.steady[0], result.steady[1], result.steady[-1]
    transitions = result.transitions
    per_session = (many.server_percent - idle.server_percent) / max(1, many.sessions)
    return {
        "agents": result.args.agents,
        "seconds": result.args.seconds,
        "broker": result.broker_kind,
        "heartbeat_interval_s": INTERVAL_S,
        "fleet_ready_s": rounded(result.fleet_ready_s),
        "first_render_s_median": rounded(median(result.renders_s)),
        "first_render_s": [round(value, 3) for value in result.renders_s],
        "closed_session_lingers_s": [round(value, 1) for value in result.session_gone_s],
        "later_render_s": [round(session.render_s, 3) for session in result.sessions[1:]],
        "refresh_ms_median": rounded(median(server.refresh_ms)),
        "refresh_ms_p95": rounded(p95(server.refresh_ms)),
        "list_agents_ms_median": rounded(median(server.list_agents_ms)),
        "list_agents_ms_p95": rounded(p95(server.list_agents_ms)),
        "fleet_frame_ms_median": rounded(median(server.fleet_frame_ms)),
        "fleet_frame_ms_p95": rounded(p95(server.fleet_frame_ms)),
        "availability_ms": rounded(median(server.availability_ms)),
        "gc_full_collections_while_timing": len(server.gc_pauses_ms),
        "gc_full_pause_ms_median": rounded(median(server.gc_pauses_ms), 1),
        "gc_full_pause_ms_max": rounded(max(server.gc_pauses_ms, default=math.nan), 1),
        "cpu_percent_idle": rounded(idle.server_percent, 1),
        "cpu_percent_1_session": rounded(one.server_percent, 1),
        f"cpu_percent_{many.sessions}_sessions": rounded(many.server_percent, 1),
        "sessions_max": many.sessions,
        "cpu_ms_per_session_refresh": rounded(per_session * 10.0 * REFRESH_MS / 1000, 1),
        "broker_cpu_percent": [rounded(steady.broker_percent, 1) for steady in result.steady],
        "browser_cpu_percent": [rounded(steady.browser_percent, 1) for steady in result.steady],
        "gc_full_collections_per_phase": [len(steady.gc_pauses_ms) for steady in result.steady],
        "other_processes_cpu_percent": [rounded(steady.others_percent, 1) for steady in result.steady],
        "cores_busy_percent": [[rounded(core, 1) for core in steady.cores_busy_percent] for steady in result.steady],
        "load_average_1min_at_start": round(result.load_at_start, 2),
        "ws_bytes_per_s_1_session": rounded(one.ws_bytes_per_s, 0),
        f"ws_bytes_per_s_{many.sessions}_sessions": rounded(many.ws_bytes_per_s, 0),
        "transition_to_browser_s": rounded(median(transitions.to_browser_s)),
        "transition_to_browser_s_max": rounded(max(transitions.to_browser_s, default=math.nan)),
        "transition_to_browser_s_all": [round(value, 3) for value in transitions.to_browser_s],
        "transition_to_monitor_s_median": rounded(median(transitions.to_monitor_s)),
        "pinned": {"server": sorted(result.cores.server), "client": sorted(result.cores.client)}
        if result.cores
        else None,
        "rss_mib": rounded(result.rss_mib, 0),
        "monitor_stats": result.monitor_stats,
        "machine": machine(),
    }


def format_report(result: Run, figures: dict[str, Any]) -> str:
    assert result.server is not None
    server = result.server
    host = figures["machine"]
    agents = result.args.agents
    cores = result.cores
    pinning = (
        f"server side on CPU {sorted(cores.server)}, browser + publisher + harness on CPU {sorted(cores.client)}"
        if cores
        else "not pinned"
    )

    def timing(label: str, samples: list[float], note: str = "") -> str:
        return f"  {label:38}{median(samples):>10.2f}{p95(samples):>10.2f}   {note}".rstrip()

    lines = [
        f"fleetpulse dashboard with {agents:,} agents (a heartbeat each every {INTERVAL_S:g} s: "
        f"{agents / INTERVAL_S:,.1f} msg/s); broker: {result.broker_kind}",
        f"machine: {host['cpu_count']} cores, {host['cpu_model']}; Python {host['python']}, Panel {host['panel']}; "
        f"{host['platform']}",
        f"pinning: {pinning}; 1-minute load average at the start: {result.load_at_start:.2f}",
        f"fleet ready: the monitor listed {agents:,} healthy agents {result.fleet_ready_s:.2f} s after the first birth",
        "",
        f"server cost of one fleet-table refresh (no browser open; {result.args.calls} calls each)",
        f"  {'':38}{'median ms':>10}{'p95 ms':>10}",
        timing("monitor.list_agents()", server.list_agents_ms),
        timing("fleet_frame(records, now, uptime)", server.fleet_frame_ms, f"({server.rows:,} rows)"),
        timing("refresh: list + headline + frame", server.refresh_ms),
        timing("history.availability(24 h)", server.availability_ms, f"({AVAILABILITY_CALLS} calls; cached 15 s)"),
        f"  full garbage collections meanwhile: {len(server.gc_pauses_ms)}"
        + (
            f", {median(server.gc_pauses_ms):.0f} ms median, {max(server.gc_pauses_ms):.0f} ms max "
            "(each one stops every thread)"
            if server.gc_pauses_ms
            else ""
        ),
        "",
        "first render in headless Chromium (page.goto -> headline visible), fresh page, no other session alive",
        f"  {', '.join(f'{value:.2f} s' for value in result.renders_s)}   median {median(result.renders_s):.2f} s",
    ]
    if result.session_gone_s:
        lines.append(
            "  a closed page's session kept running on the server for "
            + ", ".join(f"{value:.1f} s" for value in result.session_gone_s)
        )
    if result.sessions[1:]:
        lines.append(
            "  later pages, opened while 1, 2 ... pages were open (they share the browser's cores): "
            + ", ".join(f"{session.render_s:.2f} s" for session in result.sessions[1:])
        )
    lines += [
        "",
        f"steady state, {result.args.seconds:g} s per row; CPU in % of one core ('server' = this process minus its",
        "Playwright main thread and the broker thread: monitor, MQTT client, DuckDB, Panel/Bokeh)",
        f"  {'sessions':>8}{'server %':>10}{'broker %':>10}{'browser %':>11}{'publisher %':>13}{'harness %':>11}"
        f"{'ws B/s':>11}{'live':>6}{'full GCs':>10}{'max ms':>8}{'others %':>10}   cores busy %",
    ]
    for steady in result.steady:
        lines.append(
            f"  {steady.sessions:>8}{steady.server_percent:>10.1f}{steady.broker_percent:>10.1f}"
            f"{steady.browser_percent:>11.1f}{steady.publisher_percent:>13.1f}{steady.harness_percent:>11.1f}"
            f"{steady.ws_bytes_per_s:>11,.0f}{steady.live_sessions:>6}{len(steady.gc_pauses_ms):>10}"
            f"{max(steady.gc_pauses_ms, default=0.0):>8.0f}{steady.others_percent:>10.1f}   "
            + " ".join(f"{core:.0f}" for core in steady.cores_busy_percent)
        )
    lines += [
        f"  each open session costs the server ~{figures['cpu_ms_per_session_refresh']} ms of CPU per "
        f"{REFRESH_MS} ms refresh ('live': Bokeh sessions the server had; 'full GCs': generation-2 collections;",
        "  'others': CPU used by processes outside this run, which disturbs every figure)",
        "",
        f"transitions with one page open (will published -> the page shows the new headline; it polls every "
        f"{REFRESH_MS / 1000:g} s)",
    ]
    transitions = result.transitions
    for number, (monitor_s, browser_s) in enumerate(
        zip(transitions.to_monitor_s, transitions.to_browser_s, strict=True), start=1
    ):
        lines.append(
            f"  {agents - number}/{agents} healthy: monitor committed it after {monitor_s:.3f} s, "
            f"the page showed it after {browser_s:.3f} s"
        )
    lines += [
        f"  median {figures['transition_to_browser_s']} s, max {figures['transition_to_browser_s_max']} s",
        "",
        f"this process's RSS at the end: {result.rss_mib:,.0f} MiB; the publisher published "
        f"{result.publisher_done['published']:,} messages, {result.publisher_done['acked']:,} acknowledged",
        f"monitor.stats(): {json.dumps(result.monitor_stats, sort_keys=True)}",
    ]
    disturbed = [steady.sessions for steady in result.steady if steady.others_percent > DISTURBED_PERCENT]
    if disturbed or result.load_at_start > 1.0:
        lines.append(
            f"WARNING: other processes were busy (load {result.load_at_start:.2f} at the start; more than "
            f"{DISTURBED_PERCENT:g} % of a core in the phases with {disturbed} sessions): run again on a quiet machine"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboard",
        description="Is the dashboard responsive with a large fleet? Refresh cost, first render, CPU, latency.",
    )
    parser.add_argument("--agents", type=int, default=2000, help="agents in the fleet (default 2000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="each steady-state phase (default 20)")
    parser.add_argument("--renders", type=int, default=3, help="first renders, each on a fresh page (default 3)")
    parser.add_argument("--sessions", type=int, default=5, help="pages open in the last phase (default 5)")
    parser.add_argument("--transitions", type=int, default=3, help="wills timed to the page (default 3)")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per server-side figure (default 100)")
    parser.add_argument("--connections", type=int, default=4, help="the publisher's MQTT connections (default 4)")
    parser.add_argument("--broker", choices=("amqtt", "mosquitto"), default="amqtt", help="default: amqtt, embedded")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU pinning (see the docstring)")
    parser.add_argument("--chromium", help="Chromium executable (default: `chromium` on PATH)")
    args = parser.parse_args(argv)
    if not (args.agents > args.transitions >= 1 and args.seconds > 0 and args.renders >= 1 and args.calls >= 1):
        parser.error("need --agents > --transitions >= 1, --seconds > 0, --renders >= 1 and --calls >= 1")
    if args.sessions < 2:
        parser.error("need --sessions >= 2")
    chromium = args.chromium or shutil.which("chromium")
    if chromium is None:
        parser.error("Chromium not found (Debian: apt-get install -y chromium); name it with --chromium PATH")
    result = run(args, chromium)
    figures = summary(result)
    print(format_report(result, figures))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
