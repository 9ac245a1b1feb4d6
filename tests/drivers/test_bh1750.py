"""The BH1750 driver on a fake bus: the datasheet's numbers as real bytes, the instruction
sequence it sends, mode 2's halved count, MTreg, saturation and NACKs."""

from __future__ import annotations

import errno

import msgspec
import pytest

from drivers.bh1750 import (
    BH1750,
    SPEC,
    BH1750Options,
    EmulatedBH1750,
    lux,
    measurement_s,
    mtreg_commands,
)
from drivers.errors import BusError, HardwareConfigError, ImplausibleReading
from drivers.hardware import SimulatedHardware
from drivers.sim.fake_smbus import CommandChip, FakeSMBus
from drivers.sim.signal import SimulatedSignal


class FixedResult(CommandChip):
    """A chip that records instructions and answers with fixed result bytes."""

    def __init__(self, result: bytes) -> None:
        self.result = result
        self.commands: list[int] = []

    def command(self, data: bytes) -> None:
        self.commands.extend(data)

    def answer(self, length: int) -> bytes:
        return self.result[:length]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def on_bus(chip: CommandChip, address: int = 0x23) -> FakeSMBus:
    bus = FakeSMBus()
    bus.attach(address, chip)
    return bus


# -- the datasheet's numbers ---------------------------------------------------------------


def test_datasheet_example_high_byte_83_low_byte_90_is_28067_lx() -> None:
    # Datasheet, "Measurement sequence example": 10000011 10010000 -> 28067 lx (H-res).
    chip = FixedResult(bytes([0b10000011, 0b10010000]))
    with BH1750(bus=on_bus(chip), sleep=lambda s: None) as sensor:
        assert round(sensor.read()["illuminance"]) == 28067


def test_mode_2_halves_the_count() -> None:
    chip = FixedResult(bytes([0x83, 0x90]))
    with BH1750(bus=on_bus(chip), mode="high2", sleep=lambda s: None) as sensor:
        assert sensor.read()["illuminance"] == pytest.approx(28066.67 / 2, abs=0.01)


def test_mtreg_scales_the_count_by_69_over_mtreg() -> None:
    assert lux(1, mode="high2", mtreg=254) == pytest.approx(0.11, abs=0.005)  # finest step
    assert lux(0xFFFE, mode="high", mtreg=31) == pytest.approx(121555, abs=1)  # widest range
    assert lux(100, mtreg=138) == pytest.approx(100 / 1.2 / 2)


@pytest.mark.parametrize(
    ("mtreg", "high", "low"), [(69, 0x42, 0x65), (31, 0x40, 0x7F), (254, 0x47, 0x7E)]
)
def test_mtreg_instructions_split_its_bits(mtreg: int, high: int, low: int) -> None:
    # 01000_MT[7:5] and 011_MT[4:0]; 69 = 0b010_00101.
    assert mtreg_commands(mtreg) == (high, low)


def test_one_time_read_sends_power_on_mtreg_and_the_one_time_instruction() -> None:
    chip = FixedResult(bytes([0x01, 0x10]))
    waits: list[float] = []
    with BH1750(bus=on_bus(chip), mode="high2", mtreg=138, sleep=waits.append) as sensor:
        assert chip.commands == []  # one-time: nothing until a read
        sensor.read()
        assert chip.commands == [0x01, 0x44, 0x6A, 0x21]
    assert chip.commands[-1] == 0x00  # closed: Power Down
    assert waits == [pytest.approx(0.180 * 138 / 69)]  # the maximum time, scaled by MTreg


def test_continuous_mode_starts_once_and_then_only_reads() -> None:
    chip = FixedResult(bytes([0x00, 0x78]))
    with BH1750(bus=on_bus(chip), continuous=True, sleep=lambda s: None) as sensor:
        assert chip.commands == [0x01, 0x42, 0x65, 0x10]
        assert sensor.read() == {"illuminance": 100.0}
        assert sensor.read() == {"illuminance": 100.0}
        assert chip.commands == [0x01, 0x42, 0x65, 0x10]


def test_saturated_count_is_an_error_not_a_reading() -> None:
    with (
        BH1750(bus=on_bus(FixedResult(b"\xff\xff")), sleep=lambda s: None) as sensor,
        pytest.raises(ImplausibleReading, match="lower mtreg"),
    ):
        sensor.read()


