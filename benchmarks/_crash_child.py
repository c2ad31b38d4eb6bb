"""An agent to be SIGKILLed by `benchmarks.detection`: `python -m benchmarks._crash_child URL ID`.

A plain SDK agent (1 s heartbeats, 5 s keep-alive) that prints `born SESSION` once its birth is
acknowledged by the broker and then only heartbeats until it is killed.
"""

from __future__ import annotations

import sys
import time

from fleetpulse.publisher import Agent

INTERVAL_S = 1.0
KEEPALIVE_S = 5


def main(argv: list[str]) -> None:
    url, agent_id = argv
    agent = Agent(agent_id, broker=url, interval_s=INTERVAL_S, keepalive_s=KEEPALIVE_S)
    if not agent.start(wait_s=10):
        raise SystemExit(f"agent {agent_id} could not connect to {url}")
    print(f"born {agent.session}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1:])
