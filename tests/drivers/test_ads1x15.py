"""ADS1115/ADS1015 on a fake bus: the config register bit for bit, the datasheet's output
codes, the OS bit polled with a timeout, the ADS1015's left-justified result, and maps."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import msgspec
import pytest

from agent.config.load import load_config
from drivers.ads1x15 import (
    ADS1015,
    ADS1015_CHIP,
    ADS1015_SPEC,
    ADS1115,
    ADS1115_CHIP,
    SPEC,
    ADS1015Options,
    ADS1115Options,
    EmulatedADS1x15,
    VoltageMap,
    code_to_volts,
    config_word,
    quantities_for,
)
from drivers.errors import BusError, HardwareConfigError, ImplausibleReading, MeasurementTimeout
from drivers.hardware import SimulatedHardware
from drivers.sim.fake_smbus import FakeSMBus
from drivers.sim.signal import SimulatedSignal


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FixedADC:
    """A register chip that records config writes and answers fixed words."""

    def __init__(self, conversion: int, *, config_reads: list[int] | None = None) -> None:
        self.conversion = conversion
        self.config_reads = config_reads or []
        self.written: list[int] = []

    def read_registers(self, register: int, length: int) -> bytes:
        if register == 0x01:
            word = self.config_reads.pop(0) if self.config_reads else 0x8583
        else:
            word = self.conversion
        return word.to_bytes(2, "big")[:length]

    def write_registers(self, register: int, data: bytes) -> None:
        assert register == 0x01
        self.written.append(int.from_bytes(data, "big"))


def on_bus(chip: object, address: int = 0x48) -> FakeSMBus:
    bus = FakeSMBus()
    bus.attach(address, chip)  # type: ignore[arg-type]
    return bus


def inputs(*volts: float) -> list[SimulatedSignal]:
    return [SimulatedSignal(v) for v in volts]


# -- the config register --------------------------------------------------------------------


def test_config_register_reset_value_is_the_datasheets_0x8583() -> None:
    # OS=1, MUX=000 (AIN0-AIN1), PGA=010 (±2.048 V), MODE=1, DR=100 (128 SPS), COMP_QUE=11.
    assert config_word(ADS1115_CHIP, "0-1", Fraction(2), 128) == 0x8583


@pytest.mark.parametrize(
    ("channel", "gain", "rate", "word"),
    [
        (0, Fraction(1), 128, 0b1_100_001_1_100_00011),
        (3, Fraction(2, 3), 860, 0b1_111_000_1_111_00011),
        ("2-3", Fraction(16), 8, 0b1_011_101_1_000_00011),
        ("0-3", Fraction(4), 475, 0b1_001_011_1_110_00011),
        ("1-3", Fraction(8), 250, 0b1_010_100_1_101_00011),
    ],
)
def test_config_register_fields(channel: object, gain: Fraction, rate: int, word: int) -> None:
    assert config_word(ADS1115_CHIP, channel, gain, rate) == word  # type: ignore[arg-type]


def test_ads1015_data_rates_are_its_own() -> None:
    assert config_word(ADS1015_CHIP, 0, Fraction(1), 1600) == 0b1_100_001_1_100_00011
    assert config_word(ADS1015_CHIP, 0, Fraction(1), 3300) == 0b1_100_001_1_110_00011
    with pytest.raises(HardwareConfigError, match="data_rate"):
        config_word(ADS1015_CHIP, 0, Fraction(1), 860)


def test_bad_channel_gain_and_rate_are_refused() -> None:
    with pytest.raises(HardwareConfigError):
        ADS1115(bus=FakeSMBus(), channel=4)
    with pytest.raises(HardwareConfigError):
        ADS1115(bus=FakeSMBus(), channel="1-2")  # type: ignore[arg-type]
    with pytest.raises(HardwareConfigError):
        ADS1115(bus=FakeSMBus(), gain=3)
    with pytest.raises(HardwareConfigError):
        ADS1115(bus=FakeSMBus(), data_rate=100)


# -- output codes (datasheet table "output codes vs input signal") --------------------------


@pytest.mark.parametrize(
    ("raw", "volts"),
    [
        (0x0001, 4.096 / 32768),
        (0x0000, 0.0),
        (0xFFFF, -4.096 / 32768),
        (0x4000, 2.048),
        (0xC000, -2.048),
    ],
)
def test_ads1115_codes(raw: int, volts: float) -> None:
    assert code_to_volts(ADS1115_CHIP, raw, 4.096) == pytest.approx(volts, abs=1e-12)


@pytest.mark.parametrize(
    ("raw", "volts"),
    [
        (0x0010, 2.048 / 2048),
        (0x0000, 0.0),
        (0xFFF0, -2.048 / 2048),
        (0x4000, 1.024),
        (0x001F, 2.048 / 2048),
    ],
)
def test_ads1015_result_is_12_bits_left_justified(raw: int, volts: float) -> None:
    assert code_to_volts(ADS1015_CHIP, raw, 2.048) == pytest.approx(volts, abs=1e-12)


@pytest.mark.parametrize(
    ("chip", "raw"),
    [
        (ADS1115_CHIP, 0x7FFF),
        (ADS1115_CHIP, 0x8000),
        (ADS1015_CHIP, 0x7FF0),
        (ADS1015_CHIP, 0x8000),
    ],
)
def test_full_scale_codes_are_errors_not_readings(chip: object, raw: int) -> None:
    with pytest.raises(ImplausibleReading, match="full scale"):
        code_to_volts(chip, raw, 4.096)  # type: ignore[arg-type]


# -- the conversion sequence --------------------------------------------------------------


def test_read_writes_config_polls_os_then_reads_the_result() -> None:
    clock = FakeClock()
    chip = FixedADC(0x2000, config_reads=[0x0583, 0x0583, 0x8583])  # busy, busy, done
    bus = on_bus(chip)
    with ADS1115(bus=bus, channel=0, gain=2, sleep=clock.sleep, clock=clock) as adc:
        assert adc.read() == {"voltage": 0.512}  # 0x2000 x 2.048 V / 32768
    assert chip.written == [0xC583]  # OS, AIN0-GND, ±2.048 V, single-shot, 128 SPS, no comparator
    assert chip.config_reads == []  # OS was polled until it read 1
    assert clock.now >= 1 / 128


def test_os_never_set_is_a_timeout() -> None:
    clock = FakeClock()
    chip = FixedADC(0, config_reads=[0x0583] * 10_000)
    with (
        ADS1115(bus=on_bus(chip), data_rate=860, sleep=clock.sleep, clock=clock) as adc,
        pytest.raises(MeasurementTimeout),
    ):
        adc.read()
    assert clock.now < 0.02


def test_nack_is_a_bus_error() -> None:
    bus = on_bus(FixedADC(0x1000))
    with ADS1115(bus=bus, sleep=lambda s: None) as adc:
        bus.fail_next(0x48)
        with pytest.raises(BusError):
            adc.read()
        assert adc.read()["voltage"] == pytest.approx(0.512)


# -- against the emulator ------------------------------------------------------------------


@pytest.mark.parametrize("gain", [Fraction(2, 3), Fraction(1), Fraction(2), Fraction(16)])
def test_single_ended_voltage_through_the_emulator(gain: Fraction) -> None:
    clock = FakeClock()
    chip = EmulatedADS1x15(ADS1115_CHIP, inputs(0.0, 0.0, 0.2, 0.0), clock=clock)
    with ADS1115(bus=on_bus(chip), channel=2, gain=gain, sleep=clock.sleep, clock=clock) as adc:
        volts = adc.read()["voltage"]
    step = {Fraction(2, 3): 6.144, 1: 4.096, 2: 2.048, 16: 0.256}[gain] / 32768
    assert abs(volts - 0.2) <= step / 2 + 1e-12
    assert chip.conversions == 1


def test_differential_negative_through_the_ads1015() -> None:
    clock = FakeClock()
    chip = EmulatedADS1x15(ADS1015_CHIP, inputs(1.0, 1.5, 0.0, 0.0), clock=clock)
    with ADS1015(bus=on_bus(chip), channel="0-1", gain=2, sleep=clock.sleep, clock=clock) as adc:
        assert adc.read() == {"voltage": -0.5}
    assert chip.conversion == (-500 << 4) & 0xFFFF


def test_input_beyond_the_range_is_an_error() -> None:
    clock = FakeClock()
    chip = EmulatedADS1x15(ADS1115_CHIP, inputs(3.0, 0, 0, 0), clock=clock)
    with (
        ADS1115(bus=on_bus(chip), gain=2, sleep=clock.sleep, clock=clock) as adc,
        pytest.raises(ImplausibleReading),
    ):
        adc.read()


def test_the_conversion_takes_one_period_at_the_data_rate() -> None:
    clock = FakeClock()
    chip = EmulatedADS1x15(ADS1115_CHIP, inputs(1, 0, 0, 0), clock=clock)
    with ADS1115(bus=on_bus(chip), data_rate=8, sleep=clock.sleep, clock=clock) as adc:
        adc.read()
    assert clock.now == pytest.approx(1 / 8, abs=0.001)


def test_stuck_emulated_conversion_times_out() -> None:
    clock = FakeClock()
    chip = EmulatedADS1x15(ADS1115_CHIP, inputs(1, 0, 0, 0), clock=clock)
    chip.stuck = True
    with (
        ADS1115(bus=on_bus(chip), sleep=clock.sleep, clock=clock) as adc,
        pytest.raises(MeasurementTimeout),
    ):
        adc.read()


# -- map -----------------------------------------------------------------------------------

SOIL = VoltageMap(points=[[2.8, 0.0], [1.2, 100.0]], quantity="moisture", unit="%")


@pytest.mark.parametrize(
    ("volts", "value"), [(2.8, 0.0), (1.2, 100.0), (2.0, 50.0), (3.3, 0.0), (0.5, 100.0)]
)
def test_map_interpolates_and_clamps(volts: float, value: float) -> None:
    assert SOIL.apply(volts) == pytest.approx(value)
    if 1.2 <= volts <= 2.8:
        assert SOIL.invert(value) == pytest.approx(volts)


def test_map_with_three_points() -> None:
    m = VoltageMap(points=[[0.5, 0.0], [4.5, 10.0], [2.5, 4.0]], quantity="pressure", unit="bar")
    assert m.apply(1.5) == pytest.approx(2.0)
    assert m.apply(3.5) == pytest.approx(7.0)


def test_map_needs_two_distinct_points() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"points": [[1, 2]], "quantity": "x"}, VoltageMap)
    with pytest.raises(msgspec.ValidationError, match="voltage of its own"):
        msgspec.convert({"points": [[1, 2], [1, 3]], "quantity": "x"}, VoltageMap)


def test_a_mapped_sensor_reports_its_quantity_not_volts() -> None:
    clock = FakeClock()
    chip = EmulatedADS1x15(ADS1115_CHIP, inputs(2.0, 0, 0, 0), clock=clock)
    with ADS1115(bus=on_bus(chip), voltage_map=SOIL, sleep=clock.sleep, clock=clock) as adc:
        reading = adc.read()
    assert list(reading) == ["moisture"]
    assert reading["moisture"] == pytest.approx(50.0, abs=0.01)


def test_quantities_depend_on_the_options() -> None:
    plain = msgspec.convert({"driver": "ads1115", "gain": 16}, ADS1115Options)
    assert SPEC.quantities_of(plain)["voltage"].resolution == pytest.approx(7.8e-6)
    coarse = msgspec.convert({"driver": "ads1015", "gain": 0.6667}, ADS1015Options)
    assert ADS1015_SPEC.quantities_of(coarse)["voltage"].resolution == pytest.approx(0.003)
    mapped = msgspec.convert(
        {
            "driver": "ads1115",
            "map": {"points": [[2.8, 0], [1.2, 100]], "quantity": "moisture", "unit": "%",
                    "device_class": "moisture", "resolution": 1},
        },
        ADS1115Options,
    )  # fmt: skip
    ((name, q),) = quantities_for(mapped).items()
    assert (name, q.unit, q.device_class, q.resolution) == ("moisture", "%", "moisture", 1)


def test_options_refuse_a_gain_and_rate_the_chip_does_not_have() -> None:
    with pytest.raises(msgspec.ValidationError, match="gain"):
        msgspec.convert({"driver": "ads1115", "gain": 3}, ADS1115Options)
    with pytest.raises(msgspec.ValidationError, match="data_rate"):
        msgspec.convert({"driver": "ads1015", "data_rate": 8}, ADS1015Options)
    assert msgspec.convert({"driver": "ads1115", "channel": "2-3"}, ADS1115Options).channel == "2-3"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"driver": "ads1115", "channel": 4}, ADS1115Options)


def test_simulated_soil_probe_publishes_moisture(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "device_id: t\nmqtt: {host: 127.0.0.1}\nsensors:\n  soil:\n    driver: ads1115\n"
        "    map: {points: [[2.8, 0], [1.2, 100]], quantity: moisture, unit: '%', resolution: 1}\n"
        "    simulation: {moisture: 40}\n"
    )
    options = load_config(config).config.sensors["soil"]
    with SimulatedHardware(seed=2) as hw:
        SPEC.emulate(options, hw)
        with SPEC.open(options, hw) as adc:
            assert isinstance(adc, ADS1115)
            assert adc.read()["moisture"] == pytest.approx(40.0, abs=0.05)


def test_spec() -> None:
    assert SPEC.i2c_addresses == (0x48, 0x49, 0x4A, 0x4B)
    assert SPEC.quantities["voltage"].device_class == "voltage"
