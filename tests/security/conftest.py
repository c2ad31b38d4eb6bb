"""The end-to-end fixtures (monitors on real brokers) for the security tests too."""

from tests.e2e.conftest import monitor_factory

__all__ = ["monitor_factory"]
