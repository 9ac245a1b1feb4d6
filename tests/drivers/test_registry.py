"""Built-in drivers register through this project's own entry points, like any package."""

from __future__ import annotations

import importlib
import tomllib
from typing import Any

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


def test_the_installed_metadata_matches_pyproject() -> None:
    missing = set(declared()) - set(registry.DRIVERS)
    assert not missing, (
        f"declared in pyproject.toml but not installed: {sorted(missing)}: "
        "the venv is stale, run `make venv` (pip install -e .)"
    )
    for name in declared():
        assert registry.ORIGINS[name].builtin


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
