"""Running the real :class:`~agent.sampling.scheduler.Scheduler` in a test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.events import Event
from agent.mqtt.payloads import Reading
from agent.sampling.scheduler import MemorySequence, Scheduler, SensorSlot


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
            #: The scheduler's worker threads at the end, by bus (or sensor).
            self.workers = sorted(self.scheduler._executors)
        finally:
            self.scheduler.close()

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]
