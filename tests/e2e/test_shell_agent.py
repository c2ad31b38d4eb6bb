"""The README's shell agent (`mosquitto_pub -l` with a will) speaks the same protocol as the SDK."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

from fleetpulse.publisher.protocol import Kind
from tests.conftest import ROOT, BrokerProcess, HealthRecorder, require_tool
from tests.e2e.test_agent_lifecycle import _of


def readme_shell_agent() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- shell-agent -->\s*```sh\n(.*?)```", readme, re.S)
    assert match, "README.md lost its shell agent example"
    return match.group(1)


def test_the_readme_shell_agent_heartbeats_and_its_will_fires_on_kill_9(
    any_broker: BrokerProcess, recorder_factory: Callable[[BrokerProcess], HealthRecorder]
) -> None:
    require_tool("mosquitto_pub")
    recorder = recorder_factory(any_broker)
    environment = os.environ | {
        "AGENT": "backup-job",
        "BROKER_HOST": "127.0.0.1",
        "BROKER_PORT": str(any_broker.port),
        "INTERVAL_S": "1",
    }
    shell = subprocess.Popen(["bash", "-c", readme_shell_agent()], env=environment, start_new_session=True)
    try:
        birth = recorder.wait_for(_of("backup-job", Kind.HEARTBEAT, seq=0), timeout_s=10).message
        second = recorder.wait_for(_of("backup-job", Kind.HEARTBEAT, seq=1), timeout_s=10).message
        assert second.session == birth.session
        assert recorder.rejected == []
        # Kill the whole pipeline at once, as an OOM kill of the job would.
        os.killpg(shell.pid, signal.SIGKILL)
        will = recorder.wait_for(_of("backup-job", Kind.WILL), timeout_s=5).message
        assert will.session == birth.session
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(timeout=10)
        time.sleep(0.1)
