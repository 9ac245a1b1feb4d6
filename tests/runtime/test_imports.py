"""The daemon imports only what its config uses (README, "Start-up is imports").

Each test runs ``edge-agent run --simulate`` (``agent.cli.main``) in a fresh interpreter
against a real mosquitto and lists ``sys.modules`` once the agent has published ``online``:
a module imported later by someone's top-level import shows up here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.demo.broker import PrivateBroker
from tests.support.configs import write_config
from tests.support.mqtt import ROOT

# Lists the modules once `online` is published, then stops the agent as systemd would.
SCRIPT = """\
import os, signal, sys
from agent.runtime import daemon

connected = daemon.Agent.connected

def listing(self, session_present):
    connected(self, session_present)
    print("MODULES", " ".join(sorted(sys.modules)), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

daemon.Agent.connected = listing
from agent.cli import main
sys.exit(main(["run", "-c", sys.argv[1], "--simulate"]))
"""


def modules_when_online(config: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    assert done.returncode == 0 and lines, done.stderr
    return set(lines[0].split()[1:])


def test_a_config_with_one_system_sensor_imports_no_rare_path(
    tmp_path: Path, broker: PrivateBroker, device_id: str
) -> None:
    config = write_config(tmp_path / "agent.yaml", port=broker.port, device_id=device_id)
    modules = modules_when_online(config)
    assert "drivers.system" in modules and "agent.runtime.daemon" in modules
    # Outputs and inputs only; a giant packet's malloc_trim only (find_library runs
    # `ldconfig -p` in a subprocess).
    for rare in ("gpiozero", "ctypes.util"):
        assert rare not in modules, f"{rare} is imported without a config that uses it"
    # health.listen only; an Ed25519 key only; drivers the config does not name.
    for rare in ("prometheus_client", "cryptography", "drivers.bme280"):
        assert rare not in modules, f"{rare} is imported without a config that uses it"


def test_outputs_bring_gpiozero(tmp_path: Path, broker: PrivateBroker, device_id: str) -> None:
    config = write_config(
        tmp_path / "agent.yaml",
        port=broker.port,
        device_id=device_id,
        extra="outputs:\n  pump: {driver: relay, pin: 5}\n",
    )
    modules = modules_when_online(config)
    assert {"gpiozero", "drivers.gpio"} <= modules
