"""How the scheduler reads an I2C chip, through the real BME280 driver and its emulator on a
fake bus: what a failed read is reported as, and a read that never finishes."""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.sampling.scheduler import SensorSlot
from drivers import bme280
from drivers.bme280 import BME280, BME280Options, EmulatedBME280
from drivers.sim.fake_smbus import FakeSMBus
from drivers.sim.signal import SimulatedSignal
from tests.support.scheduling import Run


def chip_on(bus: FakeSMBus, address: int, **kwargs: object) -> EmulatedBME280:
    chip = EmulatedBME280(temperature=SimulatedSignal(21.5), **kwargs)  # type: ignore[arg-type]
    bus.attach(address, chip)
    return chip


def bme280_slot(
    bus: FakeSMBus,
    address: int = 0x76,
    *,
    interval: float = 0.05,
    timeout: float | None = None,
    measurement_timeout_s: float | None = None,
    wrap: Callable[[BME280], BME280] = lambda driver: driver,
) -> SensorSlot:
    options = BME280Options(interval=interval, timeout=timeout, address=address)  # type: ignore[arg-type]
    return SensorSlot(
        name=f"air{address:x}",
        spec=bme280.SPEC,
        options=options,
        open=lambda: wrap(
            BME280(
                bus=bus,
                address=address,
                resource="i2c-1",
                measurement_timeout_s=measurement_timeout_s,
            )
        ),
    )


def test_a_chip_that_never_finishes_its_conversion_is_reported_as_the_driver_says() -> None:
    bus = FakeSMBus(1)
    chip = chip_on(bus, 0x76)
    chip.stuck_measuring = True
    run = Run([bme280_slot(bus, measurement_timeout_s=0.01)])
    run.until(lambda: bool(run.kinds("read_error")))
    error = run.kinds("read_error")[0]
    # MeasurementTimeout is a TimeoutError: it is not the scheduler's own read timeout.
    assert error.fields["error"] == "MeasurementTimeout", error
    assert "still measuring" in error.message
    assert "did not finish" not in error.message
    assert run.slots[0].error_kinds["MeasurementTimeout"] >= 1


def test_a_read_that_hangs_on_the_bus_times_out_and_the_sensor_reads_again_after() -> None:
    bus = FakeSMBus(1, may_block=True)  # stands for a real bus: a transaction may hang
    release = threading.Event()
    hang = threading.Event()

    class Hanging(EmulatedBME280):
        def read_registers(self, register: int, length: int) -> bytes:
            if hang.is_set() and register == bme280.REG_DATA:
                release.wait(10)
            return super().read_registers(register, length)

    bus.attach(0x76, Hanging(temperature=SimulatedSignal(21.5)))
    run = Run([bme280_slot(bus, interval=0.05, timeout=0.2)])
    state = {"hung": False}

    def done() -> bool:
        if len(run.readings) >= 2 and not state["hung"]:
            state["hung"] = True
            hang.set()
        if state["hung"] and run.kinds("read_error") and not release.is_set():
            hang.clear()
            release.set()  # the chip lets go: the bus is free again
            state["after"] = len(run.readings)  # type: ignore[assignment]
        return "after" in state and len(run.readings) >= state["after"] + 2

    run.until(done)
    error = run.kinds("read_error")[0]
    assert error.fields["error"] == "TransientError"
    assert "did not finish within 0.2s" in error.message
    assert [r.values["temperature"] for r in run.readings] == [21.5] * len(run.readings)
    seqs = [r.seq for r in run.readings]
    assert seqs == list(range(1, len(seqs) + 1))


def test_an_open_that_hangs_on_the_bus_times_out_and_the_sensor_opens_again_after() -> None:
    bus = FakeSMBus(1, may_block=True)
    release = threading.Event()

    class HangsAtOpen(EmulatedBME280):
        def read_registers(self, register: int, length: int) -> bytes:
            if register == bme280.REG_CHIP_ID and not release.is_set():
                release.wait(10)
            return super().read_registers(register, length)

    bus.attach(0x76, HangsAtOpen(temperature=SimulatedSignal(21.5)))
    run = Run([bme280_slot(bus, interval=0.05, timeout=0.2)])

    def done() -> bool:
        if run.kinds("read_error") and not release.is_set():
            release.set()  # the chip answers at last
        return len(run.readings) >= 2

    run.until(done)
    error = run.kinds("read_error")[0]
    # Reported and retried like a hung read, not a crash of the sensor's sampling.
    assert error.fields["error"] == "TransientError"
    assert "opening the sensor did not finish within 0.2s" in error.message
    assert [r.values["temperature"] for r in run.readings[:2]] == [21.5, 21.5]


# -- a read in steps (drivers.base.SteppedSensor): where each step runs ----------------------


