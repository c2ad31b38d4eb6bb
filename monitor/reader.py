"""The monitor's MQTT edge in a process of its own: the same `Subscriber`, its events sent back in batches.

In one process paho's socket reading and the core's judging share one GIL, and the reader alone costs
about as much per heartbeat as the core (benchmarks/ingest.py). In a child process the reader uses the
other core; the core receives lists of events through a pipe, a few milliseconds' worth at a time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fleetpulse.monitor.subscriber import BrokerLost, Event, Received, Subscriber
from fleetpulse.publisher.mqtt import BrokerUrl

__all__ = ["ReaderProcess"]

_log = logging.getLogger(__name__)

BATCH_EVERY_S = 0.002  # how long the child gathers events before sending them (or BATCH_MAX)
BATCH_MAX = 2_000
RESTART_AFTER_S = 1.0  # a reader process that died is started again after this long
# Backpressure: at most this many lists wait in the core's queue, and this many events in the child.
# Beyond, the child stops reading its socket and the broker keeps the rest in the monitor's persistent
# session (where a monitor that dies loses none of it), instead of the monitor's memory growing with it.
MAX_QUEUED_LISTS = 4  # of up to HAND_OVER_EVENTS each
HAND_OVER_EVENTS = 5_000
GATHER_WAIT_S = 0.002
MAX_PENDING_EVENTS = 20_000
_STOPPED = "stopped"  # the child's last word: everything it received was sent before it


class ReaderProcess:
    """A `Subscriber` in a child process, with the face the monitor uses: start, stop, publish, probe.

    A reader that dies is started again (same MQTT client id: the broker kept its session and queue),
    after a `BrokerLost` so the monitor judges no one meanwhile.
    """

    def __init__(
        self,
        url: BrokerUrl,
        monitor_id: str,
        events: queue.SimpleQueue[Any],
        presence: dict[str, Any] | None = None,
    ) -> None:
        self._url = url
        self._monitor_id = monitor_id
        self._events = events
        self._presence = presence
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        # Written by the child, read by the core: when the broker last delivered anything (time.monotonic() is
        # the same clock in every process here), and how many stale own wills were ignored.
        self._last_delivery_at = self._context.Value("d", time.monotonic(), lock=False)
        self._stale_own_wills = self._context.Value("q", 0, lock=False)
        self._held_back_at = self._context.Value("d", 0.0, lock=False)  # the child last waited for the core
        self._stopping = False
        self._commands: multiprocessing.connection.Connection | None = None
        self._process: Any = None
        self._send_lock = threading.Lock()
        self._pump = threading.Thread(target=self._pump_events, name="fleetpulse-reader-pump", daemon=True)
        self.restarts = 0

    @property
    def last_delivery_at(self) -> float:
        return float(self._last_delivery_at.value)

    @property
    def stale_own_wills(self) -> int:
        return int(self._stale_own_wills.value)

    @property
    def held_back_at(self) -> float:
        """time.monotonic() when the child last stopped reading because the core was behind."""
        return float(self._held_back_at.value)

    def start(self) -> None:
        self._incoming = self._spawn()
        self._pump.start()

    def stop(self) -> None:
        """Stop the child's subscriber (presence `offline`, clean disconnect); return once its events are queued."""
        self._stopping = True
        self._command(("stop",))
        self._pump.join(timeout=60)
        if self._process is not None:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._command(("publish", topic, payload, retain))

    def send_probe(self) -> None:
        self._command(("probe",))

    def _command(self, command: tuple[Any, ...]) -> None:
        with self._send_lock:
            if self._commands is None:
                return
            with contextlib.suppress(OSError):  # the child is gone: the pump notices and starts another
                self._commands.send(command)

    def _spawn(self) -> multiprocessing.connection.Connection:
        incoming, child_events = self._context.Pipe(duplex=False)
        child_commands, commands = self._context.Pipe(duplex=False)
        self._process = self._context.Process(
            target=_child_main,
            args=(
                self._url,
                self._monitor_id,
                self._presence,
                child_events,
                child_commands,
                self._last_delivery_at,
                self._stale_own_wills,
                self._held_back_at,
                _log_setup(),
            ),
            name=f"fleetpulse-reader-{self._monitor_id}",
            daemon=True,
        )
        self._process.start()
        child_events.close()
        child_commands.close()
        with self._send_lock:
            self._commands = commands
            if self._stopping:  # stop() came while this child was starting: its command went to the old pipe
                commands.send(("stop",))
        return incoming

    def _pump_events(self) -> None:
        """Child -> core. While the core is busy, lists are gathered into bigger ones (per-list costs stay
        small); while it is behind, nothing more is read, so the pipe fills and the child holds back."""
        incoming = self._incoming
        gathered: list[Event] = []
        while True:
            # With something gathered, wait for more only briefly: hand it over when the child is quiet.
            if gathered and not incoming.poll(GATHER_WAIT_S):
                self._hand_over(gathered)
                gathered = []
                continue
            try:
                batch = incoming.recv()
            except (EOFError, OSError):
                if gathered:
                    self._hand_over(gathered)
                    gathered = []
                if self._stopping or not self._restart():
                    return
                incoming = self._incoming
                continue
            if batch == _STOPPED:
                if gathered:
                    self._hand_over(gathered)
                return
            for item in batch:
                if type(item) is tuple:
                    topic, payload, retained, received_at = item
                    gathered.append(Received(topic, payload, retained, datetime.fromtimestamp(received_at, UTC)))
                else:
                    gathered.append(item)
            if self._events.empty() or len(gathered) >= HAND_OVER_EVENTS:
                self._hand_over(gathered)
                gathered = []

    def _hand_over(self, events: list[Event]) -> None:
        while self._events.qsize() >= MAX_QUEUED_LISTS and not self._stopping:
            time.sleep(0.002)  # the core is behind: let the pipe fill, the child then holds back
        self._events.put(events)

    def _restart(self) -> bool:
        """Start another reader after one died; False if the monitor began stopping meanwhile."""
        self._process.join(timeout=5)  # (reaped, not left a zombie)
        code = self._process.exitcode
        _log.error("monitor: the MQTT reader process ended (exit code %s); starting another", code)
        self._events.put(BrokerLost(datetime.now(UTC), f"the MQTT reader process ended (exit code {code})"))
        self.restarts += 1
        time.sleep(RESTART_AFTER_S)
        if self._stopping:
            return False
        self._incoming = self._spawn()
        return True


