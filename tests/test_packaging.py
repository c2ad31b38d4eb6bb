"""One import namespace: the wheel installs `fleetpulse` and nothing else at the top, with its public face."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT

FACE = """
import sys
import fleetpulse
from fleetpulse import Agent, FleetpulseError, MonitorClient, MonitorError, MonitorUnavailable, ProtocolError
assert fleetpulse.__version__
assert "amqtt" not in sys.modules and "duckdb" not in sys.modules, "the agent's face loads the monitor's dependencies"
from fleetpulse import EmbeddedBroker, PortInUseError  # loaded on first use
for name in ("monitor", "broker", "publisher"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"a top-level package {name!r} is importable")
print("ok")
"""


def test_outside_the_checkout_only_the_fleetpulse_namespace_imports(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", FACE], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert finished.stdout.strip() == "ok", finished.stderr


def test_the_wheel_holds_one_top_level_package_and_py_typed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("fleetpulse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"fleetpulse", wheel.name.split("-py3")[0] + ".dist-info"}
    for expected in ("fleetpulse/__init__.py", "fleetpulse/py.typed", "fleetpulse/monitor/cli.py",
                     "fleetpulse/publisher/agent.py", "fleetpulse/broker/embedded.py"):  # fmt: skip
        assert expected in names


def test_every_error_fleetpulse_raises_on_purpose_is_one_family() -> None:
    import fleetpulse
    from fleetpulse.broker.credentials import CredentialsError
    from fleetpulse.monitor.channels import DeliveryError
    from fleetpulse.monitor.cli import CliError
    from fleetpulse.monitor.schema import SchemaTooNew
    from fleetpulse.monitor.service import NothingToForget
    from fleetpulse.monitor.store import QueryBusy, QueryTimeout, ReadOnlyViolation, StoreLocked

    family = (
        fleetpulse.ProtocolError, fleetpulse.MonitorError, fleetpulse.MonitorUnavailable, fleetpulse.PortInUseError,
        CredentialsError, DeliveryError, CliError, SchemaTooNew, NothingToForget, QueryBusy, QueryTimeout,
        ReadOnlyViolation, StoreLocked,
    )  # fmt: skip
    for error in family:
        assert issubclass(error, fleetpulse.FleetpulseError), error
    # ... and each keeps the built-in base older callers catch
    assert issubclass(fleetpulse.ProtocolError, ValueError) and issubclass(fleetpulse.PortInUseError, OSError)
    assert issubclass(fleetpulse.MonitorUnavailable, ConnectionError)
