"""The conformance kit holds every built-in driver to the rules, and catches broken ones."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from drivers.base import DriverSpec, Quantity, ReadSteps, Sensor, SensorOptions, SteppedSensor
from drivers.errors import BusError
from drivers.hardware import Hardware, SimulatedHardware
from drivers.registry import DRIVERS
from drivers.testing import check_driver, sample_entry


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_every_built_in_driver_passes_the_kit(name: str) -> None:
    check_driver(DRIVERS[name])


# A small driver the tests break in one way at a time.


class GaugeOptions(SensorOptions, frozen=True, tag="gauge"):
    #: Another sensor's name, for the links tests.
    source: str | None = None


class Gauge(Sensor):
    def __init__(self, source: dict[str, Any], *, close_twice_fails: bool = False) -> None:
        self.source = source
        self.closed = False
        self.close_twice_fails = close_twice_fails

    def read(self) -> dict[str, float]:
        if self.source["rng"].random() < self.source["fail_rate"]:
            raise self.source.get("error", BusError("nack"))
        return {"level": round(self.source["level"] * self.source.get("scale", 1.0), 1)}

    def close(self) -> None:
        if self.closed and self.close_twice_fails:
            raise RuntimeError("already closed")
        self.closed = True


class SteppedGauge(SteppedSensor):
    """The gauge read in steps: trigger, wait, fetch; ``broken`` breaks one thing."""

    def __init__(self, source: dict[str, Any], broken: dict[str, Any]) -> None:
        self.source = source
        self.broken = broken
        self.step_lock = threading.RLock()
        self.steps_may_block = False

    def read_steps(self) -> ReadSteps:
        if self.source["rng"].random() < self.source["fail_rate"]:
            raise self.broken.get("steps_error", BusError("nack"))
        yield self.broken.get("wait", 0.002)
        scale = self.broken.get("steps_scale", 1.0)
        return {"level": round(self.source["level"] * scale, 1)}

    def read(self) -> dict[str, float]:
        if self.broken.get("read_differs"):
            return {"level": round(self.source["level"], 1)}  # scale left out, as a bug would
        return super().read()

    def close(self) -> None:
        pass


def make_spec(**broken: Any) -> DriverSpec:
    import random

    sources: dict[int, dict[str, Any]] = {}

    def emulate(options: GaugeOptions, hardware: SimulatedHardware) -> None:
        level = options.simulation.values.get("level", 50.0)
        sources[id(hardware)] = {
            "level": 50.0 if broken.get("ignores_simulation") else level,
            "fail_rate": 0.0 if broken.get("ignores_fail_rate") else options.simulation.fail_rate,
            "rng": random.Random(1),
            "scale": broken.get("scale", 1.0),
            **({"error": broken["error"]} if "error" in broken else {}),
        }

    def open_gauge(options: GaugeOptions, hardware: Hardware) -> Sensor:
        if broken.get("stepped"):
            return SteppedGauge(sources[id(hardware)], broken)
        return Gauge(
            sources[id(hardware)], close_twice_fails=broken.get("close_twice_fails", False)
        )

    return DriverSpec(
        name="gauge",
        kind="sensor",
        summary="a test gauge",
        options=GaugeOptions,
        open=open_gauge,
        emulate=emulate,
        quantities={"level": broken.get("quantity", Quantity("%", 0.1, valid_range=(0.0, 100.0)))},
        links=broken.get("links", {}),
        sample=broken.get("sample", "sensors:\n  tank:\n    driver: gauge\n    interval: 10s\n"),
    )


def test_a_well_behaved_driver_passes() -> None:
    check_driver(make_spec())


def test_an_emulator_that_ignores_the_simulation_values_fails() -> None:
    with pytest.raises(AssertionError, match=r"simulated level=.*read 50\.0"):
        check_driver(make_spec(ignores_simulation=True))


def test_a_conversion_off_by_more_than_the_resolution_fails() -> None:
    with pytest.raises(AssertionError, match="more than one resolution step"):
        check_driver(make_spec(scale=1.01))


def relative(share: float) -> Quantity:
    return Quantity("%", 0.1, valid_range=(0.0, 100.0), relative_resolution=share)


def test_a_relative_resolution_widens_the_tolerance_with_the_value() -> None:
    check_driver(make_spec(scale=1.01, quantity=relative(0.02)))  # 1 % off, a step is 2 %
    with pytest.raises(AssertionError, match=r"more than one resolution step \(0\.\d+\)"):
        check_driver(make_spec(scale=1.03, quantity=relative(0.02)))


def test_a_relative_resolution_must_be_a_share() -> None:
    with pytest.raises(AssertionError, match="relative_resolution must be a share"):
        check_driver(make_spec(quantity=relative(1.5)))


def test_a_link_must_name_an_option_and_the_driver_must_receive_it() -> None:
    with pytest.raises(AssertionError, match="links option 'nope' is no option"):
        check_driver(make_spec(links={"nope": "pressure"}))
    with pytest.raises(AssertionError, match=r"links source .* does not implement receive"):
        check_driver(make_spec(links={"source": "pressure"}))


def test_an_emulator_that_never_fails_fails() -> None:
    with pytest.raises(AssertionError, match="made no read fail"):
        check_driver(make_spec(ignores_fail_rate=True))


def test_a_failure_that_is_not_transient_fails() -> None:
    with pytest.raises(AssertionError, match=r"ValueError.*not a drivers\.errors\.TransientError"):
        check_driver(make_spec(error=ValueError("bad crc")))


def test_close_twice_must_be_harmless() -> None:
    with pytest.raises(AssertionError, match=r"close\(\) after close\(\)"):
        check_driver(make_spec(close_twice_fails=True))


def test_a_sample_that_does_not_validate_fails() -> None:
    with pytest.raises(AssertionError, match="do not validate"):
        check_driver(make_spec(sample="tank:\n  driver: gauge\n  intervall: 10s\n"))


def test_a_sample_without_the_driver_fails() -> None:
    with pytest.raises(AssertionError, match="no entry with `driver: gauge`"):
        check_driver(make_spec(sample="tank:\n  driver: other\n"))


def test_the_sample_entry_is_read_with_yaml_1_2_booleans() -> None:
    assert sample_entry(DRIVERS["relay"])["initial"] == "off"


def test_a_driver_read_in_steps_passes() -> None:
    check_driver(make_spec(stepped=True))


def test_steps_that_give_other_values_than_read_fail() -> None:
    with pytest.raises(AssertionError, match=r"from read\(\) but .* read in steps"):
        check_driver(make_spec(stepped=True, steps_scale=1.01, read_differs=True))


@pytest.mark.parametrize("wait", [-1.0, float("nan"), "1ms", None])
def test_steps_must_yield_seconds_to_wait(wait: object) -> None:
    with pytest.raises(AssertionError, match="yielded"):
        check_driver(make_spec(stepped=True, wait=wait))


def test_steps_that_fail_with_something_else_than_a_transient_error_fail() -> None:
    with pytest.raises(AssertionError, match=r"in steps raised ValueError"):
        check_driver(make_spec(stepped=True, steps_error=ValueError("bad crc")))
