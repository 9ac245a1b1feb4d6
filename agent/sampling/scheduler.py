"""Drift-free sampling of every sensor, with failure tracking.

Reading k of a sensor is due at ``t0 + k * interval`` on the monotonic clock, so slow
reads never make the schedule drift, and a read that overruns skips the slots it missed
instead of bursting to catch up. Sensors that share an interval are read in wake-ups of
up to one sensor per :data:`INTERVAL_PER_SHARED_WAKE` of it, spread evenly across the
interval: a wake-up of the idle process costs about as much CPU as a read, and each read
a wake-up adds delays the next one by about as much.
A read that may block (``DriverSpec.blocking``: an I2C transaction, a conversion wait)
runs in a worker thread - one per bus (``Driver.resource``), so reads on one bus are
serialised and a hung I2C read stalls neither other buses nor MQTT - under a timeout. A
read that cannot block (sysfs, /proc) runs on the event loop itself: a worker's round
trip (two thread wake-ups and the loop's self-pipe) costs more than such a read.
Transient errors are retried with backoff inside the interval; a sensor that keeps
failing is reported failed, retried every few minutes, and reported again when it
recovers.

A reading is stamped when its read starts: on the bus's worker for a read that blocks
(behind whatever was queued on that bus before it, a DS18B20's 750 ms conversion say),
as its first step is dispatched for a read in steps (which holds the bus only for
transactions), and for a retry when the retry starts.

A successful read goes through the sensor's :class:`~agent.filters.chain.SensorChain`
(filters, derived quantities, publish policy). A sample the chain holds back entirely is
not published and takes no ``seq``, so ``seq`` counts published readings and a gap in it
still means a lost one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.clock import ClockSource, stamp
from agent.events import Event, EventSink, RateLimiter
from agent.filters.chain import SensorChain
from agent.mqtt.payloads import Reading
from drivers.base import DriverSpec, ReadSteps, Sensor, SensorOptions, SteppedSensor
from drivers.errors import DriverError, PermanentError, TransientError

log = logging.getLogger(__name__)

#: Consecutive failed intervals before a sensor is reported failed.
FAILURES_BEFORE_FAILED = 3
#: How often a failed sensor is tried again, at most.
FAILED_RETRY_S = 120.0
#: Sensors sharing an interval share a wake-up, one per this much of the interval at most
#: (four at 1 s, one - spread - below 500 ms), so a read is late by a fraction of a percent
#: of its interval for the company it keeps.
INTERVAL_PER_SHARED_WAKE = 0.25


#: When a read started: wall time, monotonic time (None: not kept), whether the wall clock
#: was synchronised.
Taken = tuple[float, float | None, bool]


class SequenceSource(Protocol):
    """Hands out ``seq`` numbers per sensor, kept across restarts, within an ``epoch``."""

    def next(self, sensor: str) -> int: ...

    @property
    def epoch(self) -> int | None:
        """The counters' epoch after the last :meth:`next` (None: not kept)."""
        ...


class MemorySequence:
    """``seq`` numbers that start from 1 at every start (for ``edge-agent read``)."""

    def __init__(self) -> None:
        self._seq: dict[str, int] = {}

    @property
    def epoch(self) -> int | None:
        return None

    def next(self, sensor: str) -> int:
        self._seq[sensor] = self._seq.get(sensor, 0) + 1
        return self._seq[sensor]


@dataclass
class SensorSlot:
    """One configured sensor and what is known of it."""

    name: str
    spec: DriverSpec
    options: SensorOptions
    open: Callable[[], Sensor]
    driver: Sensor | None = None
    failed: bool = False
    consecutive_failures: int = 0
    last_error: str | None = None
    last_values: dict[str, float] = field(default_factory=dict)
    last_ts: float | None = None
    #: The monotonic time of the last reading (None: not known), for its age.
    last_mono: float | None = None
    #: Failed reads by error type (``BusError``, ``MeasurementTimeout``...).
    error_kinds: Counter[str] = field(default_factory=Counter)
    #: When a failed sensor is tried next (monotonic seconds).
    retry_at: float = 0.0
    #: Filters, derived quantities and publish policy (with their state); default: made
    #: from ``options``. A reload hands the old one over when the sensor did not change.
    chain: SensorChain = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.chain is None:
            self.chain = SensorChain.for_sensor(self.spec, self.options)

    @property
    def timeout_s(self) -> float:
        if self.options.timeout is not None:
            return self.options.timeout
        return min(max(self.options.interval, 1.0), 10.0)


