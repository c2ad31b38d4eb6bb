"""The one exception family: every error fleetpulse raises on purpose is a `FleetpulseError`.

It lives with the agent SDK because `publisher` depends on nothing of ours while `monitor` and `broker` may
import from it. Each error also keeps the built-in base it had (ValueError, ConnectionError, OSError...),
so `except ValueError` around an older call still works.
"""

from __future__ import annotations

__all__ = ["FleetpulseError"]


class FleetpulseError(Exception):
    """Base of every error fleetpulse raises on purpose."""
