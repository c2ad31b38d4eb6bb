"""Hostile input, fuzzed (benchmarks/fuzz.py's strategies): the parser first, then a running monitor for ~8 s."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import CATEGORY_COUNT, Hostile, hostile_messages, main
from fleetpulse.publisher.protocol import HealthMessage, ProtocolError, parse_health


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_messages())
def test_the_parser_refuses_what_it_must_and_raises_nothing_but_protocol_errors(message: Hostile) -> None:
    try:
        parsed: HealthMessage = parse_health(message.topic, message.payload)
    except ProtocolError as error:
        assert error.reason  # a reason a human can read, for the `rejected` table
        return
    assert not message.must_reject, f"accepted a {message.category} message"
    assert message.topic == f"agents/{parsed.agent}/health"
    assert _finite(parsed.model_dump())
    assert parse_health(message.topic, parsed.to_payload()) == parsed  # what is stored can be parsed again


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.binary(max_size=300))
def test_any_topic_and_bytes_give_a_protocol_error_at_worst(agent: str, payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_health(f"agents/{agent}/health", payload)


@pytest.mark.timeout(90)
def test_a_monitor_fuzzed_for_8_s_keeps_count_and_keeps_what_it_stored(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--seconds", "8", "--seed", "7"])
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["problems"] == [], "\n".join(lines[:-1])
    assert status == 0
    assert len(figures["by_category"]) >= CATEGORY_COUNT  # every kind of hostile message was sent
    assert figures["sent"] >= 500
    assert figures["rejected"] == figures["parser_rejected"] > 0.5 * figures["sent"]
    assert figures["stale_will"] >= figures["by_category"]["will of another session"]
