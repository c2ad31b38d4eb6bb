"""What every listening part shares: free ports, one-line "port taken" errors, an event loop on its own thread."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fleetpulse.publisher.errors import FleetpulseError

__all__ = ["LoopThread", "PortInUseError", "ensure_port_free", "free_port", "wait_for_port"]

T = TypeVar("T")


class PortInUseError(FleetpulseError, OSError):
    """A port is taken; the message names the port and the fix."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for port 0 requests and tests)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def ensure_port_free(host: str, port: int, in_use_message: str) -> None:
    """Raise PortInUseError(`in_use_message`) if `host:port` is taken, so the operator gets one clear line.

    The servers behind it (amqtt, bokeh) report a taken port as a traceback or a generic error.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(errno.EADDRINUSE, in_use_message) from None
            raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from None


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on `host:port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


class LoopThread:
    """An asyncio event loop running on its own daemon thread, for servers embedded in a synchronous program."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, setup: Callable[[asyncio.AbstractEventLoop], T]) -> T:
        """Run `setup(loop)` on the new thread, then keep the loop running; its result, or its exception here."""
        started = threading.Event()
        outcome: list[Any] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                outcome.append(setup(loop))
            except BaseException as error:
                outcome.append(error)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        started.wait()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        result: T = outcome[0]
        return result

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run `coroutine` on the loop and wait for its result."""
        assert self._loop is not None, "not started"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout_s)

    def stop(self, before: Callable[[], object] | None = None) -> None:
        """Call `before` on the loop (e.g. a server's stop), stop the loop and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if before is not None:
            loop.call_soon_threadsafe(before)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is this machine's loopback interface."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
