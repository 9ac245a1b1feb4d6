"""How the scheduler reads an I2C chip, through the real BME280 driver and its emulator on a
fake bus: what a failed read is reported as, and a read that never finishes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from agent.events import Event
from agent.mqtt.payloads import Reading
from agent.sampling.scheduler import MemorySequence, Scheduler, SensorSlot
from drivers import bme280
from drivers.bme280 import BME280, BME280Options, EmulatedBME280
from drivers.sim.fake_smbus import FakeSMBus
from drivers.sim.signal import SimulatedSignal


class Run:
    """A scheduler over ``slots``, run until ``until`` holds (or 10 s pass)."""

    def __init__(self, slots: list[SensorSlot]) -> None:
        self.slots = slots
        self.readings: list[Reading] = []
        self.events: list[Event] = []
        self.scheduler = Scheduler(
            slots=slots,
            emit=lambda reading, _slot: self.readings.append(reading),
            report=self.events.append,
            sequence=MemorySequence(),
        )

    def until(self, done: Callable[[], bool], *, limit_s: float = 10.0) -> None:
        async def run() -> None:
            task = asyncio.create_task(self.scheduler.run())
            try:
                async with asyncio.timeout(limit_s):
                    while not done():
                        await asyncio.sleep(0.005)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        try:
            asyncio.run(run())
        finally:
            self.scheduler.close()

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


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
    bus = FakeSMBus(1)
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
