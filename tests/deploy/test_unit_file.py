"""deploy/edge-agent.service: systemd accepts every line, and the hardening holds."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "edge-agent.service"
EXEC_START = "/opt/edge-agent/venv/bin/edge-agent"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package: systemd)",
)


def settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@needs_analyze
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 even on unknown keys and bad values; only its
    stderr tells. It also requires ExecStart's program to exist, and /opt/edge-agent is
    not installed on a test machine: verify a copy whose ExecStart points at a stand-in
    (every other line as shipped). tests/deploy/test_nspawn.py verifies the installed unit,
    program and all, inside a booted Debian."""
    stand_in = tmp_path / "edge-agent"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(EXEC_START) == 1
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text.replace(EXEC_START, str(stand_in)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == "", result.stderr
    assert result.returncode == 0


@needs_analyze
def test_security_exposure_is_at_most_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_unit_is_what_the_agent_expects() -> None:
    s = settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{EXEC_START} run -c /etc/edge-agent/config.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["78"]  # cli.EXIT_CONFIG
    assert s["User"] == ["edge-agent"]
    assert s["SupplementaryGroups"] == ["gpio i2c"]
    assert s["StateDirectory"] == ["edge-agent"]
    assert s["ConfigurationDirectory"] == ["edge-agent"]
    assert "WatchdogSec" in s


def test_hardware_stays_reachable() -> None:
    """PrivateDevices= would hide /dev/gpiochip*, /dev/gpiomem and /dev/i2c-*;
    PrivateUsers= would map the gpio and i2c groups to nobody. DevicePolicy=closed
    compensates: these devices and nothing else."""
    s = settings()
    assert s.get("PrivateDevices", ["no"]) == ["no"]
    assert s.get("PrivateUsers", ["no"]) == ["no"]
    assert s["DevicePolicy"] == ["closed"]
    allowed = set(s["DeviceAllow"])
    assert {"char-gpiochip rw", "char-i2c rw", "char-bcm2835-gpiomem rw"} <= allowed
    # /proc/loadavg, /proc/meminfo and /proc/uptime are read by the system driver
    assert s.get("ProcSubset", ["all"]) == ["all"]
    assert s["ProtectSystem"] == ["strict"]


def test_exit_config_matches_the_cli() -> None:
    from agent.cli import EXIT_CONFIG

    assert settings()["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_scripts_are_shellcheck_clean(script: str) -> None:
    result = subprocess.run(
        ["shellcheck", str(ROOT / "deploy" / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_scripts_are_strict_and_executable(script: str) -> None:
    path = ROOT / "deploy" / script
    assert path.stat().st_mode & 0o111
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
