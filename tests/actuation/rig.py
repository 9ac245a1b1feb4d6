"""A test rig for outputs: an :class:`OutputController` on simulated hardware whose pins
keep a journal of every write and level change, and can be made to fail.

Faking stops at the pin: the agent's controller, the relay driver and gpiozero's
``OutputDevice`` are the real ones.
"""

from __future__ import annotations

import asyncio
import errno
import os
import selectors
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from gpiozero.pins.mock import MockPin

from agent.actuation.outputs import OutputController, OutputState
from agent.actuation.statefile import OutputStateFile
from agent.events import Event
from drivers.base import OutputOptions
from drivers.gpio import RelayOptions
from drivers.hardware import SimulatedHardware


class JournalPin(MockPin):  # type: ignore[misc]
    """A ``MockPin`` that records what is written to it and every level it takes, in order,
    in its factory's ``journal`` (shared by every pin, so the order across pins is known).

    ``fail_writes``: every write raises ``OSError(EIO)``, as a pin whose chip has gone away.
    ``stuck``: writes are accepted but the level does not follow (a welded contact read
    back through a feedback line, a shorted driver).
    """

    def __init__(self, factory: Any, info: Any, **kwargs: Any) -> None:
        self.fail_writes = False
        self.stuck = False
        #: Every level written (True = HIGH), including at construction.
        self.writes: list[bool] = []
        super().__init__(factory, info, **kwargs)

    def _set_state(self, value: Any) -> None:
        if self.fail_writes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.writes.append(bool(value))
        if self.stuck:
            return
        super()._set_state(value)

    def _change_state(self, value: Any) -> bool:
        changed = bool(super()._change_state(value))
        if changed:
            self._factory.journal.append((self._number, bool(value)))
        return changed


def relay(pin: int, **fields: Any) -> RelayOptions:
    """Relay options as the config loader would build them (failsafe off after 60 s unless
    given)."""
    return msgspec.convert({"driver": "relay", "pin": pin, **fields}, RelayOptions)


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, when nothing is ready, jumps its loop's clock to the next timer
    instead of sleeping until it."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout:
            self._loop.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: every timer runs at exactly its due time, at once,
    however busy the machine is, so "not yet" and "by then" are exact."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


@dataclass
class Rig:
    """One agent's outputs: hardware, state file, what was published and reported; its
    loop runs on virtual time (:class:`VirtualTimeLoop`)."""

    state_path: Path
    loop: VirtualTimeLoop = field(default_factory=VirtualTimeLoop)
    #: The wall clock at the loop's time 0 (the controller stamps with :meth:`wall`).
    wall_at_zero: float = field(default_factory=time.time)
    published: list[tuple[str, OutputState]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    controller: OutputController | None = None
    hardware: SimulatedHardware = field(init=False)

    def __post_init__(self) -> None:
        self.hardware = self._new_hardware()

    def _new_hardware(self) -> SimulatedHardware:
        hardware = SimulatedHardware(seed=1)
        factory = hardware.pin_factory()
        factory.pin_class = JournalPin
        factory.journal = []
        return hardware

    @property
    def factory(self) -> Any:
        return self.hardware.pin_factory()

    @property
    def journal(self) -> list[tuple[int, bool]]:
        """(GPIO number, level) of every level change of every pin, oldest first."""
        journal: list[tuple[int, bool]] = self.factory.journal
        return journal

    def pin(self, number: int) -> JournalPin:
        pin = self.factory.pin(number)
        assert isinstance(pin, JournalPin)
        return pin

    def open(self, outputs: dict[str, OutputOptions]) -> OutputController:
        self.controller = OutputController(
            outputs=outputs,
            hardware=self.hardware,
            state_file=OutputStateFile(self.state_path),
            publish=lambda name, state: self.published.append((name, state)),
            report=self.events.append,
            loop=self.loop,
            clock=self.wall,
        )
        self.controller.open()
        return self.controller

    def reboot(self) -> None:
        """Stop like the agent does on SIGTERM, then start on fresh hardware (a new pin
        factory: what the pins did before is forgotten), keeping the state file."""
        self.stop()
        self.hardware.close()
        self.hardware = self._new_hardware()
        self.published.clear()
        self.events.clear()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.shutdown()
            self.controller.close()
            self.controller = None

    def wall(self) -> float:
        """The wall clock: the real one at the rig's start plus the loop's virtual time."""
        return self.wall_at_zero + self.loop.time()

    def run_for(self, seconds: float) -> None:
        """Let the loop run its timers for ``seconds`` of virtual time."""
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def reasons(self, name: str) -> list[str]:
        """The reasons of every state published for ``name``, oldest first."""
        return [state.reason for n, state in self.published if n == name]

    def event_kinds(self) -> list[str]:
        return [event.kind for event in self.events]

    def close(self) -> None:
        if self.controller is not None:
            self.controller.close()
            self.controller = None
        self.hardware.close()
        self.loop.close()
