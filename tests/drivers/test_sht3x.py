"""The SHT3x driver: the datasheet's CRC and conversion, real bytes through a fake bus, the
open sequence, the chip's quirks (NACK while measuring, a result read only once) and the
emulator behind ``--simulate``."""

from __future__ import annotations

import errno

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from drivers import registry, sht3x
from drivers.errors import BusError, ChecksumError, HardwareConfigError, TransientError, WrongDevice
from drivers.hardware import SimulatedHardware
from drivers.protocols.crc import sensirion_words
from drivers.sht3x import (
    EmulatedSHT3x,
    SHT3x,
    SHT3xOptions,
    humidity_from_raw,
    raw_from_humidity,
    raw_from_temperature,
    temperature_from_raw,
)
from drivers.sim.fake_smbus import CommandChip, FakeSMBus, nack
from drivers.sim.signal import SimulatedSignal
from drivers.testing import check_driver
from tests.drivers.fakeclock import FakeClock


class ScriptedSHT3x(CommandChip):
    """Answers each command with bytes a test wrote down (CRCs included, by hand); a list
    gives one answer per time the command is sent, the last one repeated."""

    def __init__(self, answers: dict[bytes, bytes | list[bytes]]) -> None:
        self.answers = answers
        self.pending = b""

    def command(self, data: bytes) -> None:
        answer = self.answers.get(data, b"")
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        self.pending = answer

    def answer(self, length: int) -> bytes:
        if not self.pending:
            raise nack()
        out, self.pending = self.pending[:length], b""
        return out


def scripted(measurement: bytes) -> SHT3x:
    """An SHT3x opened on a chip that sends the datasheet-style bytes below."""
    chip = ScriptedSHT3x(
        {
            # Status 0x8010 (alert pending, reset detected: its power-on value, CRC 0xE1),
            # then 0x0000 (cleared, heater off: CRC 0x81).
            b"\xf3\x2d": [b"\x80\x10\xe1", b"\x00\x00\x81"],
            # Serial number 0x0A1B 0x2C3D.
            b"\x36\x82": b"\x0a\x1b\xc6\x2c\x3d\x60",
            b"\x24\x00": measurement,
        }
    )
    bus = FakeSMBus()
    bus.attach(0x44, chip)
    clock = FakeClock()
    return SHT3x(bus=bus, clock=clock, sleep=clock.sleep)


# -- the datasheet ---------------------------------------------------------------------------


def test_the_datasheet_crc_example_checks() -> None:
    # Datasheet 4.12, table 20: CRC(0xBEEF) = 0x92.
    assert sensirion_words(b"\xbe\xef\x92", "sht3x") == [0xBEEF]
    with pytest.raises(ChecksumError):
        sensirion_words(b"\xbe\xef\x93", "sht3x")


@pytest.mark.parametrize(
    ("raw", "celsius"),
    [(0x0000, -45.0), (0xFFFF, 130.0), (0x6666, 25.0), (0x6D5A, 29.753185)],
)
def test_temperature_follows_the_datasheet_formula(raw: int, celsius: float) -> None:
    assert temperature_from_raw(raw) == pytest.approx(celsius, abs=1e-6)


@pytest.mark.parametrize(
    ("raw", "percent"), [(0x0000, 0.0), (0xFFFF, 100.0), (0x8000, 50.000763), (0x7FFF, 49.999237)]
)
def test_humidity_follows_the_datasheet_formula(raw: int, percent: float) -> None:
    assert humidity_from_raw(raw) == pytest.approx(percent, abs=1e-6)


@given(st.integers(0, 0xFFFF))
def test_raw_words_round_trip_through_the_conversion(raw: int) -> None:
    assert raw_from_temperature(temperature_from_raw(raw)) == raw
    assert raw_from_humidity(humidity_from_raw(raw)) == raw


# -- real bytes through the fake bus ---------------------------------------------------------


def test_a_measurement_of_real_bytes_gives_the_datasheet_values() -> None:
    # T = 0x6666 (CRC 0x93) -> 25.00 °C; RH = 0x8000 (CRC 0xA2) -> 50.00 %RH.
    sensor = scripted(b"\x66\x66\x93\x80\x00\xa2")
    assert sensor.read() == {"temperature": 25.0, "humidity": 50.0}
    assert sensor.serial_number == 0x0A1B2C3D


def test_a_corrupted_temperature_crc_is_a_checksum_error_never_a_reading() -> None:
    sensor = scripted(b"\x66\x66\x94\x80\x00\xa2")
    with pytest.raises(ChecksumError, match="word 0"):
        sensor.read()


def test_a_corrupted_humidity_crc_is_a_checksum_error_never_a_reading() -> None:
    sensor = scripted(b"\x66\x66\x93\x80\x00\xa3")
    with pytest.raises(ChecksumError, match="word 1"):
        sensor.read()


def test_a_short_answer_is_a_checksum_error() -> None:
    sensor = scripted(b"\x66\x66\x93\x80")
    with pytest.raises(ChecksumError):
        sensor.read()


