"""The DHT driver on fake /sys/bus/iio trees, one tree per case, and on its emulator."""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from drivers.dht import (
    DHT,
    DHT11_SPEC,
    DHT22_SPEC,
    DHT11Options,
    DHT22Options,
    Model,
    emulate_dht,
    find_device,
    open_dht,
    quantize,
)
from drivers.errors import (
    BusError,
    ChecksumError,
    DeviceNotFound,
    ImplausibleReading,
    TransientError,
)
from drivers.hardware import Hardware, SimulatedHardware

IIO = "sys/bus/iio/devices"


def make_iio(
    root: Path,
    index: int,
    name: str,
    *,
    temp: str = "21500\n",
    humidity: str = "45300\n",
    gpios: bytes | None = None,
) -> Path:
    """One ``iio:deviceN`` directory as the kernel's dht11 driver lays it out."""
    device = root / IIO / f"iio:device{index}"
    device.mkdir(parents=True)
    (device / "name").write_text(f"{name}\n")
    (device / "in_temp_input").write_text(temp)
    (device / "in_humidityrelative_input").write_text(humidity)
    if gpios is not None:
        (device / "of_node").mkdir()
        (device / "of_node/gpios").write_bytes(gpios)
    return device


class FakeClock:
    """A monotonic clock that only moves when told to, or when the driver sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatedHardware]:
    hw = SimulatedHardware(tmp_path, seed=7)
    yield hw
    hw.close()


def scripted(*results: str | int) -> Callable[[], str]:
    """An attribute that answers with ``results`` in turn: text, or an errno to raise."""
    queue = list(results)

    def produce() -> str:
        result = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(result, int):
            raise OSError(result, "scripted failure")
        return result

    return produce


def dht(
    device: Path, clock: FakeClock, *, model: Model = "dht22", hw: Hardware | None = None
) -> DHT:
    return DHT(device, model=model, hardware=hw or Hardware(), clock=clock, sleep=clock.sleep)


# --- finding the device ---------------------------------------------------------------


def test_finds_the_device_by_the_pin_in_its_overlay_name(tmp_path: Path) -> None:
    make_iio(tmp_path, 0, "mcp3008")
    make_iio(tmp_path, 1, "dht11@4")
    wanted = make_iio(tmp_path, 2, "dht11@11")  # GPIO17: the unit address is hex
    assert find_device(17, Hardware(tmp_path)) == wanted


def test_finds_an_old_overlay_device_by_its_device_tree_gpios(tmp_path: Path) -> None:
    # Overlays before 2023 named every node dht11@0; the pin is in gpios = <&gpio 22 0>.
    make_iio(tmp_path, 0, "dht11@0", gpios=struct.pack(">III", 0x13, 4, 0))
    wanted = make_iio(tmp_path, 1, "dht11@0", gpios=struct.pack(">III", 0x13, 22, 0))
    assert find_device(22, Hardware(tmp_path)) == wanted


def test_a_missing_device_says_how_to_enable_the_overlay(tmp_path: Path) -> None:
    make_iio(tmp_path, 0, "dht11@4")
    with pytest.raises(DeviceNotFound) as info:
        find_device(22, Hardware(tmp_path))
    message = str(info.value)
    assert "dtoverlay=dht11,gpiopin=22" in message
    assert "/boot/firmware/config.txt" in message
    assert "dht11@16" in message  # what was looked for
    assert "iio:device0 (dht11@4)" in message  # what was there instead


def test_no_iio_bus_at_all_is_device_not_found(tmp_path: Path) -> None:
    with pytest.raises(DeviceNotFound, match="gpiopin=4"):
        find_device(4, Hardware(tmp_path))


def test_open_by_pin_and_by_explicit_device(tmp_path: Path) -> None:
    make_iio(tmp_path, 0, "dht11@4", temp="19000\n")
    make_iio(tmp_path, 1, "dht11@11", temp="23000\n")
    hw = Hardware(tmp_path)
    by_pin = open_dht(msgspec.convert({"driver": "dht22", "pin": 17}, DHT22Options), hw)
    explicit = open_dht(
        msgspec.convert(
            {"driver": "dht22", "device": "/sys/bus/iio/devices/iio:device0"}, DHT22Options
        ),
        hw,
    )
    assert by_pin.read()["temperature"] == 23.0
    assert explicit.read()["temperature"] == 19.0


def test_a_directory_without_the_value_files_is_not_a_dht(tmp_path: Path) -> None:
    (tmp_path / "iio:device0").mkdir()
    with pytest.raises(DeviceNotFound, match="in_temp_input"):
        DHT(tmp_path / "iio:device0")


def test_a_device_that_disappears_is_a_permanent_error(tmp_path: Path, clock: FakeClock) -> None:
    device = make_iio(tmp_path, 0, "dht11@4")
    sensor = dht(device, clock)
    (device / "in_temp_input").unlink()
    with pytest.raises(DeviceNotFound):
        sensor.read()


# --- golden readings --------------------------------------------------------------------


class Tree(NamedTuple):
    """The two value files of one fake device, for one chip."""

    model: Model
    temp: str
    humidity: str


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (Tree("dht22", "21500\n", "45300\n"), {"temperature": 21.5, "humidity": 45.3}),
        (Tree("dht22", "-4200\n", "98700\n"), {"temperature": -4.2, "humidity": 98.7}),
        (Tree("dht22", "-40000\n", "0\n"), {"temperature": -40.0, "humidity": 0.0}),
        (Tree("dht22", "80000\n", "100000\n"), {"temperature": 80.0, "humidity": 100.0}),
        # A DHT11 has 1 °C / 1 %RH resolution; newer ones send a tenth the kernel keeps.
        (Tree("dht11", "21000\n", "45000\n"), {"temperature": 21.0, "humidity": 45.0}),
        (Tree("dht11", "23600\n", "38400\n"), {"temperature": 24.0, "humidity": 38.0}),
    ],
)
def test_golden_readings(
    tmp_path: Path, clock: FakeClock, tree: Tree, expected: dict[str, float]
) -> None:
    device = make_iio(tmp_path, 0, "dht11@4", temp=tree.temp, humidity=tree.humidity)
    with dht(device, clock, model=tree.model) as sensor:
        assert sensor.read() == expected


@pytest.mark.parametrize(
    ("tree", "quantity"),
    [
        (Tree("dht22", "80100\n", "45000\n"), "temperature"),
        (Tree("dht22", "-40100\n", "45000\n"), "temperature"),
        (Tree("dht22", "21000\n", "100100\n"), "humidity"),
        (Tree("dht22", "3276700\n", "45000\n"), "temperature"),  # the classic garbage frame
        (Tree("dht11", "51000\n", "45000\n"), "temperature"),
        (Tree("dht11", "21000\n", "101000\n"), "humidity"),
    ],
)
def test_out_of_range_is_implausible(
    tmp_path: Path, clock: FakeClock, tree: Tree, quantity: str
) -> None:
    device = make_iio(tmp_path, 0, "dht11@4", temp=tree.temp, humidity=tree.humidity)
    with pytest.raises(ImplausibleReading, match=f"{quantity} .* outside the chip's range"):
        dht(device, clock, model=tree.model).read()


def test_quantize_rounds_to_the_resolution_without_float_noise() -> None:
    assert quantize(21.4000001, 0.1) == 21.4
    assert quantize(0.1 + 0.2, 0.1) == 0.3
    assert quantize(23.6, 1.0) == 24.0
    assert quantize(-4.25, 0.1) in (-4.2, -4.3)


# --- retries and errors -----------------------------------------------------------------


def test_eio_is_retried_once_the_chip_is_ready(
    tmp_path: Path, sim: SimulatedHardware, clock: FakeClock
) -> None:
    device = make_iio(tmp_path, 0, "dht11@4")
    sim.serve_attr(device / "in_temp_input", scripted(errno.EIO, "22300\n"))
    sensor = dht(device, clock, hw=sim)
    assert sensor.read() == {"temperature": 22.3, "humidity": 45.3}
    assert clock.sleeps == [2.0]  # the retry waited for the DHT22's 2 s


def test_persistent_eio_is_a_transient_checksum_error(
    tmp_path: Path, sim: SimulatedHardware, clock: FakeClock
) -> None:
    device = make_iio(tmp_path, 0, "dht11@4")
    calls: list[int] = []

    def failing() -> str:
        calls.append(1)
        raise OSError(errno.EIO, "Input/output error")

    sim.serve_attr(device / "in_temp_input", failing)
    with pytest.raises(ChecksumError, match=r"EIO.*3 attempts") as info:
        dht(device, clock, hw=sim).read()
    assert isinstance(info.value, TransientError)
    assert len(calls) == 3
    assert clock.sleeps == [2.0, 2.0]


def test_etimedout_is_retried_then_a_bus_error(
    tmp_path: Path, sim: SimulatedHardware, clock: FakeClock
) -> None:
    device = make_iio(tmp_path, 0, "dht11@4")
    sim.serve_attr(device / "in_humidityrelative_input", scripted(errno.ETIMEDOUT))
    with pytest.raises(BusError, match="no reply"):
        dht(device, clock, hw=sim).read()


def test_eagain_then_success(tmp_path: Path, sim: SimulatedHardware, clock: FakeClock) -> None:
    device = make_iio(tmp_path, 0, "dht11@4")
    sim.serve_attr(device / "in_temp_input", scripted(errno.EAGAIN, errno.ETIMEDOUT, "20000\n"))
    assert dht(device, clock, hw=sim).read()["temperature"] == 20.0


def test_garbage_in_the_attribute_is_a_checksum_error(tmp_path: Path, clock: FakeClock) -> None:
    device = make_iio(tmp_path, 0, "dht11@4", temp="\n")
    with pytest.raises(ChecksumError, match="unreadable"):
        dht(device, clock).read()


# --- plausibility over time --------------------------------------------------------------


def test_an_impossible_jump_is_rejected_and_does_not_become_the_reference(
    tmp_path: Path, clock: FakeClock
) -> None:
    device = make_iio(tmp_path, 0, "dht11@4", temp="21000\n")
    sensor = dht(device, clock)
    assert sensor.read()["temperature"] == 21.0

    clock.now += 30
    (device / "in_temp_input").write_text("40000\n")  # +19 °C in 30 s: a bit error
    with pytest.raises(ImplausibleReading, match="temperature jumped 19"):
        sensor.read()

    clock.now += 30
    (device / "in_temp_input").write_text("21500\n")  # back to normal: still close to 21.0
    assert sensor.read()["temperature"] == 21.5


def test_a_humidity_jump_is_rejected_too(tmp_path: Path, clock: FakeClock) -> None:
    device = make_iio(tmp_path, 0, "dht11@4", humidity="40000\n")
    sensor = dht(device, clock)
    sensor.read()
    clock.now += 2
    (device / "in_humidityrelative_input").write_text("90000\n")
    with pytest.raises(ImplausibleReading, match="humidity jumped 50"):
        sensor.read()


def test_a_real_step_change_is_accepted_once_enough_time_has_passed(
    tmp_path: Path, clock: FakeClock
) -> None:
    device = make_iio(tmp_path, 0, "dht11@4", temp="21000\n")
    sensor = dht(device, clock)
    sensor.read()
    (device / "in_temp_input").write_text("40000\n")
    clock.now += 10 * 60  # carried into the greenhouse, or a long outage
    assert sensor.read()["temperature"] == 40.0


# --- pacing -----------------------------------------------------------------------------


def test_a_read_too_soon_waits_for_the_chip(tmp_path: Path, clock: FakeClock) -> None:
    device = make_iio(tmp_path, 0, "dht11@4")
    sensor = dht(device, clock)
    sensor.read()
    clock.now += 0.5
    sensor.read()
    assert clock.sleeps == [pytest.approx(1.5)]


def test_a_dht11_may_be_read_every_second(tmp_path: Path, clock: FakeClock) -> None:
    device = make_iio(tmp_path, 0, "dht11@4")
    sensor = dht(device, clock, model="dht11")
    sensor.read()
    clock.now += 1.0
    sensor.read()
    clock.now += 0.25
    sensor.read()
    assert clock.sleeps == [pytest.approx(0.75)]


# --- options ----------------------------------------------------------------------------


def test_interval_below_the_chips_minimum_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="below the DHT22's minimum of 2 s"):
        msgspec.convert({"driver": "dht22", "pin": 4, "interval": 1.5}, DHT22Options)
    ok = msgspec.convert({"driver": "dht11", "pin": 4, "interval": 1.0}, DHT11Options)
    assert ok.interval == 1.0


def test_options_default_to_a_30_second_interval() -> None:
    assert msgspec.convert({"driver": "dht22", "pin": 4}, DHT22Options).interval == 30.0


@pytest.mark.parametrize(
    "fields",
    [{}, {"pin": 4, "device": "/sys/bus/iio/devices/iio:device0"}],
)
def test_exactly_one_of_pin_and_device(fields: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError, match="exactly one of `pin` and `device`"):
        msgspec.convert({"driver": "dht22", **fields}, DHT22Options)


def test_a_negative_pin_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="pin"):
        msgspec.convert({"driver": "dht11", "pin": -1}, DHT11Options)


def test_specs_declare_resolution_and_minimum_interval() -> None:
    assert DHT22_SPEC.quantities["temperature"].resolution == 0.1
    assert DHT22_SPEC.quantities["humidity"].unit == "%RH"
    assert DHT11_SPEC.quantities["humidity"].resolution == 1.0
    assert (DHT22_SPEC.min_interval_s, DHT11_SPEC.min_interval_s) == (2.0, 1.0)
    assert "dtoverlay=dht11,gpiopin=4" in DHT22_SPEC.sample


# --- emulator ---------------------------------------------------------------------------


def test_emulated_sensor_reads_its_simulated_values(sim: SimulatedHardware) -> None:
    options = msgspec.convert(
        {
            "driver": "dht22",
            "pin": 4,
            "simulation": {"temperature": 21.37, "humidity": [40, 60]},
        },
        DHT22Options,
    )
    DHT22_SPEC.emulate(options, sim)
    with DHT22_SPEC.open(options, sim) as sensor:
        assert isinstance(sensor, DHT)
        values = sensor.read()
    assert values["temperature"] == 21.4
    assert 40.0 <= values["humidity"] <= 60.0
    assert values["humidity"] == quantize(values["humidity"], 0.1)


def test_emulated_dht11_is_quantized_to_whole_units(sim: SimulatedHardware) -> None:
    options = msgspec.convert(
        {"driver": "dht11", "pin": 17, "simulation": {"temperature": 21.6}},
        DHT11Options,
    )
    emulate_dht(options, sim)
    sensor = DHT11_SPEC.open(options, sim)
    assert isinstance(sensor, DHT)
    values = sensor.read()
    assert values["temperature"] == 22.0
    assert values["humidity"] == round(values["humidity"])


def test_emulated_sensors_get_distinct_iio_devices(sim: SimulatedHardware) -> None:
    a = msgspec.convert({"driver": "dht22", "pin": 4}, DHT22Options)
    b = msgspec.convert({"driver": "dht11", "pin": 17}, DHT11Options)
    emulate_dht(a, sim)
    emulate_dht(b, sim)
    emulate_dht(a, sim)  # again (a restart): same device
    devices = sorted(p.name for p in (sim.root / IIO).iterdir())
    assert devices == ["iio:device0", "iio:device1"]
    assert find_device(4, sim).name == "iio:device0"
    assert find_device(17, sim).name == "iio:device1"


def test_emulator_failing_every_read_gives_transient_errors_never_a_crash(
    sim: SimulatedHardware, clock: FakeClock
) -> None:
    options = msgspec.convert(
        {"driver": "dht22", "pin": 4, "simulation": {"fail_rate": 1.0}}, DHT22Options
    )
    emulate_dht(options, sim)
    sensor = dht(find_device(4, sim), clock, hw=sim)
    for _ in range(5):
        with pytest.raises((ChecksumError, BusError)):
            sensor.read()
