"""The ACL rules of broker/acl.py as a table: what an agent, an agent in a group and a monitor may do."""

from __future__ import annotations

import pytest

from fleetpulse.broker.acl import may_publish, may_receive, may_subscribe
from fleetpulse.broker.credentials import Role, User

AGENT = User("a1")
GROUPED = User("a1", group="workers")
MONITOR = User("ops", Role.MONITOR)


@pytest.mark.parametrize(
    ("user", "topic", "allowed"),
    [
        (AGENT, "agents/a1/health", True),
        (AGENT, "agents/a2/health", False),
        (AGENT, "agents/a1/control", False),
        (AGENT, "groups/workers/control", False),
        (AGENT, "agents/a1/health/x", False),
        (AGENT, "agents/a1", False),
        (AGENT, "fleetpulse/monitor/default/status", False),
        (MONITOR, "agents/a1/control", True),
        (MONITOR, "groups/workers/control", True),
        (MONITOR, "fleetpulse/monitor/default/status", True),
        (MONITOR, "fleetpulse/monitor/default/probe", True),
        (MONITOR, "agents/a1/health", False),
        (MONITOR, "agents/ops/health", True),  # the %u pattern holds for every user, as on Mosquitto
    ],
)
def test_publish(user: User, topic: str, allowed: bool) -> None:
    assert may_publish(user, topic) is allowed


@pytest.mark.parametrize(
    ("user", "topic_filter", "allowed"),
    [
        (AGENT, "agents/a1/control", True),
        (AGENT, "agents/a2/control", False),
        (AGENT, "agents/+/control", False),
        (AGENT, "agents/#", False),
        (AGENT, "#", False),
        (AGENT, "+/a1/control", False),
        (AGENT, "agents/a1/#", False),
        (AGENT, "groups/workers/control", False),
        (GROUPED, "groups/workers/control", True),
        (GROUPED, "groups/+/control", False),
        (GROUPED, "groups/others/control", False),
        (MONITOR, "#", True),
        (MONITOR, "agents/+/health", True),
        (MONITOR, "$SYS/#", False),  # `#` does not reach $-topics (MQTT 3.1.1 §4.7.2)
    ],
)
def test_subscribe(user: User, topic_filter: str, allowed: bool) -> None:
    assert may_subscribe(user, topic_filter) is allowed


@pytest.mark.parametrize(
    ("user", "topic", "allowed"),
    [
        (AGENT, "agents/a1/control", True),
        (AGENT, "agents/a2/control", False),
        (AGENT, "agents/a1/health", False),
        (GROUPED, "groups/workers/control", True),
        (GROUPED, "groups/others/control", False),
        (MONITOR, "agents/a2/health", True),
        (MONITOR, "anything/at/all", True),
        (MONITOR, "$SYS/broker/uptime", False),
    ],
)
def test_receive(user: User, topic: str, allowed: bool) -> None:
    assert may_receive(user, topic) is allowed
