"""The driver contract: what every driver module provides and what the agent may rely on.

A driver module (one file in ``drivers/``) holds four things, and adding a driver touches
no other file but its line in :mod:`drivers.registry`:

1. its options, a frozen :class:`msgspec.Struct` tagged with the driver's name, subclassing
   :class:`SensorOptions`, :class:`OutputOptions` or :class:`InputOptions`;
2. its driver class, which takes its hardware by keyword and implements :class:`Sensor`,
   :class:`Output` or :class:`Input`;
3. an emulator that makes the same class run under ``--simulate``;
4. a :class:`DriverSpec` named ``SPEC`` that ties them together, with a commented sample.
"""

from __future__ import annotations

import abc
import math
import re
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

import msgspec

if TYPE_CHECKING:
    from drivers.hardware import Hardware, SimulatedHardware

#: Seconds per duration unit.
#: The longest duration accepted: ten years. Longer ones are mistakes, and the timers
#: that take them (asyncio, threading, MQTT's 32-bit intervals) have limits of their own.
MAX_DURATION_S = 3650 * 86400.0
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string.

    Raises:
        ValueError: with a message fit to show the user.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10s, 5m or a number of seconds, got {value}")
    seconds: float | None = None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if seconds is not None:
        if not math.isfinite(seconds):
            raise ValueError(f"must be a finite duration, got {value!r}")
        if seconds > MAX_DURATION_S:
            raise ValueError(f"must be at most 3650d (ten years), got {value!r}")
        return seconds
    raise ValueError(
        f"expected a duration such as 500ms, 10s, 5m, 1h, 7d or a number of seconds, got {value!r}"
    )


#: JSON Schema of a duration: seconds as a number, or a string such as "500ms", "10s", "7d".
DURATION_JSON_SCHEMA = {
    "type": ["number", "string"],
    "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)\s*$",
}
#: Seconds. The agent's config layer accepts "500ms", "10s", "5m", "1h", "7d" for these.
Seconds = Annotated[
    float, msgspec.Meta(ge=0, extra={"duration": True}, extra_json_schema=DURATION_JSON_SCHEMA)
]
#: Seconds, strictly positive.
PositiveSeconds = Annotated[
    float, msgspec.Meta(gt=0, extra={"duration": True}, extra_json_schema=DURATION_JSON_SCHEMA)
]
#: A simulated value: a constant, or ``[lo, hi]`` for a bounded random walk.
SimulatedValue = float | Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)]


class OptionError(ValueError):
    """An option value that is wrong given the others; raised from ``__post_init__``.

    Naming the option lets the config loader point at its line.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config struct: immutable, strict, keyword-only."""


@dataclass(frozen=True)
class Simulation:
    """How a sensor behaves under ``--simulate``.

    Each quantity maps to a constant or a ``[lo, hi]`` random walk; quantities left out
    take the driver's own plausible default. ``fail_rate`` is the share of reads that
    fail the way the real bus does.
    """

    values: Mapping[str, float | list[float]] = field(default_factory=dict)
    fail_rate: float = 0.0


class SensorOptions(Options, frozen=True, tag_field="driver"):
    """Options every sensor has; a driver's own options subclass this.

    ``interval``, ``qos`` and ``retain`` are read by the agent, not by the driver.
    """

    interval: Seconds = 10.0
    qos: Annotated[int, msgspec.Meta(ge=0, le=2)] = 1
    retain: bool = False
    #: Longest a read may take before it is abandoned; default: the interval, at most 10 s.
    timeout: PositiveSeconds | None = None
    #: As written in the config: quantity -> constant or [lo, hi], plus ``fail_rate``.
    simulation_spec: dict[str, SimulatedValue] = msgspec.field(default={}, name="simulation")

    @property
    def simulation(self) -> Simulation:
        """The ``simulation`` mapping, split into values and failure rate."""
        spec = dict(self.simulation_spec)
        fail_rate = spec.pop("fail_rate", 0.0)
        return Simulation(
            values=spec, fail_rate=float(fail_rate) if isinstance(fail_rate, int | float) else 0.0
        )


