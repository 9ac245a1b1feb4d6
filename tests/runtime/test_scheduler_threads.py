"""Where the scheduler runs a read: on the event loop when it cannot block, else on the
worker thread of its bus."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from agent.mqtt.payloads import Reading
from agent.sampling.scheduler import SensorSlot
from drivers import system
from drivers.base import Sensor
from drivers.hardware import SimulatedHardware
from tests.support.scheduling import Run


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
    hardware = SimulatedHardware(seed=1)
    options = system.SystemOptions(interval=0.02)
    system.SPEC.emulate(options, hardware)
    slot = SensorSlot(
        name="pi",
        spec=replace(system.SPEC, blocking=blocking),
        options=options,
        open=lambda: _Where(system.SPEC.open(options, hardware), threads),  # type: ignore[arg-type]
    )
    run = Run([slot])
    try:
        run.until(lambda: len(run.readings) >= reads)
    finally:
        hardware.close()
    return threads, run.readings, len(run.workers)


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


class _SlowProbe(Sensor):
    """A probe whose read blocks for its conversion, on a bus shared with others (as
    DS18B20s on one 1-Wire master: 750 ms each, one at a time)."""

    resource = "w1-test"

    def __init__(self, inner: Sensor, conversion_s: float, started: list[float]) -> None:
        self._inner = inner
        self._conversion_s = conversion_s
        self._started = started

    def read(self) -> dict[str, float]:
        self._started.append(time.time())
        time.sleep(self._conversion_s)
        return self._inner.read()

    def close(self) -> None:
        self._inner.close()


def test_reads_that_queue_on_one_bus_are_stamped_when_each_starts() -> None:
    """Three probes at 1 s share a wake-up and one bus: each waits for the conversions
    before it, and its reading's ts is when its own read started, not the wake-up."""
    hardware = SimulatedHardware(seed=1)
    options = system.SystemOptions(interval=1.0)
    system.SPEC.emulate(options, hardware)
    started: list[float] = []
    slots = [
        SensorSlot(
            name=f"probe{i}",
            spec=replace(system.SPEC, blocking=True),
            options=options,
            open=lambda: _SlowProbe(system.SPEC.open(options, hardware), 0.15, started),  # type: ignore[arg-type]
        )
        for i in range(3)
    ]
    run = Run(slots)
    assert set(run.scheduler.phases().values()) == {0.0}, "one wake-up"
    try:
        run.until(lambda: len(run.readings) >= 3)
    finally:
        hardware.close()
    stamps = sorted(r.ts for r in run.readings[:3])
    assert stamps == pytest.approx(sorted(started[:3]), abs=0.01)
    assert stamps[2] - stamps[0] >= 2 * 0.15 - 0.01, "stamped at the wake-up, not the read"