def _log_setup() -> tuple[int, str | None, str | None]:
    """The parent's level for our loggers and its log format, for the child to log as the parent does."""
    formatter = next((handler.formatter for handler in logging.getLogger().handlers if handler.formatter), None)
    log_format = formatter._fmt if formatter is not None else None
    date_format = formatter.datefmt if formatter is not None else None
    return _log.getEffectiveLevel(), log_format, date_format


class _Batcher:
    """What the child's `Subscriber` puts events into: gathered here, sent to the core in lists."""

    def __init__(self, connection: multiprocessing.connection.Connection, on_hold: Callable[[], None]) -> None:
        self._connection = connection
        self._pending: collections.deque[Any] = collections.deque()
        self._on_hold = on_hold
        self.ready = threading.Event()  # set when something waits: an idle reader sleeps, not polls

    def put(self, event: Event) -> None:
        """Called on paho's thread; blocks it (so it stops reading the socket) while too much waits."""
        if type(event) is Received:
            # A tuple and a float pickle in a fraction of a frozen dataclass with a datetime.
            event = (event.topic, event.payload, event.retained, event.received_at.timestamp())  # type: ignore[assignment]
        while len(self._pending) >= MAX_PENDING_EVENTS:
            self._on_hold()
            time.sleep(0.005)
        self._pending.append(event)
        if not self.ready.is_set():
            self.ready.set()

    def send_pending(self) -> None:
        pending = self._pending
        count = len(pending)  # (what arrives meanwhile goes with the next call)
        while count:
            size = min(count, BATCH_MAX)
            self._connection.send([pending.popleft() for _ in range(size)])
            count -= size


class _SharedSubscriber(Subscriber):
    """Records each delivery straight into the value the core reads, from paho's thread.

    Not from the main loop: that blocks sending while a busy core lets the pipe fill, and a broker
    that delivers to a busy monitor must not look silent.
    """

    def __init__(self, shared_delivery_at: Any, *args: Any, **kwargs: Any) -> None:
        self._shared_delivery_at = shared_delivery_at
        super().__init__(*args, **kwargs)

    @property
    def last_delivery_at(self) -> float:
        return float(self._shared_delivery_at.value)

    @last_delivery_at.setter
    def last_delivery_at(self, at: float) -> None:
        self._shared_delivery_at.value = at


def _child_main(
    url: BrokerUrl,
    monitor_id: str,
    presence: dict[str, Any] | None,
    events: multiprocessing.connection.Connection,
    commands: multiprocessing.connection.Connection,
    last_delivery_at: Any,
    stale_own_wills: Any,
    held_back_at: Any,
    log_setup: tuple[int, str | None, str | None],
) -> None:
    # Ctrl-C reaches the whole process group, and a service manager's SIGTERM often the whole group too:
    # the parent decides when this process stops (what it read is acknowledged; it must reach the core).
    # A parent that dies closes the command pipe, which stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    level, log_format, date_format = log_setup
    logging.basicConfig(level=logging.WARNING, format=log_format or logging.BASIC_FORMAT, datefmt=date_format)
    logging.getLogger("fleetpulse").setLevel(level)  # every module's logger of ours, the subscriber's too

    def on_hold() -> None:
        # Not reading is our choice, not the broker's silence: it has more for us.
        held_back_at.value = last_delivery_at.value = time.monotonic()

    batcher = _Batcher(events, on_hold)
    subscriber = _SharedSubscriber(last_delivery_at, url, monitor_id, batcher, presence=presence)
    subscriber.start()
    done = threading.Event()

    def serve_commands() -> None:
        while True:
            try:
                command = commands.recv()
            except (EOFError, OSError):
                command = ("stop",)  # the parent is gone
            if command[0] == "publish":
                subscriber.publish(command[1], command[2], command[3])
            elif command[0] == "probe":
                subscriber.send_probe()
            else:
                subscriber.stop()
                done.set()
                return

    threading.Thread(target=serve_commands, name="fleetpulse-reader-commands", daemon=True).start()
    while not done.is_set():
        if batcher.ready.wait(0.1):
            time.sleep(BATCH_EVERY_S)  # a few milliseconds' worth per list
            batcher.ready.clear()
            batcher.send_pending()  # (blocks while the core is behind: the pipe is full)
        stale_own_wills.value = subscriber.stale_own_wills
    batcher.send_pending()  # what arrived up to the disconnect
    events.send(_STOPPED)
