"""The SHT4x driver: the datasheet's formulas and cropping, real bytes through a fake bus,
the open sequence, NACKs while converting, and the emulator behind ``--simulate``."""

from __future__ import annotations

import errno

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from drivers import registry, sht4x
from drivers.errors import BusError, ChecksumError, HardwareConfigError, TransientError
from drivers.hardware import SimulatedHardware
from drivers.sht4x import (
    EmulatedSHT4x,
    SHT4x,
    SHT4xOptions,
    humidity_from_raw,
    raw_from_humidity,
    raw_from_temperature,
    temperature_from_raw,
)
from drivers.sim.fake_smbus import CommandChip, FakeSMBus, nack
from drivers.sim.signal import SimulatedSignal
from drivers.testing import check_driver
from tests.drivers.fakeclock import FakeClock


class ScriptedSHT4x(CommandChip):
    """Answers each command with bytes a test wrote down, CRCs included."""

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self.answers = answers
        self.pending = b""

    def command(self, data: bytes) -> None:
        self.pending = self.answers.get(data, b"")

    def answer(self, length: int) -> bytes:
        if not self.pending:
            raise nack()
        out, self.pending = self.pending[:length], b""
        return out


def scripted(measurement: bytes, serial: bytes = b"\x12\x34\x37\xab\xcd\x6f") -> SHT4x:
    bus = FakeSMBus()
    bus.attach(0x44, ScriptedSHT4x({b"\x89": serial, b"\xfd": measurement}))
    clock = FakeClock()
    return SHT4x(bus=bus, clock=clock, sleep=clock.sleep)


# -- the datasheet ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "celsius"), [(0x0000, -45.0), (0xFFFF, 130.0), (0x6666, 25.0), (0x8000, 42.501335)]
)
def test_temperature_follows_the_datasheet_formula_and_is_never_clamped(
    raw: int, celsius: float
) -> None:
    assert temperature_from_raw(raw) == pytest.approx(celsius, abs=1e-6)


@pytest.mark.parametrize(
    ("raw", "percent"),
    [
        (0x6666, 44.0),
        (0x8000, 56.500954),
        (0x0C4A, 0.000610),  # 3146: the lowest word that is not cropped
        (0x0000, 0.0),  # -6 %RH before cropping
        (0x0C49, 0.0),  # -0.0013 %RH before cropping
        (0xFFFF, 100.0),  # 119 %RH before cropping
        (0xD6F9, 98.968719),
    ],
)
def test_humidity_is_minus_6_plus_125_s_over_65535_cropped_to_0_100(
    raw: int, percent: float
) -> None:
    assert humidity_from_raw(raw) == pytest.approx(percent, abs=1e-6)


@given(st.integers(0, 0xFFFF))
def test_temperature_words_round_trip(raw: int) -> None:
    assert raw_from_temperature(temperature_from_raw(raw)) == raw


@given(st.integers(0x0C4A, 0xD709))
def test_humidity_words_inside_0_100_round_trip(raw: int) -> None:
    assert raw_from_humidity(humidity_from_raw(raw)) == raw


# -- real bytes through the fake bus ---------------------------------------------------------


def test_a_measurement_of_real_bytes_gives_the_datasheet_values() -> None:
    # T = RH = 0x6666 (CRC 0x93): 25.00 °C and 44.00 %RH.
    sensor = scripted(b"\x66\x66\x93\x66\x66\x93")
    assert sensor.read() == {"temperature": 25.0, "humidity": 44.0}
    assert sensor.serial_number == 0x1234ABCD


def test_condensation_reads_100_percent_not_119() -> None:
    sensor = scripted(b"\x66\x66\x93\xff\xff\xac")
    assert sensor.read()["humidity"] == 100.0


@pytest.mark.parametrize(
    "measurement",
    [b"\x66\x66\x92\x66\x66\x93", b"\x66\x66\x93\x66\x67\x93", b"\x66\x66\x93\x66"],
)
def test_a_corrupted_or_short_answer_is_a_checksum_error_never_a_reading(
    measurement: bytes,
) -> None:
    with pytest.raises(ChecksumError):
        scripted(measurement).read()


def test_a_corrupted_serial_number_is_a_checksum_error_at_open() -> None:
    with pytest.raises(ChecksumError):
        scripted(b"", serial=b"\x12\x34\x38\xab\xcd\x6f")


def emulated(
    address: int = 0x44, **chip_kwargs: object
) -> tuple[FakeSMBus, EmulatedSHT4x, FakeClock]:
    clock = FakeClock()
    chip = EmulatedSHT4x(clock=clock, **chip_kwargs)  # type: ignore[arg-type]
    bus = FakeSMBus()
    bus.attach(address, chip)
    return bus, chip, clock


