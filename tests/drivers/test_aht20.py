"""The AHT20 driver: 20-bit decoding of real captured frames, the CRC-8, the start-up
calibration check and 0xBE init, the busy bit and its stale data, and the emulator."""

from __future__ import annotations

import errno

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from drivers import aht20, registry
from drivers.aht20 import (
    AHT20,
    AHT20Options,
    EmulatedAHT20,
    decode,
    encode,
    humidity_from_raw,
    raw_from_humidity,
    raw_from_temperature,
    temperature_from_raw,
)
from drivers.errors import (
    BusError,
    ChecksumError,
    ImplausibleReading,
    MeasurementTimeout,
    TransientError,
    WrongDevice,
)
from drivers.hardware import SimulatedHardware
from drivers.sim.fake_smbus import CommandChip, FakeSMBus
from drivers.sim.signal import SimulatedSignal
from drivers.testing import check_driver
from tests.drivers.fakeclock import FakeClock

#: Frames read from real AHT20s (status, 20-bit RH, 20-bit T, CRC), published in write-ups
#: of the chip (B with its 57.69 %RH); their CRC bytes check with polynomial 0x31, init 0xFF.
CAPTURE_A = bytes([0x1C, 0x26, 0x9A, 0x76, 0x42, 0xE7, 0x76])
CAPTURE_B = bytes.fromhex("1893ac952ac5b3")


# -- decoding --------------------------------------------------------------------------------


def test_a_captured_frame_decodes_to_its_20_bit_values() -> None:
    status, raw_rh, raw_t = decode(CAPTURE_B)
    assert status == 0x18
    assert raw_rh == 604873  # 0b1001_0011_1010_1100_1001: B1, B2, B3[7:4]
    assert raw_t == 338629  # 0b0101_0010_1010_1100_0101: B3[3:0], B4, B5
    assert humidity_from_raw(raw_rh) == pytest.approx(57.6851, abs=1e-4)
    assert temperature_from_raw(raw_t) == pytest.approx(14.5884, abs=1e-4)


def test_another_captured_frame_decodes() -> None:
    status, raw_rh, raw_t = decode(CAPTURE_A)
    assert status == 0x1C
    assert humidity_from_raw(raw_rh) == pytest.approx(15.0794, abs=1e-4)
    assert temperature_from_raw(raw_t) == pytest.approx(28.2667, abs=1e-4)


@pytest.mark.parametrize(
    ("raw", "celsius", "percent"),
    [(0, -50.0, 0.0), ((1 << 20) - 1, 149.99981, 99.999905), (1 << 19, 50.0, 50.0)],
)
def test_the_datasheet_formulas_at_the_ends_of_the_range(
    raw: int, celsius: float, percent: float
) -> None:
    assert temperature_from_raw(raw) == pytest.approx(celsius, abs=1e-5)
    assert humidity_from_raw(raw) == pytest.approx(percent, abs=1e-5)


@pytest.mark.parametrize("bit", range(56))
def test_any_single_bit_flip_in_a_frame_is_a_checksum_error(bit: int) -> None:
    frame = bytearray(CAPTURE_B)
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ChecksumError):
        decode(bytes(frame))


def test_a_short_frame_is_a_checksum_error() -> None:
    with pytest.raises(ChecksumError, match="7 bytes"):
        decode(CAPTURE_B[:6])


@given(st.integers(0, 0xFF), st.integers(0, (1 << 20) - 1), st.integers(0, (1 << 20) - 1))
def test_frames_round_trip(status: int, raw_rh: int, raw_t: int) -> None:
    assert decode(encode(status, raw_rh, raw_t)) == (status, raw_rh, raw_t)


@given(st.integers(0, (1 << 20) - 1))
def test_raw_values_round_trip_through_the_conversion(raw: int) -> None:
    assert raw_from_humidity(humidity_from_raw(raw)) == raw
    assert raw_from_temperature(temperature_from_raw(raw)) == raw


# -- the driver on a fake bus ----------------------------------------------------------------


