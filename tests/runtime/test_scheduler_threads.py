"""Where the scheduler runs a read: on the event loop when it cannot block, else on the
worker thread of its bus."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from agent.events import Event
from agent.mqtt.payloads import Reading
from agent.sampling.scheduler import MemorySequence, Scheduler, SensorSlot
from drivers import system
from drivers.base import Sensor
from drivers.hardware import SimulatedHardware


class _Where(Sensor):
    """Wraps a real driver and records the thread each read ran on."""

    def __init__(self, inner: Sensor, threads: list[str]) -> None:
        self._inner = inner
        self._threads = threads

    def read(self) -> dict[str, float]:
        self._threads.append(threading.current_thread().name)
        return self._inner.read()

    def close(self) -> None:
        self._inner.close()


def _sample(blocking: bool, reads: int) -> tuple[list[str], list[Reading], int]:
    threads: list[str] = []
    readings: list[Reading] = []
    events: list[Event] = []
    hardware = SimulatedHardware(seed=1)
    options = system.SystemOptions(interval=0.02)
    system.SPEC.emulate(options, hardware)
    slot = SensorSlot(
        name="pi",
        spec=replace(system.SPEC, blocking=blocking),
        options=options,
        open=lambda: _Where(system.SPEC.open(options, hardware), threads),  # type: ignore[arg-type]
    )
    scheduler = Scheduler(
        slots=[slot],
        emit=lambda reading, _slot: readings.append(reading),
        report=events.append,
        sequence=MemorySequence(),
    )

    async def run() -> None:
        task = asyncio.create_task(scheduler.run())
        while len(readings) < reads:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(run())
        workers = len(scheduler._executors)
    finally:
        scheduler.close()
        hardware.close()
    return threads, readings, workers


def test_a_read_that_cannot_block_runs_on_the_event_loop_without_a_worker() -> None:
    assert system.SPEC.blocking is False, "/proc and sysfs reads"
    threads, readings, workers = _sample(blocking=False, reads=3)
    assert set(threads) == {threading.main_thread().name}
    assert workers == 0
    assert [r.seq for r in readings[:3]] == [1, 2, 3]
    assert "soc_temperature" in readings[0].values


def test_a_read_that_may_block_runs_on_its_worker_thread() -> None:
    threads, readings, workers = _sample(blocking=True, reads=3)
    assert threading.main_thread().name not in threads
    assert all(name.startswith("read-") for name in threads), threads
    assert workers == 1
    assert [r.seq for r in readings[:3]] == [1, 2, 3]