def open_emulated(bus: FakeSMBus, clock: FakeClock, **kwargs: object) -> SHT4x:
    return SHT4x(bus=bus, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def test_open_soft_resets_and_reads_the_serial_number() -> None:
    bus, chip, clock = emulated(serial_number=0xCAFEF00D)
    sensor = open_emulated(bus, clock)
    assert chip.commands == [b"\x94", b"\x89"]
    assert sensor.serial_number == 0xCAFEF00D


@pytest.mark.parametrize(
    ("precision", "command"), [("high", b"\xfd"), ("medium", b"\xf6"), ("low", b"\xe0")]
)
def test_each_precision_sends_its_command(precision: str, command: bytes) -> None:
    bus, chip, clock = emulated()
    open_emulated(bus, clock, precision=precision).read()
    assert chip.commands[-1] == command


def test_the_driver_polls_while_the_chip_nacks_its_read_header() -> None:
    # 8 ms: longer than the typical 6.9 ms, inside the 8.3 ms maximum.
    bus, _, clock = emulated(humidity=SimulatedSignal(33.3), measuring_s=0.008)
    sensor = open_emulated(bus, clock)
    assert sensor.read()["humidity"] == pytest.approx(33.3, abs=0.01)


def test_a_chip_that_never_finishes_is_a_bus_error_after_the_maximum_time() -> None:
    bus, _, clock = emulated(measuring_s=float("inf"))
    sensor = open_emulated(bus, clock)
    start = clock.now
    with pytest.raises(BusError):
        sensor.read()
    assert 0.0083 <= clock.now - start <= 0.0083 * 1.25 + 0.005 + 0.002


def test_a_result_is_sent_once() -> None:
    _, chip, clock = emulated()
    chip.command(b"\xfd")
    clock.advance(0.01)
    chip.answer(6)
    with pytest.raises(OSError):
        chip.answer(6)


@pytest.mark.parametrize("error", [errno.EREMOTEIO, errno.EIO])
def test_a_nack_or_eio_on_the_command_is_a_transient_bus_error(error: int) -> None:
    bus, _, clock = emulated()
    sensor = open_emulated(bus, clock)
    bus.fail_command(0x44, b"\xfd", error=error)
    with pytest.raises(BusError) as e:
        sensor.read()
    assert e.value.errno == error
    assert sensor.read()


def test_nobody_at_the_address_is_a_bus_error_at_open() -> None:
    bus, _, clock = emulated(address=0x46)
    with pytest.raises(BusError):
        open_emulated(bus, clock, address=0x44)


def test_the_emulators_corrupted_crc_is_caught() -> None:
    bus, chip, clock = emulated()
    sensor = open_emulated(bus, clock)
    chip.corrupt_next = 1
    with pytest.raises(ChecksumError):
        sensor.read()


def test_an_unknown_precision_is_refused() -> None:
    bus, _, clock = emulated()
    with pytest.raises(HardwareConfigError):
        open_emulated(bus, clock, precision="ultra")


def test_close_is_idempotent_and_a_closed_sensor_refuses_to_read() -> None:
    bus, _, clock = emulated()
    with open_emulated(bus, clock) as sensor:
        sensor.read()
    sensor.close()
    with pytest.raises(ValueError, match="closed"):
        sensor.read()


@given(st.floats(-40.0, 125.0), st.floats(0.0, 100.0))
def test_any_physical_value_comes_back_through_emulator_and_driver(
    celsius: float, percent: float
) -> None:
    bus, _, clock = emulated(
        temperature=SimulatedSignal(celsius), humidity=SimulatedSignal(percent)
    )
    reading = open_emulated(bus, clock).read()
    assert reading["temperature"] == pytest.approx(celsius, abs=0.005 + 175 / 65535 / 2)
    assert reading["humidity"] == pytest.approx(percent, abs=0.005 + 125 / 65535 / 2)


# -- options, registry, simulation -----------------------------------------------------------


def options(**config: object) -> SHT4xOptions:
    return msgspec.convert({"driver": "sht4x", **config}, SHT4xOptions)


def test_the_sample_is_valid_options() -> None:
    (config,) = yaml.safe_load(sht4x.SAMPLE).values()
    config.pop("interval")
    assert msgspec.convert(config, SHT4xOptions).precision == "high"


@pytest.mark.parametrize("config", [{"address": 0x47}, {"precision": "max"}, {"heater": True}])
def test_options_refuse_what_the_chip_does_not_have(config: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        options(**config)


def test_registered_with_its_three_addresses() -> None:
    assert registry.DRIVERS["sht4x"] is sht4x.SPEC
    assert sht4x.SPEC.i2c_addresses == (0x44, 0x45, 0x46)


def test_simulate_gives_the_configured_constants_back() -> None:
    opts = options(address=0x46, simulation={"temperature": -12.5, "humidity": 87.25})
    with SimulatedHardware(seed=1) as hardware:
        sht4x.SPEC.emulate(opts, hardware)
        with sht4x.SPEC.open(opts, hardware) as sensor:
            assert sensor.resource == "i2c-1"
            assert isinstance(sensor, SHT4x)
            assert sensor.read() == {"temperature": -12.5, "humidity": 87.25}


def test_a_simulated_humidity_above_100_reads_100() -> None:
    opts = options(simulation={"humidity": 110.0})
    with SimulatedHardware() as hardware:
        sht4x.SPEC.emulate(opts, hardware)
        sensor = sht4x.SPEC.open(opts, hardware)
        assert isinstance(sensor, SHT4x)
        assert sensor.read()["humidity"] == 100.0


def test_a_fail_rate_gives_only_transient_errors() -> None:
    opts = options(simulation={"temperature": 20.0, "humidity": 40.0, "fail_rate": 0.5})
    with SimulatedHardware(seed=5) as hardware:
        sht4x.SPEC.emulate(opts, hardware)
        sensor = sht4x.SPEC.open(opts, hardware)
        assert isinstance(sensor, SHT4x)
        kinds: set[type[Exception]] = set()
        for _ in range(30):
            try:
                assert sensor.read() == {"temperature": 20.0, "humidity": 40.0}
            except TransientError as e:
                kinds.add(type(e))
    assert kinds == {BusError, ChecksumError}


def test_passes_the_conformance_kit() -> None:
    check_driver(sht4x.SPEC)


def test_passes_the_conformance_kit_with_other_settings() -> None:
    check_driver(sht4x.SPEC, options={"precision": "medium", "address": 0x45})
