"""The `fleetpulse` command line: `up`, `broker`, `demo`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from types import FrameType
from typing import Any

from publisher.mqtt import DEFAULT_BROKER_URL, make_client, parse_broker_url
from publisher.protocol import HEALTH_TOPIC_FILTER, Kind, ProtocolError, parse_health, validate_id

__all__ = ["main"]

_log = logging.getLogger("fleetpulse")


class CliError(Exception):
    """An operator mistake or an unusable environment: printed as one line, exit status 2."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        # amqtt and its state-machine library log every connection at INFO.
        for noisy in ("amqtt", "transitions", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so long-running commands shut down cleanly and exit 0."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port}")
    return port


def _start_broker(host: str, port: int) -> Any:
    from broker.embedded import EmbeddedBroker, PortInUseError

    try:
        return EmbeddedBroker(host, port).start()
    except PortInUseError as error:
        raise CliError(error.strerror) from None
    except OSError as error:
        raise CliError(f"cannot start the embedded broker on {host}:{port}: {error.strerror or error}") from None


def _cmd_broker(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    broker = _start_broker(args.host, args.port)
    _log.info("keep-alive enforced at 1.5x; Ctrl-C stops the broker")
    stop.wait()
    broker.stop()
    _log.info("embedded broker stopped")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import DemoAgent, run_demo

    parse_broker_url(args.broker)
    ids = [args.id] if args.id else [f"{args.prefix}-{n}" for n in range(1, args.agents + 1)]
    for agent_id in ids:
        validate_id(agent_id)
    agents = [
        DemoAgent(agent_id, args.broker, args.interval_s, args.keepalive_s, failure_ratio=args.failure_ratio)
        for agent_id in ids
    ]
    stop = _stop_on_signals()
    _log.info("demo: %d agent(s) on %s, pid %d: %s", len(agents), args.broker, os.getpid(), ", ".join(ids))
    run_demo(agents, stop)
    return 0


def _print_health_event(topic: str, payload: bytes, retained: bool) -> None:
    try:
        message = parse_health(topic, payload)
    except ProtocolError as error:
        print(f"{datetime.now():%H:%M:%S} rejected {topic[:80]}: {error.reason}", flush=True)
        return
    when = f"{datetime.now():%H:%M:%S}"
    snapshot = " (retained)" if retained else ""
    if message.kind is Kind.WILL:
        line = f"{message.agent} DEAD: the broker published its will ({message.reason}), session {message.session}"
    elif message.kind is Kind.STOP:
        line = f"{message.agent} stopped: {message.reason}"
    else:
        metrics = message.metrics
        work = f", {metrics.ok} ok / {metrics.failed} failed" if metrics else ""
        birth = " BIRTH" if message.is_birth else ""
        line = f"{message.agent}{birth} {message.status} seq {message.seq} pid {message.pid}{work}"
    print(f"{when} {line}{snapshot}", flush=True)


def _tail_health(broker_url: str, stop: threading.Event) -> None:
    """Print every health message until `stop` (the monitor replaces this in `up`)."""
    url = parse_broker_url(broker_url)
    client = make_client(url, client_id=f"fleetpulse-up-{os.getpid()}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(HEALTH_TOPIC_FILTER, qos=1)
    client.on_message = lambda c, u, m: _print_health_event(m.topic, bytes(m.payload), m.retain)
    client.connect(url.host, url.port, keepalive=10)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


def _cmd_up(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    broker = _start_broker(args.host, args.port)
    children: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(1, args.demo + 1):
            agent_id = f"demo-{n}"
            command = [sys.executable, "-m", "monitor.cli", "demo", "--broker", broker.url, "--id", agent_id]
            command += ["--interval-s", str(args.interval_s), "--keepalive-s", str(args.keepalive_s)]
            children.append(subprocess.Popen(command))
            _log.info("demo agent %s runs as pid %d (try: kill -9 %d)", agent_id, children[-1].pid, children[-1].pid)
        tail = threading.Thread(target=_tail_health, args=(broker.url, stop), daemon=True)
        tail.start()
        stop.wait()
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        broker.stop()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetpulse", description="Health monitoring for fleets of AI agents.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="embedded broker plus simulated agents, printing what the broker announces")
    up.add_argument("--host", default="127.0.0.1", help="address the broker listens on (default 127.0.0.1)")
    up.add_argument("--port", type=_port, default=1883, help="broker port (default 1883)")
    up.add_argument("--demo", type=int, default=0, metavar="N", help="start N simulated agent processes")
    up.add_argument("--interval-s", type=float, default=2.0, help="demo heartbeat interval (default 2)")
    up.add_argument("--keepalive-s", type=int, default=2, help="demo MQTT keep-alive (default 2)")
    up.set_defaults(handler=_cmd_up)

    broker = commands.add_parser("broker", help="run the embedded MQTT broker (amqtt, keep-alive enforced)")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    broker.add_argument("--port", type=_port, default=1883, help="port to listen on (default 1883)")
    broker.set_defaults(handler=_cmd_broker)

    demo = commands.add_parser("demo", help="run simulated agents against a broker")
    demo.add_argument("--broker", default=DEFAULT_BROKER_URL, help=f"broker URL (default {DEFAULT_BROKER_URL})")
    demo.add_argument("-n", "--agents", type=int, default=3, help="how many agents (default 3)")
    demo.add_argument("--prefix", default="demo", help="agent ids are PREFIX-1..N (default demo)")
    demo.add_argument("--id", help="run exactly one agent with this id")
    demo.add_argument("--interval-s", type=float, default=2.0, help="heartbeat interval (default 2)")
    demo.add_argument("--keepalive-s", type=int, default=2, help="MQTT keep-alive (default 2)")
    demo.add_argument("--failure-ratio", type=float, default=0.02, help="share of failing tasks (default 0.02)")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        result: int = args.handler(args)
        return result
    except (CliError, ValueError) as error:
        print(f"fleetpulse {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
