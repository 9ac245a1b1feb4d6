"""The CLI as a user runs it: check, read, drivers, schema."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.mqtt import ROOT, run_cli


def test_check_prints_a_one_line_summary() -> None:
    result = run_cli("check", "-c", str(ROOT / "config/example.yaml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "OK" in lines[0] and "sensors" in lines[0]


def test_check_uses_edge_agent_config_env(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("device_id: from-env\n")
    result = run_cli("check", env={"EDGE_AGENT_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "from-env" in result.stdout


def test_read_simulated_prints_one_valid_reading_per_sensor() -> None:
    result = run_cli("read", "--simulate", "-c", str(ROOT / "config/demo.yaml"))
    assert result.returncode == 0, result.stderr
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    demo_sensors = _demo_sensor_names()
    assert [r["sensor"] for r in readings] == demo_sensors
    for r in readings:
        assert set(r) == {"sensor", "ts", "seq", "values"}
        assert r["ts"].endswith("Z") and len(r["ts"]) == len("2026-11-23T04:11:27.123Z")
        assert r["values"] and all(isinstance(v, int | float) for v in r["values"].values())


def test_read_one_named_sensor() -> None:
    result = run_cli("read", "--simulate", "-c", str(ROOT / "config/demo.yaml"), "pi")
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["sensor"] for x in result.stdout.splitlines()] == ["pi"]


def test_read_unknown_sensor_fails() -> None:
    result = run_cli("read", "--simulate", "-c", str(ROOT / "config/demo.yaml"), "nope")
    assert result.returncode == 1
    assert "nope" in result.stderr


def test_read_failing_sensor_exits_1_and_says_why(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("sensors:\n  pi:\n    driver: system\n    thermal_zone: 42\n")
    result = run_cli("read", "-c", str(config))
    assert result.returncode == 1
    assert "thermal_zone42" in result.stderr
    assert "Traceback" not in result.stderr


def test_drivers_lists_every_driver_with_quantities_and_defaults() -> None:
    from drivers.registry import DRIVERS

    result = run_cli("drivers")
    assert result.returncode == 0
    for name in DRIVERS:
        assert f"\n{name} (" in "\n" + result.stdout
    assert "soc_temperature [°C]" in result.stdout
    assert "interval: 60.0" in result.stdout


def test_schema_is_json_schema_of_the_config() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "Config" in schema["$defs"]


def _demo_sensor_names() -> list[str]:
    from agent.config import load_config

    return list(load_config(ROOT / "config/demo.yaml", environ={}).config.sensors)