def test_nack_is_a_bus_error_and_the_next_read_succeeds() -> None:
    bus = on_bus(FixedResult(bytes([0x00, 0x78])))
    with BH1750(bus=bus, sleep=lambda s: None) as sensor:
        bus.fail_next(0x23, skip=3)  # the measurement instruction
        with pytest.raises(BusError):
            sensor.read()
        bus.fail_next(0x23, skip=4, error=errno.EIO)  # the result read
        with pytest.raises(BusError):
            sensor.read()
        assert sensor.read() == {"illuminance": 100.0}


def test_wrong_address_is_a_bus_error_on_first_read() -> None:
    with (
        BH1750(bus=on_bus(FixedResult(b"\0\0"), 0x5C), sleep=lambda s: None) as sensor,
        pytest.raises(BusError),
    ):
        sensor.read()


def test_out_of_range_settings_are_refused() -> None:
    with pytest.raises(HardwareConfigError):
        BH1750(bus=FakeSMBus(), mtreg=30)
    with pytest.raises(HardwareConfigError):
        BH1750(bus=FakeSMBus(), mode="medium")  # type: ignore[arg-type]


# -- against the emulator ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["high", "high2", "low"])
@pytest.mark.parametrize("mtreg", [31, 69, 254])
def test_emulator_gives_back_the_light_through_the_driver(mode: str, mtreg: int) -> None:
    clock = FakeClock()
    chip = EmulatedBH1750(SimulatedSignal(321.0), clock=clock)
    with BH1750(bus=on_bus(chip), mode=mode, mtreg=mtreg, sleep=clock.sleep) as sensor:  # type: ignore[arg-type]
        value = sensor.read()["illuminance"]
    step = lux(1, mode=mode, mtreg=mtreg)  # type: ignore[arg-type]
    assert abs(value - 321.0) <= step / 2 + 1e-9
    assert chip.mtreg == mtreg and not chip.powered  # one-time: powered down after


def test_emulated_chip_ignores_a_measurement_in_power_down() -> None:
    clock = FakeClock()
    chip = EmulatedBH1750(SimulatedSignal(500.0), clock=clock)
    bus = on_bus(chip)
    bus.write_byte(0x23, 0x20)  # One Time H-Res without Power On
    clock.now += 1
    assert bus.read_byte(0x23) == 0 and chip.measurements == 0


def test_emulated_continuous_mode_keeps_measuring() -> None:
    clock = FakeClock()
    light = SimulatedSignal(100.0)
    chip = EmulatedBH1750(light, clock=clock)
    with BH1750(bus=on_bus(chip), continuous=True, sleep=clock.sleep) as sensor:
        assert sensor.read()["illuminance"] == pytest.approx(100.0, abs=0.5)
        light.lo = light.hi = light._value = 250.0
        clock.now += measurement_s("high", 69)
        assert sensor.read()["illuminance"] == pytest.approx(250.0, abs=0.5)
        assert chip.powered


def test_options_and_interval_check() -> None:
    options = msgspec.convert({"driver": "bh1750", "address": 0x5C, "mode": "high2"}, BH1750Options)
    assert options.address == 0x5C and options.mtreg == 69
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"driver": "bh1750", "mtreg": 300}, BH1750Options)
    with pytest.raises(msgspec.ValidationError, match="shorter than one measurement"):
        msgspec.convert({"driver": "bh1750", "mtreg": 254, "interval": 0.5}, BH1750Options)


def test_simulate_runs_the_driver_on_the_emulator() -> None:
    options = msgspec.convert(
        {"driver": "bh1750", "mode": "high2", "simulation": {"illuminance": 42.0}}, BH1750Options
    )
    with SimulatedHardware(seed=1) as hw:
        SPEC.emulate(options, hw)
        with SPEC.open(options, hw) as sensor:
            assert isinstance(sensor, BH1750)
            assert sensor.read()["illuminance"] == pytest.approx(42.0, abs=0.25)


def test_spec() -> None:
    assert SPEC.i2c_addresses == (0x23, 0x5C)
    assert SPEC.quantities["illuminance"].device_class == "illuminance"
    assert SPEC.quantities["illuminance"].unit == "lx"
