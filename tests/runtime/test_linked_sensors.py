"""A sensor linked to another (DriverSpec.links): the SCD4x compensates its CO₂ with the
pressure a BME280 next to it measures, through the real scheduler, drivers and emulators."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from agent.events import Event
from agent.mqtt.payloads import Reading
from agent.sampling.scheduler import MemorySequence, Scheduler, SensorSlot
from drivers import bme280, scd4x
from drivers.hardware import SimulatedHardware


def _slot(name: str, spec: Any, options: Any, hardware: SimulatedHardware) -> SensorSlot:
    spec.emulate(options, hardware)
    return SensorSlot(
        name=name, spec=spec, options=options, open=lambda: spec.open(options, hardware)
    )


def _run(*, air_fails: bool) -> tuple[int | None, list[Reading]]:
    readings: list[Reading] = []
    events: list[Event] = []
    hardware = SimulatedHardware(seed=1)
    air = msgspec.convert(
        {
            "driver": "bme280",
            "interval": 0.05,
            "simulation": {"pressure": 951.4, "fail_rate": 1.0 if air_fails else 0.0},
        },
        bme280.BME280Options,
    )
    co2 = msgspec.convert(
        {"driver": "scd4x", "interval": 0.2, "pressure_from": "air"}, scd4x.SCD4xOptions
    )
    slots = [
        _slot("air", bme280.SPEC, air, hardware),
        _slot("co2", scd4x.SPEC, co2, hardware),
    ]
    scheduler = Scheduler(
        slots=slots,
        emit=lambda reading, _slot: readings.append(reading),
        report=events.append,
        sequence=MemorySequence(),
        failed_retry_s=60.0,
    )

    async def run() -> None:
        task = asyncio.create_task(scheduler.run())
        while sum(r.sensor == "co2" for r in readings) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(asyncio.wait_for(run(), 30))
        chip = hardware.fake_bus(1).devices[0x62]
        assert isinstance(chip, scd4x.EmulatedSCD4x)
        return chip.ambient_pressure, readings
    finally:
        scheduler.close()
        hardware.close()


def test_the_scd4x_is_given_the_pressure_its_neighbour_measured() -> None:
    pressure, readings = _run(air_fails=False)
    assert any(r.sensor == "air" for r in readings)
    assert pressure == 951  # hPa, the set_ambient_pressure word


def test_nothing_is_sent_while_the_linked_sensor_has_no_reading() -> None:
    pressure, readings = _run(air_fails=True)
    assert not any(r.sensor == "air" for r in readings)
    assert pressure is None  # the chip keeps its altitude compensation