class Where:
    """An emulated chip that records, for each trigger and each fetch of the results, the
    thread the transaction came from."""

    def __init__(self, inner: EmulatedBME280, address: int, log: list[tuple[int, str, str]]):
        self.inner = inner
        self.address = address
        self.log = log

    def read_registers(self, register: int, length: int) -> bytes:
        if register == bme280.REG_DATA:
            self.log.append((self.address, "fetch", threading.current_thread().name))
        return self.inner.read_registers(register, length)

    def write_registers(self, register: int, data: bytes) -> None:
        if register in (bme280.REG_CTRL_HUM, bme280.REG_CONFIG, bme280.REG_CTRL_MEAS):
            self.log.append((self.address, f"set {register:02X}", threading.current_thread().name))
        self.inner.write_registers(register, data)


def two_chips(bus: FakeSMBus) -> tuple[Run, list[tuple[int, str, str]]]:
    log: list[tuple[int, str, str]] = []
    for address, celsius in ((0x76, 21.5), (0x77, 23.25)):
        bus.attach(
            address, Where(EmulatedBME280(temperature=SimulatedSignal(celsius)), address, log)
        )
    return Run([bme280_slot(bus, 0x76, interval=0.03), bme280_slot(bus, 0x77, interval=0.03)]), log


def enough(run: Run) -> Callable[[], bool]:
    return lambda: all(sum(r.sensor == s.name for r in run.readings) >= 4 for s in run.slots)


def check_readings_and_steps(run: Run, log: list[tuple[int, str, str]]) -> None:
    for reading in run.readings:
        assert reading.values["temperature"] == {"air76": 21.5, "air77": 23.25}[reading.sensor]
    for slot in run.slots:
        seqs = [r.seq for r in run.readings if r.sensor == slot.name]
        assert seqs == list(range(1, len(seqs) + 1))
    # A trigger (ctrl_hum, config, ctrl_meas) is one step: the other chip never talks inside
    # it. Inside a conversion it may: that is the point.
    ops = [(address, op) for address, op, _ in log]
    for i, (address, op) in enumerate(ops):
        if op == "set F2":
            assert ops[i + 1 : i + 3] == [(address, "set F5"), (address, "set F4")], ops[i : i + 3]


def test_a_stepped_read_on_an_emulated_bus_runs_on_the_loop_with_no_worker_thread() -> None:
    bus = FakeSMBus(1)
    run, log = two_chips(bus)
    run.until(enough(run))
    check_readings_and_steps(run, log)
    assert {thread for _, _, thread in log} == {threading.main_thread().name}
    # The threads that opened the two chips are gone; no bus worker was ever made.
    assert run.workers == []


def test_a_stepped_read_on_a_bus_that_may_block_runs_each_step_on_the_bus_worker() -> None:
    bus = FakeSMBus(1, may_block=True)
    run, log = two_chips(bus)
    run.until(enough(run))
    check_readings_and_steps(run, log)
    assert {thread for _, _, thread in log} == {"read-i2c-1_0"}
    assert run.workers == ["i2c-1"]


def test_a_step_waits_for_the_worker_while_another_thread_holds_the_bus() -> None:
    """The loop never blocks on the bus lock: a step it cannot take the lock for at once
    goes to the bus's worker, behind whoever holds the bus there."""
    from drivers.hardware import bus_lock

    bus = FakeSMBus(1)
    run, log = two_chips(bus)
    held = threading.Event()
    let_go = threading.Event()

    def hold() -> None:
        with bus_lock(bus):
            held.set()
            let_go.wait(10)

    holder = threading.Thread(target=hold)

    def done() -> bool:
        if not held.is_set() and len(run.readings) >= 2:
            holder.start()
            held.wait()
        if held.is_set() and "i2c-1" in run.scheduler._executors:
            let_go.set()  # a step was handed to the bus's worker, which now waits for us
        return let_go.is_set() and enough(run)() and len(run.readings) >= 12

    try:
        run.until(done)
    finally:
        let_go.set()
        if held.is_set():
            holder.join()
    check_readings_and_steps(run, log)
    threads = [thread for _, _, thread in log]
    assert threading.main_thread().name in threads
    assert "read-i2c-1_0" in threads
    assert threads[-1] == threading.main_thread().name  # back on the loop once the bus is free


def test_a_stepped_read_still_polling_at_the_sensors_timeout_is_abandoned() -> None:
    bus = FakeSMBus(1)
    chip = chip_on(bus, 0x76)
    run = Run([bme280_slot(bus, interval=0.05, timeout=0.1, measurement_timeout_s=30.0)])
    healed = {"n": 0}

    def done() -> bool:
        if len(run.readings) >= 2 and healed["n"] == 0:
            chip.stuck_measuring = True
        if run.kinds("read_error") and healed["n"] == 0:
            healed["n"] = chip.measurements
            chip.stuck_measuring = False
        return healed["n"] > 0 and len(run.readings) >= 4

    run.until(done)
    error = run.kinds("read_error")[0]
    assert error.fields["error"] == "TransientError"
    assert "did not finish within 0.1s" in error.message
    assert run.workers == []  # all of it on the loop
