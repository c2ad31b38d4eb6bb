"""The metrics window: work reported between two heartbeats, aggregated cheaply and thread-safely."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetpulse.publisher.wire import format_timestamp

# Latency percentiles are exact up to this many samples per window and estimated from a uniform
# reservoir sample above it, so memory stays bounded however hot the agent's loop is.
RESERVOIR_SIZE = 4096
# Distinct models per window; more are summed under OTHER_MODEL so a heartbeat stays far below the
# protocol's 16 KiB limit (the monitor would reject a bigger one, and the agent would look dead).
MAX_MODELS = 32
OTHER_MODEL = "(other)"
MAX_MODEL_NAME = 128


@dataclass
class _Window:
    ok: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    latency_count: int = 0
    latency_ms_max: float | None = None
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    by_model: dict[str, list[float]] = field(default_factory=dict)  # model -> [cost_usd, tokens_in, tokens_out]


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class MetricsWindow:
    """Accumulates `record()` calls until `drain()` hands the window to the next heartbeat."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._window = _Window()
        self._random = random.Random(seed)
        self.last_progress_s: float | None = None  # epoch seconds; a float keeps record() cheap

    def record(
        self,
        success: bool,
        latency_ms: float | None,
        cost_usd: float,
        tokens_in: int,
        tokens_out: int,
        model: str | None,
        now_s: float,
    ) -> None:
        with self._lock:
            window = self._window
            if success:
                window.ok += 1
            else:
                window.failed += 1
            if latency_ms is not None:
                window.latency_count += 1
                if window.latency_ms_max is None or latency_ms > window.latency_ms_max:
                    window.latency_ms_max = latency_ms
                if len(window.latencies_ms) < RESERVOIR_SIZE:
                    window.latencies_ms.append(latency_ms)
                else:
                    slot = int(self._random.random() * window.latency_count)
                    if slot < RESERVOIR_SIZE:
                        window.latencies_ms[slot] = latency_ms
            if cost_usd:
                window.cost_usd += cost_usd
            window.tokens_in += tokens_in
            window.tokens_out += tokens_out
            if model is not None:
                usage = window.by_model.get(model)
                if usage is None:
                    if len(window.by_model) >= MAX_MODELS:
                        model = OTHER_MODEL
                    usage = window.by_model.setdefault(model[:MAX_MODEL_NAME], [0.0, 0, 0])
                usage[0] += cost_usd
                usage[1] += tokens_in
                usage[2] += tokens_out
            self.last_progress_s = now_s

    def mark_progress(self, now_s: float) -> None:
        self.last_progress_s = now_s

    def drain(self) -> dict[str, Any]:
        """Return the window as the protocol's `metrics` object and start a new, empty one."""
        with self._lock:
            window, self._window = self._window, _Window()
            last_progress_s = self.last_progress_s
        metrics: dict[str, Any] = {
            "ok": window.ok,
            "failed": window.failed,
            "cost_usd": round(window.cost_usd, 9),
            "tokens_in": window.tokens_in,
            "tokens_out": window.tokens_out,
            "by_model": {
                model: {"cost_usd": round(usage[0], 9), "tokens_in": int(usage[1]), "tokens_out": int(usage[2])}
                for model, usage in window.by_model.items()
            },
        }
        if window.latencies_ms:
            ordered = sorted(window.latencies_ms)
            metrics["latency_ms_p50"] = _percentile(ordered, 0.50)
            metrics["latency_ms_p95"] = _percentile(ordered, 0.95)
            metrics["latency_ms_max"] = window.latency_ms_max
        if last_progress_s is not None:
            metrics["last_progress_at"] = format_timestamp(datetime.fromtimestamp(last_progress_s, UTC))
        return metrics

    def restore(self, metrics: dict[str, Any]) -> None:
        """Put a drained window back (its heartbeat could not be sent), so no reported work is lost.

        Counts, cost and tokens are restored exactly; latency percentiles only cover what is sent.
        """
        with self._lock:
            window = self._window
            window.ok += metrics["ok"]
            window.failed += metrics["failed"]
            window.cost_usd += metrics["cost_usd"]
            window.tokens_in += metrics["tokens_in"]
            window.tokens_out += metrics["tokens_out"]
            for model, usage in metrics["by_model"].items():
                slot = window.by_model.setdefault(model, [0.0, 0, 0])
                slot[0] += usage["cost_usd"]
                slot[1] += usage["tokens_in"]
                slot[2] += usage["tokens_out"]
            lost_max = metrics.get("latency_ms_max")
            if lost_max is not None and (window.latency_ms_max is None or lost_max > window.latency_ms_max):
                window.latency_ms_max = lost_max
