"""One side of the SDK-overhead comparison: a 100 Hz work loop, bare (`baseline`) or with a started Agent.

Run by `benchmarks.sdk_overhead` as `python -m benchmarks._overhead_child MODE SECONDS BROKER_URL` (the
baseline ignores the URL). It prints one JSON line when set-up is done (`ready`) and one when the measured
loop ends (`done`), each with its own CPU time, then waits for a line on stdin so the parent can sample its
RSS while it is still alive. The baseline imports only the standard library, never `publisher` or paho.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

TICK_S = 0.010  # one simulated unit of work every 10 ms, as an agent waiting on I/O
AGENT_ID = "bench-agent"

ReportWork = Callable[[float], None]


def _emit(event: str, **fields: float | int | str) -> None:
    line = {
        "event": event,
        "cpu_s": time.process_time(),  # all threads of this process: paho's and the heartbeat's too
        "wall_s": time.perf_counter(),
        **fields,
    }
    print(json.dumps(line), flush=True)


def _work_loop(seconds: float, report: ReportWork) -> int:
    """Sleep to the next 10 ms tick (the "work"), then report it; fixed-rate, so both sides tick alike."""
    iterations = 0
    next_tick = time.perf_counter()
    end = next_tick + seconds
    while True:
        started = time.perf_counter()
        if started >= end:
            return iterations
        next_tick += TICK_S
        time.sleep(max(0.0, next_tick - started))
        report((time.perf_counter() - started) * 1000.0)
        iterations += 1


def _ignore(latency_ms: float) -> None:
    """The baseline's report: a plain call, so the loops differ only in what the SDK does."""


def measured_run(seconds: float, report: ReportWork) -> None:
    """`ready`, the timed loop, `done`; then stay alive until the parent has sampled this process."""
    _emit("ready")
    iterations = _work_loop(seconds, report)
    _emit("done", iterations=iterations)
    sys.stdin.readline()


def run_baseline(seconds: float) -> None:
    measured_run(seconds, _ignore)


def run_fleetpulse(seconds: float, broker_url: str) -> None:
    from fleetpulse.publisher import Agent  # imported here so the baseline never pays for it

    agent = Agent(AGENT_ID, broker=broker_url, interval_s=1, keepalive_s=10)
    if not agent.start(wait_s=10):
        raise SystemExit(f"agent could not connect to {broker_url}")

    def report(latency_ms: float) -> None:
        agent.report_metric(
            success=True, latency_ms=latency_ms, cost_usd=0.001, tokens_in=100, tokens_out=20, model="m"
        )

    try:
        measured_run(seconds, report)
    finally:
        agent.stop("benchmark finished")


def main(argv: list[str]) -> None:
    mode, seconds = argv[0], float(argv[1])
    if mode == "baseline":
        run_baseline(seconds)
    elif mode == "fleetpulse":
        run_fleetpulse(seconds, argv[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}: baseline or fleetpulse")


if __name__ == "__main__":
    main(sys.argv[1:])