class OutputOptions(Options, frozen=True, tag_field="driver"):
    """Options every output has; the safety policy around them belongs to the agent."""

    initial: Literal["off", "on", "restore"] = "off"
    max_on: Seconds = 0.0
    failsafe: Literal["off", "on"] | None = "off"
    failsafe_after: Seconds = 60.0
    interlock: tuple[str, ...] = ()
    min_switch_interval: Seconds = 0.0
    #: Whether commands to this output must be signed; null: ``commands.auth.required``.
    auth: bool | None = None


#: Home Assistant's binary_sensor device classes: they decide what "on" is called
#: (door: open/closed, motion: detected/clear, moisture: wet/dry, ...).
BinarySensorClass = Literal[
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
    "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
    "smoke", "sound", "tamper", "update", "vibration", "window",
]  # fmt: skip


class InputOptions(Options, frozen=True, tag_field="driver"):
    """Options every input has."""

    #: How Home Assistant names the input's states (``door``: open/closed); null: on/off.
    device_class: BinarySensorClass | None = None


@dataclass(frozen=True)
class Quantity:
    """A physical quantity a sensor reports, in fixed units."""

    unit: str
    #: The chip's real resolution; readings are rounded to it.
    resolution: float
    description: str = ""
    #: Home Assistant ``device_class``, when there is one.
    device_class: str | None = None
    #: What the chip can measure, (lowest, highest) in :attr:`unit`; the conformance kit
    #: picks its simulation values inside it.
    valid_range: tuple[float, float] | None = None
    #: For a ratio ADC whose step grows with the value (a resistance from a divider): one
    #: step as a share of the value; readings are still rounded to :attr:`resolution`.
    relative_resolution: float | None = None

    def step_at(self, value: float) -> float:
        """The smallest change the chip can show near ``value``."""
        if self.relative_resolution is None:
            return self.resolution
        return max(self.resolution, abs(value) * self.relative_resolution)


class Driver(abc.ABC):
    """Every driver: releases its hardware in an idempotent :meth:`close` and is a
    context manager.

    Subclasses *must* implement :meth:`close`. They *may* set :attr:`resource` to the name
    of a shared bus ("i2c-1"): the agent never runs two reads on one resource at once.
    """

    resource: str | None = None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the hardware. Calling it again does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Sensor(Driver):
    """A sensor. Subclasses *must* implement :meth:`read`, or subclass
    :class:`SteppedSensor` and implement its steps."""

    #: Fastest the chip may be read, in seconds; the config refuses a shorter interval.
    min_interval_s: ClassVar[float] = 0.0

    @abc.abstractmethod
    def read(self) -> dict[str, float]:
        """Take one measurement: quantity name -> value in the quantity's unit.

        Raises:
            drivers.errors.TransientError: the read may succeed if retried.
            drivers.errors.PermanentError: it will not, until something changes.
        """

    def receive(self, quantity: str, value: float) -> None:
        """The latest ``quantity`` of another sensor this one is linked to
        (:attr:`DriverSpec.links`), given before each read. Called on the agent's thread
        between reads: keep it, and apply it in :meth:`read`. A driver with links *must*
        implement it."""
        raise NotImplementedError(f"{type(self).__name__} takes no linked quantity")


#: A read in steps (:meth:`SteppedSensor.read_steps`): the generator does bus transactions
#: between its yields, yields the seconds to wait before its next step, and returns the
#: reading.
ReadSteps = Generator[float, None, dict[str, float]]


class SteppedSensor(Sensor):
    """A sensor whose measurement is bus transactions with waits between them: write a
    trigger, wait for the conversion, poll a status bit, fetch the result.

    Subclasses *must* implement :meth:`read_steps` and set :attr:`step_lock`; :meth:`read`
    is then the synchronous drive of the steps. The agent drives them itself instead: the
    waits are timers on its event loop, not a sleeping thread, and each step runs on the
    bus's worker thread, or on the loop when :attr:`steps_may_block` is False. Each step is
    run under :attr:`step_lock`, held by whoever drives the steps, so a step is atomic on
    the bus; between steps other chips on the bus may be talked to (a forced-mode
    conversion runs inside the chip while the bus is free).
    """

    #: The lock every step runs under: :func:`drivers.hardware.bus_lock` of the chip's bus.
    step_lock: threading.RLock
    #: Whether a step may block: True on a real bus. False when every transaction is
    #: answered from memory (an emulated chip on a fake bus under ``--simulate``,
    #: :func:`drivers.hardware.bus_may_block`): the agent then runs the steps on its event
    #: loop, with no worker thread.
    steps_may_block: bool = True

    @abc.abstractmethod
    def read_steps(self) -> ReadSteps:
        """One measurement as steps: do a step's transactions, ``yield`` the seconds to
        wait before the next, ``return`` the reading (as :meth:`read` returns it).

        A step must not sleep (yield the wait instead) nor take :attr:`step_lock` (its
        driver holds it). The generator raises what :meth:`read` raises; it may be closed
        at a yield (a timeout, the agent stopping) and must then leave nothing half done
        that the next measurement does not redo.
        """

    def read(self) -> dict[str, float]:
        """The steps of :meth:`read_steps` one after the other, holding :attr:`step_lock`
        throughout and waiting with :meth:`sleep`."""
        with self.step_lock:
            return run_steps(self.read_steps(), self.sleep)

    def sleep(self, seconds: float) -> None:
        """How :meth:`read` waits between steps; a driver given a ``sleep`` by its
        :class:`~drivers.hardware.Hardware` (virtual time in tests) overrides this."""
        time.sleep(seconds)