class CapturedAHT20(CommandChip):
    """Answers status reads with 0x18 and measurement reads with a captured frame."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.triggered = False

    def command(self, data: bytes) -> None:
        self.triggered = self.triggered or data == aht20.TRIGGER

    def answer(self, length: int) -> bytes:
        return self.frame[:length] if self.triggered else bytes([0x18])


def test_a_captured_frame_through_the_bus_gives_its_published_values() -> None:
    bus = FakeSMBus()
    bus.attach(0x38, CapturedAHT20(CAPTURE_B))
    clock = FakeClock()
    sensor = AHT20(bus=bus, clock=clock, sleep=clock.sleep)
    assert sensor.read() == {"temperature": 14.59, "humidity": 57.69}


def test_a_corrupted_crc_through_the_bus_is_a_checksum_error() -> None:
    bus = FakeSMBus()
    bus.attach(0x38, CapturedAHT20(CAPTURE_B[:6] + b"\xb2"))
    clock = FakeClock()
    sensor = AHT20(bus=bus, clock=clock, sleep=clock.sleep)
    with pytest.raises(ChecksumError, match="CRC"):
        sensor.read()


def emulated(**chip_kwargs: object) -> tuple[FakeSMBus, EmulatedAHT20, FakeClock]:
    clock = FakeClock()
    chip = EmulatedAHT20(clock=clock, **chip_kwargs)  # type: ignore[arg-type]
    bus = FakeSMBus()
    bus.attach(0x38, chip)
    return bus, chip, clock


def open_emulated(bus: FakeSMBus, clock: FakeClock) -> AHT20:
    return AHT20(bus=bus, clock=clock, sleep=clock.sleep)


def test_an_uncalibrated_chip_gets_the_0xbe_init_never_the_aht10s_0xe1() -> None:
    bus, chip, clock = emulated(calibrated=False)
    open_emulated(bus, clock)
    assert chip.commands == [b"\xba", b"\xbe\x08\x00"]
    # The status is read by a plain read (the datasheet's "0x71" is the read header).
    assert [kind for _, kind, _ in bus.log] == ["w", "r", "w", "r"]
    assert chip.status & aht20.STATUS_CALIBRATED


def test_a_calibrated_chip_is_not_initialised_again() -> None:
    bus, chip, clock = emulated(calibrated=True)
    open_emulated(bus, clock)
    assert chip.commands == [b"\xba"]


def test_the_emulator_nacks_the_aht10_init_as_a_current_aht20_does() -> None:
    bus, _, _ = emulated()
    with pytest.raises(OSError) as e:
        bus.write_i2c_block_data(0x38, 0xE1, [0x08, 0x00])
    assert e.value.errno == errno.EREMOTEIO


def test_a_chip_that_stays_uncalibrated_is_refused() -> None:
    bus, _, clock = emulated(calibration_sticks=False)
    with pytest.raises(WrongDevice, match="calibration bit"):
        open_emulated(bus, clock)


def test_a_measurement_triggers_waits_80_ms_and_reads_seven_bytes() -> None:
    bus, _, clock = emulated(temperature=SimulatedSignal(-10.5), humidity=SimulatedSignal(12.0))
    sensor = open_emulated(bus, clock)
    before = len(bus.log)
    assert sensor.read() == {"temperature": -10.5, "humidity": 12.0}
    assert bus.log[before] == (0x38, "w", b"\xac\x33\x00")
    assert len(bus.log[before + 1][2]) == 7
    assert aht20.MEASUREMENT_S in clock.sleeps


def test_stale_data_behind_the_busy_bit_is_never_returned() -> None:
    bus, chip, clock = emulated(temperature=SimulatedSignal(30.0), measuring_s=0.11)
    sensor = open_emulated(bus, clock)
    first = sensor.read()
    chip.temperature = SimulatedSignal(5.0)
    # The next conversion takes 110 ms: at 80 ms the frame carries the busy bit and the
    # previous (30 °C) values; the driver must wait for the new ones.
    second = sensor.read()
    assert first["temperature"] == 30.0
    assert second["temperature"] == 5.0
    busy_frames = [d for _, k, d in bus.log if k == "r" and len(d) == 7 and d[0] & 0x80]
    assert busy_frames, "the test must have seen the busy bit"


def test_a_busy_bit_that_never_clears_is_a_measurement_timeout() -> None:
    bus, _, clock = emulated(measuring_s=float("inf"))
    sensor = open_emulated(bus, clock)
    with pytest.raises(MeasurementTimeout):
        sensor.read()


def test_a_lost_calibration_is_refused_then_the_chip_is_initialised_again() -> None:
    bus, chip, clock = emulated(calibrated=True, humidity=SimulatedSignal(44.0))
    sensor = open_emulated(bus, clock)
    chip.brown_out()
    with pytest.raises(ImplausibleReading, match="calibration"):
        sensor.read()
    assert sensor.read()["humidity"] == 44.0
    assert chip.commands[-2:] == [b"\xbe\x08\x00", b"\xac\x33\x00"]


def test_a_nack_on_the_trigger_is_a_transient_bus_error() -> None:
    bus, _, clock = emulated()
    sensor = open_emulated(bus, clock)
    bus.fail_command(0x38, b"\xac")
    with pytest.raises(BusError):
        sensor.read()
    assert sensor.read()


def test_nobody_at_0x38_is_a_bus_error_at_open() -> None:
    clock = FakeClock()
    with pytest.raises(BusError):
        AHT20(bus=FakeSMBus(), clock=clock, sleep=clock.sleep)


def test_close_is_idempotent_and_a_closed_sensor_refuses_to_read() -> None:
    bus, _, clock = emulated()
    with open_emulated(bus, clock) as sensor:
        sensor.read()
    sensor.close()
    with pytest.raises(ValueError, match="closed"):
        sensor.read()


@given(st.floats(-40.0, 85.0), st.floats(0.0, 100.0))
def test_any_physical_value_comes_back_through_emulator_and_driver(
    celsius: float, percent: float
) -> None:
    bus, _, clock = emulated(
        temperature=SimulatedSignal(celsius), humidity=SimulatedSignal(percent)
    )
    reading = open_emulated(bus, clock).read()
    assert reading["temperature"] == pytest.approx(celsius, abs=0.005 + 200 / 2**21)
    assert reading["humidity"] == pytest.approx(percent, abs=0.005 + 100 / 2**21)


# -- options, registry, simulation -----------------------------------------------------------


def test_the_sample_is_valid_options() -> None:
    (config,) = yaml.safe_load(aht20.SAMPLE).values()
    config.pop("interval")
    assert msgspec.convert(config, AHT20Options).address == 0x38


def test_registered_at_0x38() -> None:
    assert registry.DRIVERS["aht20"] is aht20.SPEC
    assert aht20.SPEC.i2c_addresses == (0x38,)


def test_options_refuse_another_address() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"driver": "aht20", "address": 0x39}, AHT20Options)


def test_simulate_gives_the_configured_constants_back_and_fails_only_transiently() -> None:
    opts = msgspec.convert(
        {
            "driver": "aht20",
            "simulation": {"temperature": 26.5, "humidity": 33.0, "fail_rate": 0.5},
        },
        AHT20Options,
    )
    with SimulatedHardware(seed=2) as hardware:
        aht20.SPEC.emulate(opts, hardware)
        sensor = aht20.SPEC.open(opts, hardware)
        assert isinstance(sensor, AHT20)
        assert sensor.resource == "i2c-1"
        kinds: set[type[Exception]] = set()
        for _ in range(12):
            try:
                assert sensor.read() == {"temperature": 26.5, "humidity": 33.0}
            except TransientError as e:
                kinds.add(type(e))
    assert kinds <= {BusError, ChecksumError}
    assert kinds


def test_passes_the_conformance_kit() -> None:
    check_driver(aht20.SPEC)
