"""Simulated agents for demos and tests: real `publisher.Agent`s doing fake, metered work."""

from __future__ import annotations

import logging
import random
import threading

from fleetpulse.publisher import Agent, ControlCommand

__all__ = ["DemoAgent", "run_demo"]

_log = logging.getLogger(__name__)

_MODELS = ("gpt-4o-mini", "claude-haiku", "llama-3-8b")


class DemoAgent:
    """One simulated agent: a work loop of short tasks with latency, cost and tokens, honouring pause and kill."""

    def __init__(
        self,
        agent_id: str,
        broker: str,
        interval_s: float,
        keepalive_s: int,
        failure_ratio: float = 0.02,
        depends_on: list[str] | None = None,
        seed: int | None = None,
    ) -> None:
        self._random = random.Random(seed)
        self._failure_ratio = failure_ratio
        self._done = threading.Event()
        self.agent = Agent(
            agent_id,
            broker=broker,
            interval_s=interval_s,
            keepalive_s=keepalive_s,
            display_name=agent_id.replace("-", " ").title(),
            depends_on=depends_on or [],
            labels={"team": "demo"},
            version="demo",
            on_kill=self._on_kill,
        )
        self._thread = threading.Thread(target=self._work, name=f"demo-{agent_id}", daemon=True)

    def _on_kill(self, command: ControlCommand) -> None:
        _log.warning("%s: killed by %s (%s)", self.agent.agent_id, command.issued_by, command.reason)
        self._done.set()

    def start(self) -> None:
        self.agent.start(wait_s=10)
        self._thread.start()

    def _work(self) -> None:
        while not self._done.is_set():
            if not self.agent.wait_if_paused(timeout_s=0.5):
                continue
            latency_ms = self._random.lognormvariate(5.0, 0.5)  # ~150 ms median
            if self._done.wait(latency_ms / 1000.0):
                return
            model = self._random.choice(_MODELS)
            tokens_in = self._random.randint(200, 2000)
            tokens_out = self._random.randint(50, 500)
            self.agent.report_metric(
                success=self._random.random() >= self._failure_ratio,
                latency_ms=latency_ms,
                cost_usd=(tokens_in * 0.15 + tokens_out * 0.6) / 1_000_000,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                model=model,
            )

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def stop(self) -> None:
        self._done.set()
        self.agent.stop("demo shut down")


def run_demo(agents: list[DemoAgent], stop: threading.Event) -> None:
    """Run `agents` until `stop` is set or every one of them was killed."""
    for demo in agents:
        demo.start()
    while not stop.wait(0.5):
        if all(demo.finished for demo in agents):
            return
    for demo in agents:
        demo.stop()
