"""Built-in drivers register through this project's own entry points, like any package."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.config.load import load_config
from agent.errors import ConfigError
from drivers import registry
from drivers.base import DriverSpec, SensorOptions
from tests.support.mqtt import ROOT


def declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points: dict[str, str] = project["project"]["entry-points"][registry.GROUP]
    return entry_points


def test_every_spec_in_the_drivers_package_is_declared_in_pyproject() -> None:
    targets = set(declared().values())
    for path in sorted((ROOT / "drivers").glob("*.py")):
        if path.stem.startswith("_") or path.stem in {
            "base",
            "errors",
            "hardware",
            "registry",
            "testing",
        }:
            continue
        module = importlib.import_module(f"drivers.{path.stem}")
        for attribute, value in vars(module).items():
            if isinstance(value, DriverSpec):
                assert f"drivers.{path.stem}:{attribute}" in targets, (
                    f"drivers/{path.name} has {attribute} = DriverSpec({value.name!r}) but "
                    f'pyproject.toml has no `{value.name} = "drivers.{path.stem}:{attribute}"`'
                )


def test_the_built_in_table_is_pyprojects_entry_points() -> None:
    # The registry finds built-ins in BUILTIN, without the installed metadata; the entry
    # points stay the declaration third parties see (CONTRACT 11).
    assert declared() == registry.BUILTIN
    for name in declared():
        assert registry.ORIGINS[name].builtin


def test_finding_a_built_in_driver_imports_no_importlib_metadata() -> None:
    # importlib.metadata and its scan of every distribution cost ~40 ms of each start.
    script = (
        "import sys\nfrom drivers import registry\nassert registry.spec('system')\n"
        "print('importlib.metadata' in sys.modules, len(registry.problems()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.split() == ["False", "0"]


def test_a_spec_whose_options_are_tagged_otherwise_is_refused() -> None:
    class Options(SensorOptions, frozen=True, tag="other"):
        pass

    def never(options: object, hardware: object) -> Any:
        raise AssertionError("not opened")

    spec = DriverSpec(
        name="gauge", kind="sensor", summary="", options=Options, open=never, emulate=never
    )
    assert registry.validate_spec("gauge", spec) == "its options are tagged 'other', not 'gauge'"
    assert registry.validate_spec("gauge", object()) == (
        "expected a drivers.base.DriverSpec, got object"
    )


def test_every_built_in_humidity_chip_says_its_humidity_shares_the_temperature_die() -> None:
    # CONTRACT 12: a temperature correction also corrects RH on these chips (BME280, SHT,
    # AHT, DHT, SCD4x, BME680 all measure both on one die).
    for name, spec in registry.DRIVERS.items():
        if registry.ORIGINS[name].builtin and {"temperature", "humidity"} <= set(spec.quantities):
            assert spec.humidity_shares_die, f"{name} does not set humidity_shares_die"


def imported_after(code: str) -> set[str]:
    """The ``drivers.*`` modules a fresh interpreter has imported after running ``code``."""
    script = (
        f"import sys\n{code}\nprint(' '.join(m for m in sys.modules if m.startswith('drivers.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return set(result.stdout.split())


def test_loading_a_config_imports_only_the_drivers_it_names(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "sensors:\n  air: {driver: bme280}\noutputs:\n  pump: {driver: relay, pin: 5}\n"
    )
    loaded = imported_after(
        "from pathlib import Path\nfrom agent.config.load import load_config\n"
        f"load_config(Path({str(config)!r}))"
    )
    assert {"drivers.bme280", "drivers.gpio"} <= loaded
    others = {target.split(":")[0] for target in declared().values()} - loaded
    assert {"drivers.scd4x", "drivers.bme680", "drivers.pms5003", "drivers.ads1x15"} <= others


def test_the_full_tables_import_every_built_in_driver() -> None:
    modules = {target.split(":")[0] for target in declared().values()}
    assert modules <= imported_after("from drivers.registry import DRIVERS")


def test_spec_finds_a_driver_by_name_and_none_for_an_unknown_one() -> None:
    assert registry.spec("bme280") is registry.DRIVERS["bme280"]
    assert registry.spec("no_such_driver") is None


def test_an_unknown_driver_is_named_with_every_known_one(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sensors:\n  air: {driver: bme28}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    message = str(raised.value)
    assert "unknown driver 'bme28' (did you mean `bme280`?)" in message
    assert all(spec.name in message for spec in registry.sensors())


def test_packages_are_found_in_dist_info_and_egg_info_the_first_on_the_path_winning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    entry_points = "[console_scripts]\nx = y:z\n\n[pi_edge_agent.drivers]\n{} = {}:SPEC\n"
    for where, directory, name, version in (
        (first, "acme_gauges-1.2.dist-info", "acme-gauges", "1.2"),
        (second, "acme_gauges-0.9.dist-info", "acme-gauges", "0.9"),  # shadowed by the first
        (second, "old_style.egg-info", "old-style", "3.0"),
        (second, "no_drivers-1.0.dist-info", "no-drivers", "1.0"),
    ):
        meta = where / directory
        meta.mkdir(parents=True)
        header = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not this\n"
        (meta / ("PKG-INFO" if directory.endswith(".egg-info") else "METADATA")).write_text(header)
        if not directory.startswith("no_drivers"):
            module = name.replace("-", "_")
            (meta / "entry_points.txt").write_text(entry_points.format(module, module))
    monkeypatch.setattr(sys, "path", [str(first), str(tmp_path / "missing"), str(second)])
    found = [(n, v, [(e.name, e.value) for e in eps]) for n, v, _, eps in registry._distributions()]
    assert found == [
        ("acme-gauges", "1.2", [("acme_gauges", "acme_gauges:SPEC")]),
        ("old-style", "3.0", [("old_style", "old_style:SPEC")]),
    ]