def run_steps(steps: ReadSteps, sleep: Callable[[float], None]) -> dict[str, float]:
    """Drive ``steps`` to the end, waiting between them with ``sleep``: the reading."""
    try:
        wait = next(steps)
        while True:
            sleep(wait)
            wait = steps.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class Output(Driver):
    """A binary output (a relay). Subclasses *must* implement :meth:`set` and :attr:`is_on`."""

    @abc.abstractmethod
    def set(self, on: bool) -> None:
        """Drive the output to ``on`` (the active level) or off."""

    @property
    @abc.abstractmethod
    def is_on(self) -> bool:
        """The level read back from the pin, as on/off."""


class Input(Driver):
    """A binary input. Subclasses *must* implement :attr:`is_on` and :meth:`on_change`."""

    @property
    @abc.abstractmethod
    def is_on(self) -> bool:
        """The debounced state now."""

    @abc.abstractmethod
    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(is_on)`` on every debounced edge, from the driver's own thread."""


@dataclass(frozen=True)
class DriverSpec:
    """The registry's view of one driver."""

    name: str
    kind: Literal["sensor", "output", "input"]
    summary: str
    options: type[Options]
    #: Opens the driver on real or simulated hardware.
    open: Callable[[Any, Hardware], Driver]
    #: Installs an emulator into simulated hardware so that :attr:`open` finds a device.
    emulate: Callable[[Any, SimulatedHardware], None]
    quantities: Mapping[str, Quantity] = field(default_factory=dict)
    min_interval_s: float = 0.0
    #: A commented YAML sample printed by ``edge-agent drivers``.
    sample: str = ""
    #: I2C addresses the chip can answer at (``edge-agent scan`` names the driver there).
    i2c_addresses: tuple[int, ...] = ()
    #: Quantities the chip computes from the others (the INA219's power): a simulation
    #: does not set them, and the conformance kit does not pick values for them.
    computed: tuple[str, ...] = ()
    #: The quantities of one configured sensor, when they depend on its options (an ADC
    #: whose ``map`` names its quantity); ``None``: always :attr:`quantities`.
    quantities_for: Callable[[Any], Mapping[str, Quantity]] | None = None
    #: The chip measures relative humidity on the same die as ``temperature``: a
    #: temperature correction then also corrects the humidity (the agent keeps the vapour
    #: pressure the chip measured; ``humidity_follows_temperature``).
    humidity_shares_die: bool = False
    #: Whether opening and reading it may block: a bus transaction, a wait for a
    #: conversion. False for a driver that only reads files the kernel answers from
    #: memory (sysfs, /proc): the agent then reads it on its event loop, with no worker
    #: thread and no thread hand-off per reading.
    blocking: bool = True
    #: Options that name another sensor of the same agent whose quantity this driver uses,
    #: option -> quantity (the SCD4x's ``pressure_from`` -> ``pressure``, for its CO₂
    #: compensation): the config checks the sensor exists and reports it, and the agent
    #: hands its latest value to :meth:`Sensor.receive` before each read.
    links: Mapping[str, str] = field(default_factory=dict)

    def quantities_of(self, options: Any) -> Mapping[str, Quantity]:
        """The quantities a sensor configured with ``options`` reports."""
        if self.quantities_for is not None:
            return self.quantities_for(options)
        return self.quantities
