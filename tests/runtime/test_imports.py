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
    import gc
    print("GC", gc.isenabled(), gc.get_freeze_count(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

daemon.Agent.connected = listing
from agent.cli import main
sys.exit(main(["run", "-c", sys.argv[1], "--simulate"]))
"""


def when_online(config: Path) -> list[str]:
    """What the script printed once the agent was online."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "MODULES " in done.stdout, done.stderr
    return done.stdout.splitlines()


def modules_when_online(config: Path) -> set[str]:
    lines = [line for line in when_online(config) if line.startswith("MODULES ")]
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
    # health.listen only; an Ed25519 key only; drivers the config does not name; a
    # reload (SIGHUP) only.
    rare_paths = (
        "agent.observability.http",
        "prometheus_client",
        "cryptography",
        "drivers.bme280",
        "agent.runtime.reload",
    )
    for rare in rare_paths:
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


def test_the_collector_is_off_during_start_up_and_back_on_once_started(
    tmp_path: Path, broker: PrivateBroker, device_id: str
) -> None:
    # agent.cli.main turns it off for start-up; `run` freezes what start-up made and
    # turns it back on before the first CONNACK is handled.
    config = write_config(tmp_path / "agent.yaml", port=broker.port, device_id=device_id)
    line = next(line for line in when_online(config) if line.startswith("GC "))
    enabled, frozen = line.split()[1:]
    assert enabled == "True"
    assert int(frozen) > 10_000  # modules, classes, functions: everything start-up made


def test_every_other_command_runs_with_the_collector_on() -> None:
    script = (
        "import gc, sys\nfrom agent.cli import main\nmain(['drivers'])\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('GC', gc.isenabled(), gc.get_freeze_count(), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "GC True 0" in done.stderr