class Scheduler:
    """Samples every sensor on its own interval until cancelled.

    Args:
        slots: the sensors.
        emit: receives every successful reading, on the event loop.
        report: receives events (sensor failed/recovered, read errors, rate-limited).
        sequence: hands out ``seq`` numbers.
        failed_retry_s: how often a failed sensor is tried again.
        clock: monotonic seconds, for the schedule.
        time_source: stamps the readings (wall time, monotonic time, and whether the wall
            clock is synchronised); None: the system's wall clock, trusted.
    """

    def __init__(
        self,
        *,
        slots: list[SensorSlot],
        emit: Callable[[Reading, SensorSlot], None],
        report: EventSink,
        sequence: SequenceSource,
        failed_retry_s: float = FAILED_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        time_source: ClockSource | None = None,
    ) -> None:
        self.slots = slots
        self.failed_retry_s = failed_retry_s
        self._emit = emit
        self._report = report
        self._sequence = sequence
        self._clock = clock
        self._time_source = time_source
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._limiter = RateLimiter(60.0)
        self._links = _links(slots)
        #: Lateness of every read start behind its due time, in seconds (for benchmarks).
        self.lateness: list[float] = []
        self.record_lateness = False

    def _executor(self, slot: SensorSlot) -> concurrent.futures.ThreadPoolExecutor:
        key = slot.driver.resource if slot.driver and slot.driver.resource else f"s:{slot.name}"
        ex = self._executors.get(key)
        if ex is None:
            ex = self._executors[key] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"read-{key}"
            )
        return ex

    def phases(self) -> dict[str, float]:
        """Start offset of each sensor: sensors sharing an interval are read together, up
        to one per :data:`INTERVAL_PER_SHARED_WAKE` of it in a wake-up, in config order;
        the wake-ups are spread evenly across the interval."""
        groups: dict[float, list[SensorSlot]] = {}
        for slot in self.slots:
            groups.setdefault(slot.options.interval, []).append(slot)
        offsets = {}
        for interval, members in groups.items():
            per_wake = max(1, math.floor(interval / INTERVAL_PER_SHARED_WAKE + 1e-9))
            wakes = math.ceil(len(members) / per_wake)
            for i, slot in enumerate(members):
                offsets[slot.name] = interval * (i // per_wake) / wakes
        return offsets

    async def run(self) -> None:
        """Run until cancelled."""
        t0 = self._clock()
        phases = self.phases()
        tasks = [
            asyncio.create_task(self._sample(slot, t0 + phases[slot.name]), name=slot.name)
            for slot in self.slots
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop the worker threads (a hung read is abandoned, not waited for)."""
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    async def _sample(self, slot: SensorSlot, t0: float) -> None:
        interval = slot.options.interval
        k = 0
        while True:
            due = t0 + k * interval
            now = self._clock()
            if due < now - interval * 0.5:
                k = math.ceil((now - t0) / interval)
                due = t0 + k * interval
            if due > now:
                await asyncio.sleep(due - now)
            if self.record_lateness:
                self.lateness.append(self._clock() - due)
            k += 1
            if slot.failed and self._clock() < slot.retry_at:
                continue
            await self._sample_once(slot, due=due, deadline=due + interval * 0.9)

    async def _sample_once(self, slot: SensorSlot, *, due: float, deadline: float) -> None:
        delay = 0.1
        while True:
            try:
                (ts, mono, synced), values = await self._read(slot)
            except TransientError as e:
                if self._clock() + delay < deadline and not slot.failed:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                self._failure(slot, e, permanent=False)
                return
            except PermanentError as e:
                self._failure(slot, e, permanent=True)
                return
            self._success(slot, ts, values, due=due, mono=mono, synced=synced)
            return

    def _stamp(self) -> Taken:
        """When a read starts: wall time, monotonic time (None: not kept), synced."""
        source = self._time_source
        if source is None:
            return time.time(), None, True
        now = stamp(source)
        return now.wall, now.mono, now.synced

    def _stamped_read(self, driver: Sensor) -> tuple[Taken, dict[str, float]]:
        """A read stamped as it starts (on the bus's worker: after any read queued before
        it on that bus, which may be a conversion of 750 ms)."""
        return self._stamp(), _read_sensor(driver)

    async def _read(self, slot: SensorSlot) -> tuple[Taken, dict[str, float]]:
        """A reading and when its read started."""
        # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for swallows a
        # cancellation that arrives as the read completes, and the sensor would go on
        # sampling after the agent was told to stop.
        if not slot.spec.blocking:
            if slot.driver is None:
                slot.driver = _open_sensor(slot)
            self._hand_links(slot, slot.driver)
            return self._stamped_read(slot.driver)
        loop = asyncio.get_running_loop()
        if slot.driver is None:
            async with _within(slot.timeout_s, "opening the sensor"):
                slot.driver = await loop.run_in_executor(self._executor(slot), _open_sensor, slot)
            self._retire_opener(slot)
        driver = slot.driver
        self._hand_links(slot, driver)
        async with _within(slot.timeout_s, "read"):
            if isinstance(driver, SteppedSensor):
                # Stamped as its first step is dispatched: a stepped read holds its bus
                # only for transactions, so it waits behind others for milliseconds.
                taken = self._stamp()
                return taken, await self._read_steps(slot, driver)
            return await loop.run_in_executor(self._executor(slot), self._stamped_read, driver)

    async def _read_steps(self, slot: SensorSlot, driver: SteppedSensor) -> dict[str, float]:
        """Drive a stepped read: the waits are loop timers; each step runs under the bus's
        lock, on the loop when the bus cannot block and the lock is free at once, else on
        the bus's worker (behind whatever holds the bus there)."""
        loop = asyncio.get_running_loop()
        steps = driver.read_steps()
        lock = driver.step_lock
        inline = not driver.steps_may_block
        try:
            while True:
                if inline and lock.acquire(blocking=False):
                    try:
                        done, result = _step(steps)
                    finally:
                        lock.release()
                else:
                    done, result = await loop.run_in_executor(
                        self._executor(slot), _locked_step, steps, lock
                    )
                if done:
                    assert isinstance(result, dict)
                    return result
                assert isinstance(result, float | int)
                await asyncio.sleep(result)
        finally:
            # Abandoned at a wait (a timeout, a stop): let the driver clean up. A step still
            # running on a hung worker cannot be closed; it is dropped with its worker.
            with contextlib.suppress(ValueError):
                steps.close()

    def _retire_opener(self, slot: SensorSlot) -> None:
        """Stop the thread that opened ``slot``'s driver when its reads go elsewhere (the
        bus's worker, or the loop): an idle thread per sensor for nothing."""
        driver = slot.driver
        if driver is None or not driver.resource:
            return
        opener = self._executors.pop(f"s:{slot.name}", None)
        if opener is not None:
            opener.shutdown(wait=False)

    def _hand_links(self, slot: SensorSlot, driver: Sensor) -> None:
        """The latest values of the sensors ``slot`` is linked to (DriverSpec.links)."""
        for quantity, source in self._links.get(slot.name, ()):
            value = source.last_values.get(quantity)
            if value is not None and not source.failed:
                driver.receive(quantity, value)

    def _success(
        self,
        slot: SensorSlot,
        ts: float,
        raw: dict[str, float],
        *,
        due: float,
        mono: float | None = None,
        synced: bool = True,
    ) -> None:
        # The chain is given the due time, not the clock: throttles and heartbeats then
        # count whole intervals, whatever the jitter of the read.
        sample = slot.chain.process(raw, due)
        slot.consecutive_failures = 0
        slot.last_values = {**slot.last_values, **sample.filtered}
        slot.last_ts = ts
        slot.last_mono = mono
        if slot.failed:
            slot.failed = False
            self._report(
                Event(
                    "sensor_recovered",
                    f"sensor {slot.name} reads again",
                    "info",
                    {"sensor": slot.name},
                )
            )
        slot.last_error = None
        if not sample.published:
            return  # every quantity held back: nothing to publish, and no seq taken
        seq = self._sequence.next(slot.name)
        reading = Reading(
            sensor=slot.name,
            ts=ts,
            seq=seq,
            values=sample.published,
            epoch=self._sequence.epoch,
            clock_synced=synced,
            mono=mono,
        )
        self._emit(reading, slot)

    def _failure(self, slot: SensorSlot, error: DriverError, *, permanent: bool) -> None:
        slot.error_kinds[type(error).__name__] += 1
        slot.consecutive_failures += 1
        slot.last_error = f"{type(error).__name__}: {error}"
        fields = {"sensor": slot.name, "error": type(error).__name__}
        if permanent and slot.driver is not None:
            _close_quietly(slot.driver)
            slot.driver = None
        retry_s = max(slot.options.interval, self.failed_retry_s)
        slot.retry_at = self._clock() + retry_s
        if not slot.failed and (permanent or slot.consecutive_failures >= FAILURES_BEFORE_FAILED):
            slot.failed = True
            self._report(
                Event(
                    "sensor_failed",
                    f"sensor {slot.name} failed: {error}; retrying every {retry_s:g}s",
                    "error",
                    fields,
                )
            )
        elif not slot.failed and self._limiter.allow(f"read_error:{slot.name}"):
            self._report(Event("read_error", f"sensor {slot.name}: {error}", "warning", fields))


def _links(slots: list[SensorSlot]) -> dict[str, list[tuple[str, SensorSlot]]]:
    """Sensor name -> (quantity, slot it comes from) for every link its options make (the
    config has checked each names a sensor that reports the quantity)."""
    by_name = {slot.name: slot for slot in slots}
    links: dict[str, list[tuple[str, SensorSlot]]] = {}
    for slot in slots:
        for option, quantity in slot.spec.links.items():
            source = by_name.get(getattr(slot.options, option, None) or "")
            if source is not None and source is not slot:
                links.setdefault(slot.name, []).append((quantity, source))
    return links


@contextlib.asynccontextmanager
async def _within(seconds: float, what: str) -> AsyncIterator[None]:
    """The body under ``seconds``' timeout; running out is a :class:`TransientError`
    ("<what> did not finish within ..."). A driver's own TimeoutError passes through
    (MeasurementTimeout is one)."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise
        raise TransientError(f"{what} did not finish within {seconds:g}s") from None


def _open_sensor(slot: SensorSlot) -> Sensor:
    return slot.open()


def _step(steps: ReadSteps) -> tuple[bool, float | dict[str, float]]:
    """One step of a stepped read: ``(False, seconds to wait)`` or ``(True, reading)``."""
    try:
        return False, next(steps)
    except StopIteration as finished:
        return True, finished.value
    except DriverError:
        raise
    except OSError as e:  # a driver that let a bus error through
        raise TransientError(str(e)) from e


def _locked_step(steps: ReadSteps, lock: threading.RLock) -> tuple[bool, float | dict[str, float]]:
    with lock:
        return _step(steps)


def _read_sensor(driver: Sensor) -> dict[str, float]:
    try:
        return driver.read()
    except DriverError:
        raise
    except OSError as e:  # a driver that let a bus error through
        raise TransientError(str(e)) from e


def _close_quietly(driver: Sensor) -> None:
    try:
        driver.close()
    except (DriverError, OSError) as e:
        log.warning("closing driver: %s", e)
