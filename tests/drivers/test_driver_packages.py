"""Driver packages from outside: pip-installed beside the agent, listed, validated, read and
published; a broken one reported without breaking anything (CONTRACT 11).

One scratch venv per module sees the agent's own venv (through a .pth) and gets the
example package (examples/driver-package) and a deliberately broken package installed into
it with pip, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from tests.support.configs import write_config
from tests.support.mqtt import ROOT, AgentProcess, Collector

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "driver-package"

BROKEN_PACKAGE = {
    "pyproject.toml": """\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "broken-drivers"
        version = "2.0.1"

        [project.entry-points."pi_edge_agent.drivers"]
        acc_gauge = "broken_import:SPEC"
        not_a_spec = "not_a_spec:SPEC"
        bme280 = "clash:SPEC"

        [tool.setuptools]
        py-modules = ["broken_import", "not_a_spec", "clash"]
        """,
    "broken_import.py": 'raise ImportError("libgauge.so.1: cannot open shared object file")\n',
    "not_a_spec.py": "SPEC = 42\n",
    "clash.py": "from drivers.mcp9808_not_here import SPEC  # never imported: built-in wins\n",
}


class Scratch:
    """A venv that sees the agent's venv and has the packages installed by pip."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = str(root / "bin" / "python")

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            check=False,
        )

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "agent", *args)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    root = tmp_path_factory.mktemp("scratch-venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    site = Path(
        subprocess.run(
            [
                str(root / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    ours = sysconfig.get_path("purelib")
    # addsitedir (not a plain path line) so the agent's editable install is found too.
    (site / "agent-venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    broken = tmp_path_factory.mktemp("broken-drivers")
    for name, text in BROKEN_PACKAGE.items():
        (broken / name).write_text(textwrap.dedent(text))
    for package in (EXAMPLE, broken):
        result = subprocess.run(
            [
                str(root / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                str(package),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    yield Scratch(root)


def config_with(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"device_id: pkg-test\nstate_dir: {tmp_path / 'state'}\n{body}")
    return path


def test_an_installed_package_is_listed_with_its_origin(scratch: Scratch) -> None:
    result = scratch.agent("drivers")
    assert result.returncode == 0, result.stderr
    assert "mcp9808 (sensor, edge-agent-mcp9808 0.1.0): Microchip MCP9808" in result.stdout
    assert "bme280 (sensor, built-in)" in result.stdout
    assert "i2c addresses: 0x18, 0x19" in result.stdout


def test_a_broken_package_is_reported_once_and_the_rest_works(scratch: Scratch) -> None:
    result = scratch.agent("drivers")
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert any(
        "'acc_gauge' from package broken-drivers 2.0.1" in w and "libgauge.so.1" in w
        for w in warnings
    ), result.stderr
    assert any(
        "'not_a_spec'" in w and "expected a drivers.base.DriverSpec, got int" in w for w in warnings
    )
    assert any(
        "broken-drivers 2.0.1 also provides driver 'bme280'; the one from built-in is used" in w
        for w in warnings
    )
    assert len([w for w in warnings if "acc_gauge" in w]) == 1


def test_a_config_using_a_broken_driver_names_driver_package_and_error(
    scratch: Scratch, tmp_path: Path
) -> None:
    config = config_with(tmp_path, "sensors:\n  tank:\n    driver: acc_gauge\n")
    result = scratch.agent("check", "-c", str(config))
    assert result.returncode == 78
    assert (
        f"{config}:5: sensors.tank.driver: driver 'acc_gauge' from package broken-drivers "
        "2.0.1 (broken_import:SPEC) cannot be used: ImportError: libgauge.so.1"
    ) in result.stderr


def test_the_schema_includes_the_package_driver(scratch: Scratch) -> None:
    result = scratch.agent("schema")
    assert result.returncode == 0
    assert '"mcp9808"' in result.stdout


def test_a_package_driver_reads_on_simulated_hardware(scratch: Scratch, tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        "sensors:\n  cellar:\n    driver: mcp9808\n    simulation: {temperature: 11.5}\n",
    )
    result = scratch.agent("read", "--simulate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout.splitlines()[0])
    assert reading["values"] == {"temperature": 11.5}


def test_the_example_packages_own_tests_pass_with_the_kit(scratch: Scratch) -> None:
    result = scratch.run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"), timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.e2e
def test_a_package_driver_is_published_over_mqtt(
    scratch: Scratch,
    broker: PrivateBroker,
    device_id: str,
    tmp_path: Path,
    agents: Callable[..., AgentProcess],
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        port=broker.port,
        device_id=device_id,
        sensors="  cellar:\n    driver: mcp9808\n    interval: 200ms\n"
        "    simulation: {temperature: -3.25}\n",
    )
    with Collector(broker.port, f"edge/{device_id}/sensor/cellar") as readings:
        agents(config, python=scratch.python)
        first = readings.topic(f"edge/{device_id}/sensor/cellar", timeout=20)[0].json()
    assert first["values"] == {"temperature": -3.25}
    assert first["sensor"] == "cellar" and first["seq"] >= 1
