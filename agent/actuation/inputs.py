"""Inputs: every debounced edge is published at once (QoS 1, retained), and every input's
state again after each connect."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.events import Event, EventSink
from agent.mqtt.payloads import encode_json, iso_ts
from drivers.base import Input, InputOptions
from drivers.errors import DriverError
from drivers.hardware import Hardware
from drivers.registry import guarded_open, spec_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputState:
    """What ``<base>/input/<name>`` says."""

    on: bool
    #: When the edge happened (unix s).
    ts: float

    def encode(self) -> bytes:
        return encode_json({"state": "on" if self.on else "off", "ts": iso_ts(self.ts)})


class InputWatcher:
    """Opens the inputs and turns their edges into published states.

    Edge callbacks come on the GPIO library's thread; they only stamp the time and hand
    the edge to the event loop.
    """

    def __init__(
        self,
        *,
        inputs: dict[str, InputOptions],
        hardware: Hardware,
        publish: Callable[[str, InputState], None],
        report: EventSink,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._options = inputs
        self._hardware = hardware
        self._publish = publish
        self._report = report
        self._loop = loop
        self._clock = clock
        self.drivers: dict[str, Input] = {}
        self.states: dict[str, InputState] = {}

    def open(self) -> None:
        """Open every input; one that fails is reported and left out."""
        for name, options in self._options.items():
            try:
                driver = guarded_open(spec_of(options), options, self._hardware)
                assert isinstance(driver, Input)
                self.states[name] = InputState(driver.is_on, self._clock())
            except DriverError as e:
                self._report(
                    Event(
                        "input_unavailable",
                        f"input {name} cannot be used: {e}",
                        level="error",
                        fields={"input": name},
                    )
                )
                continue
            self.drivers[name] = driver
            driver.on_change(functools.partial(self._edge_from_thread, name))

    def _edge_from_thread(self, name: str, on: bool) -> None:
        ts = self._clock()
        self._loop.call_soon_threadsafe(self._edge, name, on, ts)

    def _edge(self, name: str, on: bool, ts: float) -> None:
        if name not in self.drivers:
            return
        state = InputState(on, ts)
        self.states[name] = state
        log.info("input %s %s", name, "on" if on else "off", extra={"INPUT": name})
        self._publish(name, state)

    def publish_all(self) -> None:
        for name, state in self.states.items():
            self._publish(name, state)

    def close(self) -> None:
        for driver in self.drivers.values():
            driver.close()
        self.drivers.clear()
