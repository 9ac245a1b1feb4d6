"""The conformance kit: ``check_driver(spec)`` is what a driver author runs from pytest.

It holds a driver to the rules every built-in driver follows (CONTRACT sections 9-11)
without any hardware:

1. the spec is well formed (name, kind, quantities with units and resolutions);
2. the options render a JSON Schema, and the sample in the spec is a valid config entry;
3. simulation values it picks itself, inside each quantity's ``valid_range``, come back
   through the real driver code within the quantity's resolution — so the emulator really
   runs the chip's conversion backwards, not a copy of the configured numbers;
4. with failures injected (``simulation.fail_rate``) every error a read raises is a
   :class:`~drivers.errors.TransientError`, and failures do happen;
5. ``close()`` twice is harmless, and the driver works as a context manager;
6. a :class:`~drivers.base.SteppedSensor` gives the same values read in steps (as the agent
   reads it: each step under its ``step_lock``, the waits between them) as from ``read()``,
   yields only waits that are finite seconds ≥ 0, and fails in steps as ``read()`` does.

Every check raises ``AssertionError`` saying what failed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Generator, Mapping
from typing import Any

import msgspec
import yaml

from drivers._yaml import YAML12Loader
from drivers.base import DriverSpec, Options, Quantity, Sensor, SteppedSensor, parse_duration
from drivers.errors import DriverError, TransientError
from drivers.hardware import SimulatedHardware

#: Share of bus transactions that fail in the failure check.
FAIL_RATE = 0.3
#: Where a range is unknown, values to simulate.
_FALLBACK = (12.5, 37.25)


def check_driver(spec: DriverSpec, *, options: Mapping[str, Any] | None = None) -> None:
    """Run every conformance check on ``spec``.

    Args:
        spec: the driver's :class:`DriverSpec`.
        options: the config entry to test with (``driver:`` may be left out); default:
            the entry in ``spec.sample``.

    Raises:
        AssertionError: saying which check failed and why.
    """
    _check_spec(spec)
    _check_schema(spec)
    entry = dict(options) if options is not None else sample_entry(spec)
    entry["driver"] = spec.name
    parse_options(spec, entry)  # the sample (or given entry) must validate
    if spec.kind != "sensor":
        _check_lifecycle(spec, entry)
        return
    for share in (0.23, 0.71):
        _check_round_trip(spec, entry, share)
    _check_failures(spec, entry)
    _check_lifecycle(spec, entry)


def sample_entry(spec: DriverSpec) -> dict[str, Any]:
    """The config entry in ``spec.sample``: the first mapping with ``driver: <name>``."""
    assert spec.sample.strip(), f"{spec.name}: the spec has no sample"
    try:
        document = yaml.load(spec.sample, Loader=YAML12Loader)
    except yaml.YAMLError as e:
        raise AssertionError(f"{spec.name}: the sample is not valid YAML: {e}") from e
    found = _find_entry(document, spec.name)
    assert found is not None, f"{spec.name}: the sample has no entry with `driver: {spec.name}`"
    return found


def _find_entry(node: Any, name: str) -> dict[str, Any] | None:
    if isinstance(node, dict):
        if node.get("driver") == name:
            return dict(node)
        for value in node.values():
            found = _find_entry(value, name)
            if found is not None:
                return found
    return None


def parse_options(spec: DriverSpec, entry: Mapping[str, Any]) -> Options:
    """``entry`` as ``spec.options``, with durations ("10s") converted as the agent does."""
    try:
        converted = _durations(dict(entry), spec.options)
        options = msgspec.convert(converted, spec.options, strict=True)
    except (msgspec.ValidationError, ValueError) as e:
        raise AssertionError(f"{spec.name}: options {dict(entry)!r} do not validate: {e}") from e
    assert isinstance(options, Options)
    return options


def _durations(value: Any, tp: Any) -> Any:
    """Seconds for every duration-typed field of ``tp`` found in ``value``."""
    info = msgspec.inspect.type_info(tp)
    return _convert_durations(value, info)


def _convert_durations(value: Any, info: msgspec.inspect.Type) -> Any:
    if isinstance(info, msgspec.inspect.Metadata):
        if info.extra and info.extra.get("duration") and isinstance(value, str):
            return parse_duration(value)
        return _convert_durations(value, info.type)
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            if isinstance(member, msgspec.inspect.StructType | msgspec.inspect.Metadata):
                value = _convert_durations(value, member)
        return value
    if isinstance(info, msgspec.inspect.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f for f in info.fields}
        return {
            k: _convert_durations(v, fields[k].type) if k in fields else v for k, v in value.items()
        }
    return value


def _check_spec(spec: DriverSpec) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), (
        f"{spec.name!r}: a driver name is lower case letters, digits and _"
    )
    assert spec.kind in ("sensor", "output", "input"), f"{spec.name}: kind {spec.kind!r}"
    assert spec.summary, f"{spec.name}: the spec has no summary"
    tag = spec.options.__struct_config__.tag
    assert tag == spec.name, (
        f"{spec.name}: the options struct is tagged {tag!r}; it must be tagged with the "
        f"driver's name (class ...Options(SensorOptions, frozen=True, tag={spec.name!r}))"
    )
    if spec.kind == "sensor":
        assert spec.quantities or spec.quantities_for, f"{spec.name}: a sensor with no quantities"
        for name, q in spec.quantities.items():
            _check_quantity(spec, name, q)
        for name in spec.computed:
            assert name in spec.quantities, f"{spec.name}: computed {name!r} is no quantity"
    for address in spec.i2c_addresses:
        assert 0x03 <= address <= 0x77, f"{spec.name}: 0x{address:02X} is no 7-bit I2C address"
    fields = {f.name for f in msgspec.structs.fields(spec.options)}
    for option, quantity in spec.links.items():
        assert spec.kind == "sensor", f"{spec.name}: only a sensor takes linked quantities"
        assert option in fields, f"{spec.name}: links option {option!r} is no option"
        assert re.fullmatch(r"[a-z][a-z0-9_]*", quantity), f"{spec.name}: links {quantity!r}"


def _check_quantity(spec: DriverSpec, name: str, q: Quantity) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{spec.name}: quantity name {name!r}"
    assert isinstance(q.unit, str), f"{spec.name}.{name}: unit must be a string"
    assert q.resolution > 0 and math.isfinite(q.resolution), (
        f"{spec.name}.{name}: resolution must be a positive number, got {q.resolution!r}"
    )
    if q.relative_resolution is not None:
        assert 0 < q.relative_resolution < 1, (
            f"{spec.name}.{name}: relative_resolution must be a share in (0, 1), got "
            f"{q.relative_resolution!r}"
        )
    if q.valid_range is not None:
        lo, hi = q.valid_range
        assert lo < hi, f"{spec.name}.{name}: valid_range {q.valid_range} is empty"


def _check_schema(spec: DriverSpec) -> None:
    try:
        schema = msgspec.json.schema(spec.options)
        json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{spec.name}: the options do not render a JSON Schema: {e}") from e


def _pick(q: Quantity, share: float) -> float:
    lo, hi = q.valid_range if q.valid_range is not None else _FALLBACK
    value = lo + (hi - lo) * share
    steps = round(value / q.resolution)
    return steps * q.resolution


def _check_round_trip(spec: DriverSpec, entry: dict[str, Any], share: float) -> None:
    base = parse_options(spec, entry)
    quantities = spec.quantities_of(base)
    chosen = {name: _pick(q, share) for name, q in quantities.items() if name not in spec.computed}
    simulated = {**entry, "simulation": {**chosen, "fail_rate": 0.0}}
    options = parse_options(spec, simulated)
    with SimulatedHardware(seed=1, virtual_time=True) as hardware:
        spec.emulate(options, hardware)
        try:
            driver = _open(spec, options, hardware)
        except TransientError as e:
            raise AssertionError(
                f"{spec.name}: opening failed with fail_rate 0: {type(e).__name__}: {e}"
            ) from e
        try:
            if spec.links:
                assert type(driver).receive is not Sensor.receive, (
                    f"{spec.name}: links {', '.join(spec.links)} but its class does not "
                    "implement receive()"
                )
            for attempt in range(3):
                stepped = None
                if isinstance(driver, SteppedSensor):
                    try:
                        stepped = _read_in_steps(spec, driver)
                    except TransientError as e:
                        raise AssertionError(
                            f"{spec.name}: a read in steps failed with fail_rate 0: "
                            f"{type(e).__name__}: {e}"
                        ) from e
                    _check_values(spec, quantities, stepped)
                try:
                    values = _read(spec, driver)
                except TransientError as e:
                    raise AssertionError(
                        f"{spec.name}: a read failed with fail_rate 0: {type(e).__name__}: {e}"
                    ) from e
                _check_values(spec, quantities, values)
                if stepped is not None:
                    _check_same(spec, quantities, values, stepped)
                for name, want in chosen.items():
                    assert name in values, (
                        f"{spec.name}: simulated {name}={want} but the reading has no {name!r}: "
                        f"{values}"
                    )
                    got = values[name]
                    step = quantities[name].step_at(want)
                    assert abs(got - want) <= step * 1.0001, (
                        f"{spec.name}: simulated {name}={want} {quantities[name].unit}, read "
                        f"{got} (read {attempt + 1}): more than one resolution step "
                        f"({step:g}) apart — does the emulator encode raw values the way the "
                        "chip does?"
                    )
        finally:
            driver.close()


def _check_values(spec: DriverSpec, quantities: Mapping[str, Quantity], values: Any) -> None:
    assert isinstance(values, dict), f"{spec.name}: read() returned {type(values).__name__}"
    for name, value in values.items():
        assert name in quantities, (
            f"{spec.name}: read() returned {name!r}, which is not one of its quantities "
            f"({', '.join(quantities)})"
        )
        assert isinstance(value, int | float) and not isinstance(value, bool), (
            f"{spec.name}: {name} is {value!r}, not a number"
        )
        assert math.isfinite(value), f"{spec.name}: {name} is {value}"


def _check_failures(spec: DriverSpec, entry: dict[str, Any]) -> None:
    options = parse_options(spec, {**entry, "simulation": {"fail_rate": FAIL_RATE}})
    failures: list[DriverError] = []
    with SimulatedHardware(seed=7, virtual_time=True) as hardware:
        spec.emulate(options, hardware)
        driver = None
        for _ in range(100):  # opening takes many transactions: it may fail transiently
            try:
                driver = _open(spec, options, hardware)
                break
            except TransientError as e:
                failures.append(e)
        assert driver is not None, f"{spec.name}: 100 opens at fail_rate {FAIL_RATE} all failed"
        try:
            for i in range(40):
                try:
                    if isinstance(driver, SteppedSensor) and i % 2 == 0:
                        _read_in_steps(spec, driver)
                    else:
                        _read(spec, driver)
                except TransientError as e:
                    failures.append(e)
        finally:
            driver.close()
    assert failures, (
        f"{spec.name}: simulation.fail_rate {FAIL_RATE} made no read fail: the emulator must fail "
        "the way the chip does (a NACK, a CRC error, EIO)"
    )


def _open(spec: DriverSpec, options: Options, hardware: SimulatedHardware) -> Sensor:
    """Open the driver; a transient error passes through for the caller to judge."""
    try:
        driver = spec.open(options, hardware)
    except TransientError:
        raise
    except DriverError as e:
        raise AssertionError(
            f"{spec.name}: opening on its emulator raised {type(e).__name__}: {e}"
        ) from e
    except Exception as e:
        raise AssertionError(
            f"{spec.name}: opening raised {type(e).__name__} ({e}), which is not one of the "
            "driver errors (drivers.errors)"
        ) from e
    assert isinstance(driver, Sensor) or spec.kind != "sensor", (
        f"{spec.name}: open() returned {type(driver).__name__}, not a drivers.base.Sensor"
    )
    return driver  # type: ignore[return-value]


def _read(spec: DriverSpec, driver: Sensor) -> dict[str, float]:
    """One read; a transient error passes through for the caller to judge."""
    try:
        return driver.read()
    except TransientError:
        raise
    except DriverError as e:
        raise AssertionError(
            f"{spec.name}: a read raised {type(e).__name__} ({e}); with failures injected "
            "only TransientError subclasses may come out"
        ) from e
    except Exception as e:
        raise AssertionError(
            f"{spec.name}: a read raised {type(e).__name__} ({e}), which is not a "
            "drivers.errors.TransientError: the scheduler would not retry it"
        ) from e


def _read_in_steps(spec: DriverSpec, driver: SteppedSensor) -> dict[str, float]:
    """One read in steps, driven as the agent drives it (each step under ``step_lock``,
    the waits between with the driver's own ``sleep``); a transient error passes through."""
    assert isinstance(getattr(driver, "steps_may_block", None), bool), (
        f"{spec.name}: steps_may_block must be True or False"
    )
    lock = getattr(driver, "step_lock", None)
    assert lock is not None and hasattr(lock, "acquire") and hasattr(lock, "release"), (
        f"{spec.name}: a SteppedSensor must set step_lock (bus_lock(bus))"
    )
    try:
        steps = driver.read_steps()
        assert isinstance(steps, Generator), (
            f"{spec.name}: read_steps() returned {type(steps).__name__}, not a generator"
        )
        try:
            while True:
                with lock:
                    wait = next(steps)
                assert isinstance(wait, int | float) and not isinstance(wait, bool), (
                    f"{spec.name}: read_steps() yielded {wait!r}: it yields seconds to wait"
                )
                assert math.isfinite(wait) and wait >= 0, (
                    f"{spec.name}: read_steps() yielded a wait of {wait!r} s"
                )
                driver.sleep(wait)
        except StopIteration as done:
            values: dict[str, float] = done.value
            return values
    except TransientError:
        raise
    except AssertionError:
        raise
    except DriverError as e:
        raise AssertionError(
            f"{spec.name}: a read in steps raised {type(e).__name__} ({e}); with failures "
            "injected only TransientError subclasses may come out"
        ) from e
    except Exception as e:
        raise AssertionError(
            f"{spec.name}: a read in steps raised {type(e).__name__} ({e}), which is not a "
            "drivers.errors.TransientError: the scheduler would not retry it"
        ) from e


def _check_same(
    spec: DriverSpec,
    quantities: Mapping[str, Quantity],
    values: dict[str, float],
    stepped: dict[str, float],
) -> None:
    assert set(stepped) == set(values), (
        f"{spec.name}: read() gave {sorted(values)} but the read in steps {sorted(stepped)}"
    )
    for name, value in values.items():
        step = quantities[name].step_at(value)
        assert abs(stepped[name] - value) <= step * 1.0001, (
            f"{spec.name}: {name} is {value} from read() but {stepped[name]} read in steps: "
            f"more than one resolution step ({step:g}) apart"
        )


def _check_lifecycle(spec: DriverSpec, entry: dict[str, Any]) -> None:
    options = parse_options(spec, entry)
    with SimulatedHardware(seed=3, virtual_time=True) as hardware:
        spec.emulate(options, hardware)
        try:
            driver = spec.open(options, hardware)
        except DriverError as e:
            raise AssertionError(f"{spec.name}: opening raised {type(e).__name__}: {e}") from e
        with driver as entered:
            assert entered is driver, f"{spec.name}: __enter__ must return the driver"
            if isinstance(driver, Sensor):
                driver.read()
        try:
            driver.close()
            driver.close()
        except Exception as e:
            raise AssertionError(
                f"{spec.name}: close() after close() raised {type(e).__name__}: {e}"
            ) from e
