"""The BME280/BMP280 driver: compensation maths, calibration decode, and the driver talking
to a register-level emulated chip on a fake SMBus."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import bme280, registry
from drivers.bme280 import (
    BME280,
    BMP280,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_DATA,
    BME280Options,
    BMP280Options,
    EmulatedBME280,
    decimals_for,
)
from drivers.compensation import bme280 as compensation
from drivers.compensation.bme280 import (
    NEGATIVE_CALIBRATION,
    TYPICAL_CALIBRATION,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    decode_calibration,
    encode_calibration,
)
from drivers.errors import (
    BusError,
    ChecksumError,
    HardwareConfigError,
    MeasurementTimeout,
    TransientError,
    WrongDevice,
)
from drivers.hardware import SimulatedHardware
from drivers.sim.fake_smbus import FakeSMBus, I2CDevice
from drivers.sim.signal import SimulatedSignal

#: The BMP280 datasheet's worked example (section 3.12).
DATASHEET = Calibration(
    dig_t1=27504, dig_t2=26435, dig_t3=-1000,
    dig_p1=36477, dig_p2=-10685, dig_p3=3024, dig_p4=2855, dig_p5=140,
    dig_p6=-7, dig_p7=15500, dig_p8=-14600, dig_p9=6000,
)  # fmt: skip
DATASHEET_ADC_T = 519888
DATASHEET_ADC_P = 415148

RESOLUTION = {name: q.resolution for name, q in bme280.QUANTITIES.items()}


# -- the datasheet's double-precision formulas (section 8.1), an independent reference -------


def double_t_fine(c: Calibration, adc_t: int) -> float:
    var1 = (adc_t / 16384.0 - c.dig_t1 / 1024.0) * c.dig_t2
    var2 = (adc_t / 131072.0 - c.dig_t1 / 8192.0) ** 2 * c.dig_t3
    return var1 + var2


def double_pressure_pa(c: Calibration, t_fine: int, adc_p: int) -> float:
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c.dig_p6 / 32768.0
    var2 = var2 + var1 * c.dig_p5 * 2.0
    var2 = var2 / 4.0 + c.dig_p4 * 65536.0
    var1 = (c.dig_p3 * var1 * var1 / 524288.0 + c.dig_p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c.dig_p1
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c.dig_p9 * p * p / 2147483648.0
    var2 = p * c.dig_p8 / 32768.0
    return p + (var1 + var2 + c.dig_p7) / 16.0


def double_humidity(c: Calibration, t_fine: int, adc_h: int) -> float:
    h = t_fine - 76800.0
    h = (adc_h - (c.dig_h4 * 64.0 + c.dig_h5 / 16384.0 * h)) * (
        c.dig_h2 / 65536.0 * (1.0 + c.dig_h6 / 67108864.0 * h * (1.0 + c.dig_h3 / 67108864.0 * h))
    )
    h = h * (1.0 - c.dig_h1 * h / 524288.0)
    return min(max(h, 0.0), 100.0)


# -- compensation ----------------------------------------------------------------------------


def test_temperature_matches_the_datasheet_example() -> None:
    assert compensate_temperature(DATASHEET, DATASHEET_ADC_T) == (2508, 128422)


def test_pressure_matches_the_datasheet_example() -> None:
    q8 = compensate_pressure(DATASHEET, 128422, DATASHEET_ADC_P)
    # The datasheet's table prints 25767236 for the 64-bit code, but executing its
    # published formula gives 25767233 (100653.254 Pa); both are 100653.27 Pa within 0.02 Pa.
    assert q8 == 25767233
    assert abs(q8 - 25767236) <= 3
    assert q8 / 256 == pytest.approx(100653.27, abs=0.02)
    assert q8 / 256 == pytest.approx(
        double_pressure_pa(DATASHEET, 128422, DATASHEET_ADC_P), abs=0.02
    )


def test_double_reference_reproduces_the_datasheet_temperature() -> None:
    assert double_t_fine(DATASHEET, DATASHEET_ADC_T) / 5120.0 == pytest.approx(25.08, abs=0.005)


@pytest.mark.parametrize(
    ("calibration", "t_fine", "adc_h", "expected_q10"),
    [
        (TYPICAL_CALIBRATION, 128422, 30000, 56317),  # 54.997 %RH at 25.08 °C
        (TYPICAL_CALIBRATION, -100000, 24000, 23406),  # 22.857 %RH at -19.5 °C
        (TYPICAL_CALIBRATION, 200000, 33000, 74357),  # 72.614 %RH at 39 °C
        (replace(TYPICAL_CALIBRATION, dig_h4=-100, dig_h5=-30), 128422, 3568, 57752),
        (replace(TYPICAL_CALIBRATION, dig_h4=-50, dig_h5=-200), 200000, 6768, 67807),
    ],
)
def test_humidity_integer_formula_agrees_with_the_double_formula(
    calibration: Calibration, t_fine: int, adc_h: int, expected_q10: int
) -> None:
    q10 = compensate_humidity(calibration, t_fine, adc_h)
    assert q10 == expected_q10
    reference = double_humidity(calibration, t_fine, adc_h)
    assert 5.0 < reference < 95.0  # mid-range, so a clamp cannot hide a bug
    assert q10 / 1024 == pytest.approx(reference, abs=5 / 1024)


def test_humidity_is_clamped_to_0_and_100_percent() -> None:
    assert compensate_humidity(TYPICAL_CALIBRATION, 128422, 0) == 0
    assert compensate_humidity(TYPICAL_CALIBRATION, 128422, 65535) == 100 * 1024


s16 = st.integers(-32768, 32767)
u16 = st.integers(1, 65535)
calibrations = st.builds(
    Calibration,
    dig_t1=u16, dig_t2=s16, dig_t3=s16,
    dig_p1=u16, dig_p2=s16, dig_p3=s16, dig_p4=s16, dig_p5=s16,
    dig_p6=s16, dig_p7=s16, dig_p8=s16, dig_p9=s16,
    dig_h1=st.integers(0, 255), dig_h2=s16, dig_h3=st.integers(0, 255),
    dig_h4=st.integers(-2048, 2047), dig_h5=st.integers(-2048, 2047),
    dig_h6=st.integers(-128, 127),
)  # fmt: skip


@given(
    calibration=st.sampled_from([TYPICAL_CALIBRATION, NEGATIVE_CALIBRATION]),
    adc_t=st.integers(300_000, 750_000),
    adc_p=st.integers(200_000, 900_000),
    adc_h=st.integers(0, 65535),
)
def test_integer_formulas_agree_with_the_double_formulas(
    calibration: Calibration, adc_t: int, adc_p: int, adc_h: int
) -> None:
    centi, t_fine = compensate_temperature(calibration, adc_t)
    assert centi / 100 == pytest.approx(double_t_fine(calibration, adc_t) / 5120.0, abs=0.01)
    pa = compensate_pressure(calibration, t_fine, adc_p) / 256
    assert pa == pytest.approx(double_pressure_pa(calibration, t_fine, adc_p), abs=0.02)
    rh = compensate_humidity(calibration, t_fine, adc_h) / 1024
    assert rh == pytest.approx(double_humidity(calibration, t_fine, adc_h), abs=10 / 1024)


@pytest.mark.parametrize(
    ("resolution", "decimals"), [(0.01, 2), (0.0018, 3), (0.0016, 3), (0.008, 3), (1, 0)]
)
def test_values_are_rounded_to_the_decimals_the_resolution_implies(
    resolution: float, decimals: int
) -> None:
    assert decimals_for(resolution) == decimals


# -- calibration decode ------------------------------------------------------------------------


def test_decodes_a_real_chips_calibration_bytes() -> None:
    block_88 = bytes.fromhex(
        "706b 4367 18fc 7d8e 43d6 d00b 270b 8c00 f9ff 8c3c f8c6 7017 004b".replace(" ", "")
    )
    block_e1 = bytes([0x6A, 0x01, 0x00, 0x13, 0x29, 0x03, 0x1E])
    assert decode_calibration(block_88, block_e1) == replace(
        DATASHEET, dig_h1=75, dig_h2=362, dig_h3=0, dig_h4=313, dig_h5=50, dig_h6=30
    )


def test_decodes_negative_dig_h4_and_dig_h5_across_the_shared_nibbles() -> None:
    # dig_H4 = -5 is 0xFFB: E4 = 0xFF, E5[3:0] = 0xB. dig_H5 = -1234 is 0xB2E: E6 = 0xB2,
    # E5[7:4] = 0xE. dig_H2 = -300 (0xFED4), dig_H6 = -10 (0xF6). Decoders that treat H4/H5
    # as unsigned read 4091 and 2862 here.
    block_e1 = bytes([0xD4, 0xFE, 0x00, 0xFF, 0xEB, 0xB2, 0xF6])
    block_88, _ = encode_calibration(DATASHEET)
    cal = decode_calibration(block_88, block_e1)
    assert (cal.dig_h2, cal.dig_h4, cal.dig_h5, cal.dig_h6) == (-300, -5, -1234, -10)


@pytest.mark.parametrize(("h4", "h5"), [(-2048, 2047), (2047, -2048), (-1, -1), (0, -1)])
def test_dig_h4_and_dig_h5_extremes_round_trip(h4: int, h5: int) -> None:
    cal = replace(TYPICAL_CALIBRATION, dig_h4=h4, dig_h5=h5)
    assert decode_calibration(*encode_calibration(cal)) == cal


@given(calibrations)
def test_calibration_encoding_round_trips(cal: Calibration) -> None:
    assert decode_calibration(*encode_calibration(cal)) == cal


def test_bmp280_calibration_has_no_humidity_parameters() -> None:
    block_88, _ = encode_calibration(TYPICAL_CALIBRATION)
    assert decode_calibration(block_88[:24]) == DATASHEET


def test_calibration_that_does_not_fit_its_registers_is_refused() -> None:
    with pytest.raises(ValueError, match="dig_h4"):
        encode_calibration(replace(TYPICAL_CALIBRATION, dig_h4=2048))
    with pytest.raises(ValueError, match="7 bytes"):
        decode_calibration(bytes(26), bytes(6))


# -- the emulator's inversion -----------------------------------------------------------------


@settings(max_examples=200)
@given(
    calibration=st.sampled_from([TYPICAL_CALIBRATION, NEGATIVE_CALIBRATION]),
    celsius=st.floats(-40, 85),
    hpa=st.floats(300, 1100),
    rh=st.floats(10, 100),
)
def test_emulator_raw_counts_compensate_back_to_the_physical_values(
    calibration: Calibration, celsius: float, hpa: float, rh: float
) -> None:
    adc_t = compensation.raw_temperature(calibration, celsius)
    centi, t_fine = compensate_temperature(calibration, adc_t)
    adc_p = compensation.raw_pressure(calibration, t_fine, hpa)
    adc_h = compensation.raw_humidity(calibration, t_fine, rh)
    assert centi / 100 == pytest.approx(celsius, abs=RESOLUTION["temperature"])
    q8 = compensate_pressure(calibration, t_fine, adc_p)
    assert q8 / 25600 == pytest.approx(hpa, abs=RESOLUTION["pressure"])
    q10 = compensate_humidity(calibration, t_fine, adc_h)
    assert q10 / 1024 == pytest.approx(rh, abs=RESOLUTION["humidity"])


# -- the driver on a fake bus -----------------------------------------------------------------


def chip_on_bus(
    address: int = 0x76, *, bus: FakeSMBus | None = None, **kwargs: object
) -> tuple[FakeSMBus, EmulatedBME280]:
    bus = bus or FakeSMBus(1, seed=0)
    chip = EmulatedBME280(**kwargs)  # type: ignore[arg-type]
    bus.attach(address, chip)
    return bus, chip


def constant(value: float) -> SimulatedSignal:
    return SimulatedSignal(value)


@pytest.mark.parametrize("address", [0x76, 0x77])
def test_reads_the_configured_values_back_through_the_driver(address: int) -> None:
    bus, _ = chip_on_bus(
        address, temperature=constant(21.5), humidity=constant(40.25), pressure=constant(1013.25)
    )
    with BME280(bus=bus, address=address) as sensor:
        values = sensor.read()
    assert list(values) == ["temperature", "humidity", "pressure"]
    assert values["temperature"] == 21.5
    assert values["humidity"] == pytest.approx(40.25, abs=RESOLUTION["humidity"])
    assert values["pressure"] == pytest.approx(1013.25, abs=RESOLUTION["pressure"])


def test_values_are_rounded_to_the_chips_resolution() -> None:
    bus, _ = chip_on_bus(temperature=constant(23.456), humidity=constant(51.23456))
    values = BME280(bus=bus).read()
    assert values["temperature"] == 23.46
    for name, value in values.items():
        assert round(value, decimals_for(RESOLUTION[name])) == value


@pytest.mark.parametrize("chip_id", [0x56, 0x57, 0x58])
def test_bmp280_reads_temperature_and_pressure_only(chip_id: int) -> None:
    bus, _ = chip_on_bus(kind="bmp280", chip_id=chip_id, pressure=constant(987.654))
    with BMP280(bus=bus) as sensor:
        values = sensor.read()
    assert set(values) == {"temperature", "pressure"}
    assert values["pressure"] == pytest.approx(987.654, abs=0.0016)
    assert all(register != REG_CTRL_HUM for _, register, _ in bus.writes)


def test_a_wrong_chip_id_names_the_id_and_the_address() -> None:
    bus, _ = chip_on_bus(chip_id=0x55)
    with pytest.raises(WrongDevice, match=r"0x76.*0x55"):
        BME280(bus=bus)


def test_a_bmp280_where_a_bme280_is_configured_says_which_driver_fits() -> None:
    bus, _ = chip_on_bus(kind="bmp280")
    with pytest.raises(WrongDevice, match="use driver bmp280"):
        BME280(bus=bus)
    bus, _ = chip_on_bus(kind="bme280")
    with pytest.raises(WrongDevice, match="use driver bme280"):
        BMP280(bus=bus)


def test_open_soft_resets_and_reads_the_negative_calibration() -> None:
    bus, _ = chip_on_bus(calibration=NEGATIVE_CALIBRATION)
    sensor = BME280(bus=bus)
    assert bus.writes[0] == (0x76, bme280.REG_RESET, bytes([0xB6]))
    assert sensor.calibration == NEGATIVE_CALIBRATION
    assert sensor.chip_id == 0x60


def test_a_nack_on_the_data_registers_is_a_transient_bus_error() -> None:
    bus, _ = chip_on_bus()
    sensor = BME280(bus=bus)
    bus.nack_registers.add((0x76, REG_DATA))
    with pytest.raises(BusError, match=r"0x76.*0xF7") as caught:
        sensor.read()
    assert isinstance(caught.value, TransientError)
    assert caught.value.errno == errno.EREMOTEIO


class FailingDataRead:
    """A chip whose data registers fail with a given errno."""

    def __init__(self, inner: I2CDevice, error: int) -> None:
        self.inner = inner
        self.error = error

    def read_registers(self, register: int, length: int) -> bytes:
        if register == REG_DATA:
            raise OSError(self.error, "injected")
        return self.inner.read_registers(register, length)

    def write_registers(self, register: int, data: bytes) -> None:
        self.inner.write_registers(register, data)


@pytest.mark.parametrize("error", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT, errno.ENXIO])
def test_every_oserror_from_the_bus_becomes_a_bus_error(error: int) -> None:
    bus = FakeSMBus(1)
    bus.attach(0x76, FailingDataRead(EmulatedBME280(), error))
    sensor = BME280(bus=bus)
    with pytest.raises(BusError) as caught:
        sensor.read()
    assert caught.value.errno == error


def test_a_missing_chip_is_a_bus_error_at_open() -> None:
    with pytest.raises(BusError, match="0x77"):
        BME280(bus=FakeSMBus(1), address=0x77)


def test_a_stuck_measuring_bit_times_out_quickly() -> None:
    bus, chip = chip_on_bus()
    sensor = BME280(bus=bus, measurement_timeout_s=0.01)
    chip.stuck_measuring = True
    started = time.monotonic()
    with pytest.raises(MeasurementTimeout, match="still measuring"):
        sensor.read()
    assert time.monotonic() - started < 0.5


def test_the_default_timeout_follows_the_datasheets_maximum() -> None:
    bus, chip = chip_on_bus()
    sensor = BME280(bus=bus)
    chip.stuck_measuring = True
    with pytest.raises(MeasurementTimeout, match=r"datasheet maximum 9\.3 ms"):
        sensor.read()


def test_the_driver_waits_while_the_chip_is_measuring() -> None:
    bus, chip = chip_on_bus(measuring_s=0.03, temperature=constant(19.0))
    sensor = BME280(bus=bus, measurement_timeout_s=0.5)
    started = time.monotonic()
    assert sensor.read()["temperature"] == 19.0
    assert time.monotonic() - started >= 0.03
    assert chip.measurements == 1


def test_an_nvm_copy_that_never_ends_times_out_at_open() -> None:
    bus, _ = chip_on_bus(nvm_copy_s=10.0)
    with pytest.raises(MeasurementTimeout, match="NVM copy"):
        BME280(bus=bus)


def test_blank_calibration_is_refused() -> None:
    bus, _ = chip_on_bus(calibration=replace(TYPICAL_CALIBRATION, dig_p1=0))
    with pytest.raises(ChecksumError, match="blank"):
        BME280(bus=bus)


def test_ctrl_hum_and_config_are_written_before_the_ctrl_meas_trigger() -> None:
    bus, _ = chip_on_bus()
    sensor = BME280(
        bus=bus,
        temperature_oversampling=2,
        pressure_oversampling=16,
        humidity_oversampling=4,
        iir_filter=8,
    )
    bus.writes.clear()
    sensor.read()
    assert bus.writes == [
        (0x76, REG_CTRL_HUM, bytes([0b011])),
        (0x76, bme280.REG_CONFIG, bytes([0b011 << 2])),
        (0x76, REG_CTRL_MEAS, bytes([0b010 << 5 | 0b101 << 2 | 0b01])),
    ]


def test_the_emulator_ignores_ctrl_hum_until_the_next_ctrl_meas_write() -> None:
    chip = EmulatedBME280(measuring_s=0.0)
    chip.write_registers(REG_CTRL_MEAS, bytes([0b001_001_01]))
    chip.write_registers(REG_CTRL_HUM, bytes([0b001]))
    assert chip.read_registers(REG_DATA + 6, 2) == bytes([0x80, 0x00])  # humidity skipped


@pytest.mark.parametrize(
    ("pressure", "humidity", "keys"),
    [
        (0, 1, {"temperature", "humidity"}),
        (1, 0, {"temperature", "pressure"}),
        (0, 0, {"temperature"}),
    ],
)
def test_a_skipped_measurement_is_left_out(pressure: int, humidity: int, keys: set[str]) -> None:
    bus, chip = chip_on_bus()
    sensor = BME280(bus=bus, pressure_oversampling=pressure, humidity_oversampling=humidity)
    assert set(sensor.read()) == keys
    data = chip.read_registers(REG_DATA, 8)
    assert (data[0:3] == bytes([0x80, 0, 0])) == (pressure == 0)
    assert (data[6:8] == bytes([0x80, 0])) == (humidity == 0)


@pytest.mark.parametrize(
    ("temperature", "pressure", "iir_filter", "complaint"),
    [(0, 1, 0, "temperature"), (1, 3, 0, "pressure"), (1, 1, 1, "iir_filter")],
)
def test_settings_the_chip_does_not_have_are_refused(
    temperature: int, pressure: int, iir_filter: int, complaint: str
) -> None:
    bus, _ = chip_on_bus()
    with pytest.raises(HardwareConfigError, match=complaint):
        BME280(
            bus=bus,
            temperature_oversampling=temperature,
            pressure_oversampling=pressure,
            iir_filter=iir_filter,
        )


def test_close_is_idempotent_and_a_closed_sensor_refuses_to_read() -> None:
    bus, _ = chip_on_bus()
    sensor = BME280(bus=bus)
    sensor.close()
    sensor.close()
    with pytest.raises(ValueError, match="closed"):
        sensor.read()


class Recorder:
    """Logs every transaction a chip sees, in bus order."""

    def __init__(self, inner: I2CDevice, address: int, log: list[tuple[int, str, int]]) -> None:
        self.inner = inner
        self.address = address
        self.log = log

    def read_registers(self, register: int, length: int) -> bytes:
        self.log.append((self.address, "read", register))
        return self.inner.read_registers(register, length)

    def write_registers(self, register: int, data: bytes) -> None:
        self.log.append((self.address, "write", register))
        self.inner.write_registers(register, data)


def test_two_sensors_on_one_bus_never_interleave_their_measurements() -> None:
    bus = FakeSMBus(1)
    log: list[tuple[int, str, int]] = []
    for address in (0x76, 0x77):
        bus.attach(address, Recorder(EmulatedBME280(), address, log))
    sensors = [BME280(bus=bus, address=0x76), BME280(bus=bus, address=0x77)]
    log.clear()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(sensor: BME280) -> None:
        start.wait()
        try:
            for _ in range(6):
                sensor.read()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in sensors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors

    owner: int | None = None
    measurements = 0
    for address, op, register in log:
        if op == "write" and register == REG_CTRL_HUM:
            assert owner is None, f"0x{address:02X} started inside 0x{owner:02X}'s measurement"
            owner = address
        assert address == owner, f"0x{address:02X} talked inside another measurement"
        if op == "read" and register == REG_DATA:
            owner = None
            measurements += 1
    assert measurements == 12


# -- options, spec and --simulate ---------------------------------------------------------------


def test_options_default_to_the_weather_monitoring_setting() -> None:
    options = msgspec.convert({"driver": "bme280"}, BME280Options)
    assert (options.bus, options.address, options.filter) == (1, 0x76, 0)
    assert options.oversampling == bme280.BME280Oversampling(temperature=1, pressure=1, humidity=1)


@pytest.mark.parametrize(
    "config",
    [
        {"address": 0x78},
        {"filter": 3},
        {"oversampling": {"temperature": 0}},
        {"oversampling": {"pressure": 32}},
        {"oversampling": {"humidity": 1, "wind": 1}},
        {"bus": -1},
    ],
)
def test_options_refuse_values_the_chip_does_not_have(config: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(config, BME280Options)


def test_bmp280_options_have_no_humidity() -> None:
    with pytest.raises(msgspec.ValidationError, match="humidity"):
        msgspec.convert({"oversampling": {"humidity": 1}}, BMP280Options)


@pytest.mark.parametrize(
    ("sample", "options_type"),
    [(bme280.SAMPLE, BME280Options), (bme280.BMP280_SAMPLE, BMP280Options)],
)
def test_the_samples_are_valid_options(
    sample: str, options_type: type[BME280Options | BMP280Options]
) -> None:
    (config,) = yaml.safe_load(sample).values()
    config.pop("interval")  # "30s" is parsed by the agent's config layer, not here
    options = msgspec.convert(config, options_type)
    assert options.address in (0x76, 0x77)


def test_both_drivers_are_registered() -> None:
    assert registry.DRIVERS["bme280"] is bme280.SPEC
    assert registry.DRIVERS["bmp280"] is bme280.BMP280_SPEC


def bme280_options(**config: object) -> BME280Options:
    """Options as the config file would give them."""
    return msgspec.convert({"driver": "bme280", **config}, BME280Options)


def bmp280_options(**config: object) -> BMP280Options:
    return msgspec.convert({"driver": "bmp280", **config}, BMP280Options)


def simulate(options: BME280Options | BMP280Options, seed: int = 0) -> SimulatedHardware:
    hardware = SimulatedHardware(seed=seed)
    spec = bme280.SPEC if isinstance(options, BME280Options) else bme280.BMP280_SPEC
    spec.emulate(options, hardware)
    return hardware


def test_simulate_gives_the_configured_constants_back() -> None:
    values = {"temperature": 21.5, "humidity": 40.25, "pressure": 1013.25}
    options = bme280_options(address=0x77, simulation=values)
    hardware = simulate(options)
    try:
        sensor = bme280.SPEC.open(options, hardware)
        assert sensor.resource == "i2c-1"
        assert isinstance(sensor, BME280)
        reading = sensor.read()
    finally:
        hardware.close()
    for name, value in values.items():
        assert reading[name] == pytest.approx(value, abs=RESOLUTION[name])


def test_simulated_random_walk_stays_within_its_bounds() -> None:
    options = bmp280_options(simulation={"temperature": [18.0, 24.0], "pressure": [990, 1030]})
    hardware = simulate(options, seed=7)
    try:
        sensor = bme280.BMP280_SPEC.open(options, hardware)
        assert isinstance(sensor, BMP280)
        readings = [sensor.read() for _ in range(20)]
    finally:
        hardware.close()
    assert all(18.0 - 0.01 <= r["temperature"] <= 24.0 + 0.01 for r in readings)
    assert all(990 - 0.0016 <= r["pressure"] <= 1030 + 0.0016 for r in readings)
    assert len({r["temperature"] for r in readings}) > 1


def test_simulated_values_for_unknown_quantities_are_refused() -> None:
    options = bmp280_options(simulation={"humidity": 50.0})
    with pytest.raises(HardwareConfigError, match="humidity"):
        simulate(options)


def test_a_fail_rate_of_one_makes_every_transaction_a_bus_error() -> None:
    options = bme280_options(simulation={"fail_rate": 1.0})
    hardware = simulate(options)
    try:
        with pytest.raises(BusError):
            bme280.SPEC.open(options, hardware)
        bus = hardware.fake_bus(1)
        bus.fail_rate[0x76] = 0.0
        sensor = bme280.SPEC.open(options, hardware)
        assert isinstance(sensor, BME280)
        bus.fail_rate[0x76] = 1.0
        for _ in range(3):
            with pytest.raises(BusError):
                sensor.read()
    finally:
        hardware.close()


def test_a_flaky_bus_gives_either_a_full_reading_or_a_bus_error() -> None:
    options = bme280_options()
    hardware = simulate(options, seed=3)
    try:
        sensor = bme280.SPEC.open(options, hardware)
        assert isinstance(sensor, BME280)
        hardware.fake_bus(1).fail_rate[0x76] = 0.2
        outcomes = {"ok": 0, "error": 0}
        for _ in range(25):
            try:
                assert set(sensor.read()) == {"temperature", "humidity", "pressure"}
                outcomes["ok"] += 1
            except BusError:
                outcomes["error"] += 1
    finally:
        hardware.close()
    assert outcomes["ok"] and outcomes["error"]


@settings(max_examples=30, deadline=None)
@given(
    calibration=st.sampled_from([TYPICAL_CALIBRATION, NEGATIVE_CALIBRATION]),
    celsius=st.floats(-40, 85),
    hpa=st.floats(300, 1100),
    rh=st.floats(10, 100),
)
def test_any_physical_value_comes_back_through_emulator_and_driver(
    calibration: Calibration, celsius: float, hpa: float, rh: float
) -> None:
    bus, _ = chip_on_bus(
        calibration=calibration,
        temperature=constant(celsius),
        pressure=constant(hpa),
        humidity=constant(rh),
        nvm_copy_s=0.0,
    )
    values = BME280(bus=bus).read()
    assert values["temperature"] == pytest.approx(celsius, abs=RESOLUTION["temperature"])
    assert values["pressure"] == pytest.approx(hpa, abs=RESOLUTION["pressure"])
    assert values["humidity"] == pytest.approx(rh, abs=RESOLUTION["humidity"])


def bisect_nearest(compensate: Callable[[int], int], target: int, bits: int) -> int:
    """Plain bisection for the first count at or past ``target``, then the best neighbour."""
    lo, hi = 0, (1 << bits) - 1
    rising = compensate(hi) >= compensate(lo)
    while lo < hi:
        mid = (lo + hi) // 2
        value = compensate(mid)
        if (value >= target) if rising else (value <= target):
            hi = mid
        else:
            lo = mid + 1
    candidates = [c for c in (lo - 1, lo, lo + 1) if 0 <= c < 1 << bits]
    return min(candidates, key=lambda c: abs(compensate(c) - target))


@settings(max_examples=300)
@given(
    calibration=st.sampled_from([TYPICAL_CALIBRATION, NEGATIVE_CALIBRATION]),
    celsius=st.floats(-45, 90),
    hpa=st.floats(250, 1150),
    rh=st.floats(-5, 105),
)
def test_the_emulators_search_finds_the_count_bisection_finds(
    calibration: Calibration, celsius: float, hpa: float, rh: float
) -> None:
    def temperature(adc: int) -> int:
        return compensate_temperature(calibration, adc)[0]

    adc_t = compensation.raw_temperature(calibration, celsius)
    assert adc_t == bisect_nearest(temperature, round(celsius * 100), 20)
    _, t_fine = compensate_temperature(calibration, adc_t)
    assert compensation.raw_pressure(calibration, t_fine, hpa) == bisect_nearest(
        lambda adc: compensate_pressure(calibration, t_fine, adc), round(hpa * 25600), 20
    )
    assert compensation.raw_humidity(calibration, t_fine, rh) == bisect_nearest(
        lambda adc: compensate_humidity(calibration, t_fine, adc), round(rh * 1024), 16
    )
