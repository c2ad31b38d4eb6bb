"""Who may publish and read which topics: one rule table, enforced by the embedded broker, rendered for Mosquitto.

The rules (SPEC §2 topics), for a user named `%u`:

* everyone (Mosquitto `pattern` lines apply to every user): write `agents/%u/health`, read `agents/%u/control`;
* an agent with a group: also read `groups/<group>/control`;
* a monitor: read `#`, write `agents/+/control`, `groups/+/control` and `fleetpulse/monitor/#` (its presence
  and the probe it sends itself).

So an agent's user name is its agent id, and its credentials cannot speak for any other agent.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetpulse.broker.credentials import Role, User

__all__ = ["may_publish", "may_receive", "may_subscribe", "mosquitto_acl"]

# (access, topic filter); `%u` is the user name, as in Mosquitto's `pattern` lines.
_EVERY_USER = (("write", "agents/%u/health"), ("read", "agents/%u/control"))
_MONITOR = (
    ("read", "#"),
    ("write", "agents/+/control"),
    ("write", "groups/+/control"),
    ("write", "fleetpulse/monitor/#"),
)
_GROUP_CONTROL = "groups/{group}/control"


def _filters(user: User, access: str) -> list[str]:
    grants = [*_EVERY_USER, *(_MONITOR if user.role is Role.MONITOR else ())]
    filters = [topic.replace("%u", user.name) for granted, topic in grants if granted == access]
    if access == "read" and user.group is not None:
        filters.append(_GROUP_CONTROL.format(group=user.group))
    return filters


def _matches(topic: str, topic_filter: str) -> bool:
    """MQTT 3.1.1 §4.7 matching of a topic name against a filter."""
    if topic.startswith("$") and topic_filter.startswith(("+", "#")):
        return False
    levels, filter_levels = topic.split("/"), topic_filter.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(levels) or level not in ("+", levels[index]):
            return False
    return len(levels) == len(filter_levels)


def _covers(granted: str, requested: str) -> bool:
    """True when every topic `requested` (a filter, wildcards allowed) can match is matched by `granted`."""
    if requested.startswith("$") and granted.startswith(("+", "#")):
        return False
    granted_levels, requested_levels = granted.split("/"), requested.split("/")
    for index, level in enumerate(granted_levels):
        if level == "#":
            return True
        if index >= len(requested_levels):
            return False
        wanted = requested_levels[index]
        if wanted == "#" or (level != "+" and level != wanted) or (wanted == "+" and level != "+"):
            return False
    return len(granted_levels) == len(requested_levels)


def may_publish(user: User, topic: str) -> bool:
    return any(_matches(topic, allowed) for allowed in _filters(user, "write"))


def may_receive(user: User, topic: str) -> bool:
    return any(_matches(topic, allowed) for allowed in _filters(user, "read"))


def may_subscribe(user: User, topic_filter: str) -> bool:
    """Only filters the user may read all of: `agents/#` is refused to an agent, not silently narrowed.

    (Mosquitto 2.0 grants such a subscription and then delivers only what the user may read.)
    """
    return any(_covers(allowed, topic_filter) for allowed in _filters(user, "read"))


def mosquitto_acl(users: Iterable[User]) -> str:
    """The same rules as a Mosquitto `acl_file`."""
    lines = [
        "# Written by `fleetpulse broker mosquitto-config` from broker/acl.py; regenerate rather than edit.",
        "# Every user (its name is its agent id): its own health topic out, its own control topic in.",
        *(f"pattern {access} {topic}" for access, topic in _EVERY_USER),
    ]
    for user in users:
        extra = [f"topic {access} {topic}" for access, topic in _MONITOR] if user.role is Role.MONITOR else []
        if user.group is not None:
            extra.append(f"topic read {_GROUP_CONTROL.format(group=user.group)}")
        if extra:
            lines += ["", f"# {user.role}" + (f" in group {user.group}" if user.group else ""), f"user {user.name}"]
            lines += extra
    return "\n".join(lines) + "\n"
