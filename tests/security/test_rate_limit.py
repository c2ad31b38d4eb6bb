"""The monitor's per-agent token buckets: burst, sustained rate, isolation, and memory bounded by recent agents."""

from __future__ import annotations

import pytest

from fleetpulse.monitor.service import _PerAgentRateLimit


def test_a_burst_then_the_sustained_rate() -> None:
    limit = _PerAgentRateLimit(rate_per_s=10, burst=5)
    assert [limit.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limit.allow("a", 0.1)  # one token back after 1/rate
    assert not limit.allow("a", 0.1)
    # Refilled to the burst by t=1, then 10/s for the 0.99 s of these calls.
    assert sum(limit.allow("a", 1.0 + i / 100) for i in range(100)) == pytest.approx(5 + 10, abs=1)


def test_one_agents_flood_does_not_spend_anothers_budget() -> None:
    limit = _PerAgentRateLimit(rate_per_s=1, burst=3)
    assert sum(limit.allow("flooder", 0.0) for _ in range(1000)) == 3
    assert [limit.allow("quiet", 0.0) for _ in range(3)] == [True] * 3


def test_refilled_buckets_are_forgotten_and_made_up_ids_cannot_grow_memory() -> None:
    limit = _PerAgentRateLimit(rate_per_s=10, burst=10, max_agents=1000)
    for n in range(100):
        limit.allow(f"agent-{n}", 0.0)
    assert len(limit) == 100
    for step in range(100):  # one active agent, 2 s later: every idle bucket is full again
        limit.allow("active", 2.0 + step / 1000)
    assert len(limit) == 1
    for n in range(50_000):  # a stream of new ids, all at once: nothing refills, the cap holds
        limit.allow(f"made-up-{n}", 10.0)
    assert len(limit) == 1000


@pytest.mark.parametrize("agents", [10, 10_000])
def test_a_message_costs_the_same_with_many_agents(agents: int) -> None:
    # O(1): the work per call does not grow with the number of buckets (checked by counting, not timing).
    limit = _PerAgentRateLimit(rate_per_s=1, burst=1)
    for n in range(agents):
        limit.allow(f"agent-{n}", 0.0)
    forgotten_before = len(limit)
    limit.allow("agent-0", 100.0)
    assert forgotten_before - len(limit) <= 2  # at most two idle buckets are looked at and forgotten per call