def emulated(
    clock: FakeClock | None = None, address: int = 0x44, **chip_kwargs: object
) -> tuple[FakeSMBus, EmulatedSHT3x, FakeClock]:
    clock = clock or FakeClock()
    chip = EmulatedSHT3x(clock=clock, **chip_kwargs)  # type: ignore[arg-type]
    bus = FakeSMBus()
    bus.attach(address, chip)
    return bus, chip, clock


def open_emulated(bus: FakeSMBus, clock: FakeClock, **kwargs: object) -> SHT3x:
    return SHT3x(bus=bus, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def test_open_soft_resets_checks_and_clears_the_status_sets_the_heater_and_reads_the_serial() -> (
    None
):
    bus, _, clock = emulated(serial_number=0xDEADBEEF)
    sensor = open_emulated(bus, clock)
    writes = [data for _, kind, data in bus.log if kind == "w"]
    assert writes == [
        b"\x30\xa2",  # soft reset
        b"\xf3\x2d",  # status: must say "reset detected"
        b"\x30\x41",  # clear status
        b"\x30\x66",  # heater off
        b"\xf3\x2d",  # status: heater off, command processed
        b"\x36\x82",  # serial number, clock stretching disabled
    ]
    assert sensor.serial_number == 0xDEADBEEF
    assert clock.sleeps[0] >= sht3x.SOFT_RESET_S


@pytest.mark.parametrize(
    ("repeatability", "command"),
    [("high", b"\x24\x00"), ("medium", b"\x24\x0b"), ("low", b"\x24\x16")],
)
def test_each_repeatability_sends_its_single_shot_command_without_clock_stretching(
    repeatability: str, command: bytes
) -> None:
    bus, chip, clock = emulated()
    sensor = open_emulated(bus, clock, repeatability=repeatability)
    sensor.read()
    assert chip.commands[-1] == command
    assert not command.startswith(b"\x2c")  # 0x2Cxx would stretch the clock


def test_the_driver_polls_while_the_chip_nacks_its_read_header() -> None:
    # 14 ms: longer than the typical 12.5 ms, inside the datasheet's 15 ms maximum.
    bus, _, clock = emulated(temperature=SimulatedSignal(22.5), measuring_s=0.014)
    sensor = open_emulated(bus, clock)
    before = len(clock.sleeps)
    reading = sensor.read()
    assert reading["temperature"] == pytest.approx(22.5, abs=0.01)
    assert clock.sleeps[before] == sht3x.TIMING["high"].typical_s
    assert len(clock.sleeps) - before == 3  # typical time, then two 1 ms polls


def test_a_chip_that_never_finishes_is_a_bus_error_after_the_maximum_time() -> None:
    bus, _, clock = emulated(measuring_s=float("inf"))
    sensor = open_emulated(bus, clock)
    start = clock.now
    with pytest.raises(BusError):
        sensor.read()
    waited = clock.now - start
    assert 0.015 <= waited <= 0.015 * 1.25 + 0.005 + 0.002


def test_a_result_is_sent_once_so_a_second_read_is_nacked_not_stale() -> None:
    _, chip, clock = emulated()
    chip.command(b"\x24\x00")
    clock.advance(0.02)
    chip.answer(6)
    with pytest.raises(OSError) as e:
        chip.answer(6)
    assert e.value.errno == errno.EREMOTEIO


def test_a_nack_on_the_measurement_command_is_a_bus_error() -> None:
    bus, _, clock = emulated()
    sensor = open_emulated(bus, clock)
    bus.fail_command(0x44, b"\x24\x00")
    with pytest.raises(BusError):
        sensor.read()
    assert sensor.read()  # transient: the next read works


@pytest.mark.parametrize("error", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT])
def test_every_oserror_on_the_bus_becomes_a_bus_error(error: int) -> None:
    bus, _, clock = emulated()
    sensor = open_emulated(bus, clock)
    bus.fail_command(0x44, b"\x24\x00", error=error)
    with pytest.raises(BusError) as e:
        sensor.read()
    assert isinstance(e.value, TransientError)
    assert e.value.errno == error


def test_nobody_at_the_address_is_a_bus_error_at_open() -> None:
    bus, _, clock = emulated(address=0x45)
    with pytest.raises(BusError):
        open_emulated(bus, clock, address=0x44)


def test_a_chip_whose_status_shows_no_reset_is_not_an_sht3x() -> None:
    bus = FakeSMBus()
    bus.attach(0x44, ScriptedSHT3x({b"\xf3\x2d": b"\x00\x00\x81"}))
    clock = FakeClock()
    with pytest.raises(WrongDevice, match="not an SHT3x"):
        SHT3x(bus=bus, clock=clock, sleep=clock.sleep)


def test_a_corrupted_status_at_open_is_a_checksum_error() -> None:
    bus = FakeSMBus()
    bus.attach(0x44, ScriptedSHT3x({b"\xf3\x2d": b"\x80\x10\xe0"}))
    clock = FakeClock()
    with pytest.raises(ChecksumError):
        SHT3x(bus=bus, clock=clock, sleep=clock.sleep)


def test_the_emulators_corrupted_crc_is_caught() -> None:
    bus, chip, clock = emulated()
    sensor = open_emulated(bus, clock)
    chip.corrupt_next = 1
    with pytest.raises(ChecksumError):
        sensor.read()
    assert sensor.read()


def test_the_heater_is_switched_on_checked_and_switched_off_at_close() -> None:
    bus, chip, clock = emulated()
    sensor = open_emulated(bus, clock, heater=True)
    assert b"\x30\x6d" in chip.commands
    assert sensor.read_status() & sht3x.STATUS_HEATER_ON
    sensor.close()
    assert chip.commands[-1] == b"\x30\x66"
    assert not chip.status & sht3x.STATUS_HEATER_ON
    sensor.close()
    assert chip.commands.count(b"\x30\x66") == 1  # idempotent


def test_a_heater_that_does_not_switch_is_refused() -> None:
    bus, chip, clock = emulated()

    def ignore_heater(data: bytes) -> None:
        if data != b"\x30\x6d":
            EmulatedSHT3x.command(chip, data)

    chip.command = ignore_heater  # type: ignore[method-assign]
    with pytest.raises(WrongDevice, match="heater"):
        open_emulated(bus, clock, heater=True)


def test_a_closed_sensor_refuses_to_read() -> None:
    bus, _, clock = emulated()
    sensor = open_emulated(bus, clock)
    with sensor:
        sensor.read()
    with pytest.raises(ValueError, match="closed"):
        sensor.read()


def test_an_unknown_repeatability_is_refused() -> None:
    bus, _, clock = emulated()
    with pytest.raises(HardwareConfigError):
        open_emulated(bus, clock, repeatability="ultra")


@given(st.floats(-40.0, 125.0), st.floats(0.0, 100.0))
def test_any_physical_value_comes_back_through_emulator_and_driver(
    celsius: float, percent: float
) -> None:
    bus, _, clock = emulated(
        temperature=SimulatedSignal(celsius), humidity=SimulatedSignal(percent)
    )
    reading = open_emulated(bus, clock).read()
    assert reading["temperature"] == pytest.approx(celsius, abs=0.005 + 175 / 65535 / 2)
    assert reading["humidity"] == pytest.approx(percent, abs=0.005 + 100 / 65535 / 2)


# -- options, registry, simulation -----------------------------------------------------------


def options(**config: object) -> SHT3xOptions:
    return msgspec.convert({"driver": "sht3x", **config}, SHT3xOptions)


def test_the_sample_is_valid_options() -> None:
    (config,) = yaml.safe_load(sht3x.SAMPLE).values()
    config.pop("interval")  # "30s" is parsed by the agent's config layer
    parsed = msgspec.convert(config, SHT3xOptions)
    assert parsed.address == 0x44
    assert parsed.repeatability == "high"


@pytest.mark.parametrize("config", [{"address": 0x46}, {"repeatability": "ultra"}, {"x": 1}])
def test_options_refuse_what_the_chip_does_not_have(config: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        options(**config)


def test_registered_with_its_addresses_and_home_assistant_classes() -> None:
    assert registry.DRIVERS["sht3x"] is sht3x.SPEC
    assert sht3x.SPEC.i2c_addresses == (0x44, 0x45)
    assert sht3x.SPEC.quantities["temperature"].device_class == "temperature"
    assert sht3x.SPEC.quantities["humidity"].device_class == "humidity"


def test_simulate_gives_the_configured_constants_back() -> None:
    opts = options(address=0x45, simulation={"temperature": 19.25, "humidity": 61.5})
    with SimulatedHardware(seed=1) as hardware:
        sht3x.SPEC.emulate(opts, hardware)
        with sht3x.SPEC.open(opts, hardware) as sensor:
            assert isinstance(sensor, SHT3x)
            assert sensor.resource == "i2c-1"
            assert sensor.read() == {"temperature": 19.25, "humidity": 61.5}


def test_simulated_values_for_unknown_quantities_are_refused() -> None:
    with SimulatedHardware() as hardware, pytest.raises(HardwareConfigError, match="pressure"):
        sht3x.SPEC.emulate(options(simulation={"pressure": 1000.0}), hardware)


def test_a_fail_rate_gives_only_transient_errors_and_otherwise_true_readings() -> None:
    opts = options(simulation={"temperature": 20.0, "humidity": 40.0, "fail_rate": 0.5})
    with SimulatedHardware(seed=3) as hardware:
        sht3x.SPEC.emulate(opts, hardware)
        sensor = sht3x.SPEC.open(opts, hardware)
        assert isinstance(sensor, SHT3x)
        kinds: set[type[Exception]] = set()
        for _ in range(30):
            try:
                assert sensor.read() == {"temperature": 20.0, "humidity": 40.0}
            except TransientError as e:
                kinds.add(type(e))
    assert kinds == {BusError, ChecksumError}


def test_passes_the_conformance_kit() -> None:
    check_driver(sht3x.SPEC)


def test_passes_the_conformance_kit_with_other_settings() -> None:
    check_driver(sht3x.SPEC, options={"repeatability": "low", "heater": True})
