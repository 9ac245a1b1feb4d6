"""Inputs: every edge is handed from gpiozero's thread to the loop and published once.

gpiozero's ``MockPin`` calls edge callbacks synchronously in whatever thread drives it,
and stores ``bounce`` without applying it (``_set_bounce``: "XXX Need to implement
this"). On a Pi, lgpio applies the debounce as a glitch filter: a level is reported only
once it has held for the bounce time, from lgpio's own thread. So:

* edges are driven from a thread of their own, standing in for gpiozero's;
* "bounce is swallowed" is tested with :class:`GlitchFilterPin`, a ``MockPin`` that
  filters like lgpio and calls back from a timer thread, and the plain ``MockPin`` is used
  to show what the watcher itself does: it neither drops nor reorders edges.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from gpiozero.pins.mock import MockPin

from agent.actuation.inputs import InputState, InputWatcher
from agent.events import Event
from drivers.base import InputOptions
from drivers.gpio import GPIOInputOptions, Relay
from drivers.hardware import SimulatedHardware


class GlitchFilterPin(MockPin):  # type: ignore[misc]
    """A ``MockPin`` that debounces as lgpio does: a new level is reported only after it
    has held for ``bounce`` seconds, from a timer thread (lgpio's alert thread on a Pi)."""

    def __init__(self, factory: Any, info: Any, **kwargs: Any) -> None:
        super().__init__(factory, info, **kwargs)
        self._filter_lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def _call_when_changed(self) -> None:
        if not self.bounce:
            super()._call_when_changed()
            return
        with self._filter_lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.bounce, self._settled, args=(self._state,))
            self._timer.daemon = True
            self._timer.start()

    def _settled(self, level: bool) -> None:
        if self._state == level and self._when_changed is not None:
            super(MockPin, self)._call_when_changed(self._last_change, level)

    def close(self) -> None:
        with self._filter_lock:
            if self._timer is not None:
                self._timer.cancel()
        super().close()


def gpio(pin: int, **fields: Any) -> GPIOInputOptions:
    return msgspec.convert({"driver": "gpio", "pin": pin, **fields}, GPIOInputOptions)


@dataclass
class Published:
    name: str
    state: InputState
    thread: int


@dataclass
class Bench:
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    hardware: SimulatedHardware = field(default_factory=SimulatedHardware)
    published: list[Published] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: The thread each ``ts`` was stamped on.
    stamped_on: list[int] = field(default_factory=list)
    watcher: InputWatcher | None = None

    @property
    def factory(self) -> Any:
        return self.hardware.pin_factory()

    def clock(self) -> float:
        self.stamped_on.append(threading.get_ident())
        return 1_000_000.0 + len(self.stamped_on)

    def open(self, inputs: dict[str, InputOptions]) -> InputWatcher:
        self.watcher = InputWatcher(
            inputs=inputs,
            hardware=self.hardware,
            publish=lambda name, state: self.published.append(
                Published(name, state, threading.get_ident())
            ),
            report=self.events.append,
            loop=self.loop,
            clock=self.clock,
        )
        self.watcher.open()
        return self.watcher

    def on_gpio_thread(self, *actions: Callable[[], None]) -> int:
        """Run ``actions`` on a thread of their own, as gpiozero's edge thread; its id."""

        def run() -> None:
            for action in actions:
                action()

        thread = threading.Thread(target=run, name="gpio-edges")
        thread.start()
        thread.join()
        assert thread.ident is not None
        return thread.ident

    def run_for(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def run_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Run the loop until ``done()`` (a real timer thread may fire late on a busy
        machine); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "not in time"
            self.run_for(0.01)

    def states(self) -> list[tuple[str, bool]]:
        return [(p.name, p.state.on) for p in self.published]

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.hardware.close()
        self.loop.close()


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    yield b
    b.close()


def test_an_edge_is_published_once_on_the_loop(bench: Bench) -> None:
    bench.open({"door": gpio(27, bounce_time=0)})
    pin = bench.factory.pin(27)
    stamps_at_open = len(bench.stamped_on)
    gpio_thread = bench.on_gpio_thread(pin.drive_low)
    # Handed over, not acted on: nothing is published from gpiozero's thread.
    assert bench.published == []
    bench.run_for(0.01)
    assert bench.states() == [("door", True)]
    published = bench.published[0]
    assert published.thread == threading.get_ident() != gpio_thread
    # The time is taken on the edge's thread, when it happened, not when the loop got to it.
    assert bench.stamped_on[stamps_at_open:] == [gpio_thread]
    assert published.state.ts == 1_000_000.0 + len(bench.stamped_on)
    assert bench.watcher is not None and bench.watcher.states["door"] == published.state
    bench.run_for(0.01)
    assert len(bench.published) == 1


@pytest.mark.parametrize(("pull_up", "active"), [(True, "drive_low"), (False, "drive_high")])
def test_the_state_follows_the_pull(bench: Bench, pull_up: bool, active: str) -> None:
    inactive = "drive_high" if active == "drive_low" else "drive_low"
    watcher = bench.open({"door": gpio(27, pull_up=pull_up, bounce_time=0)})
    assert watcher.states["door"].on is False
    pin = bench.factory.pin(27)
    bench.on_gpio_thread(getattr(pin, active))
    bench.run_for(0.01)
    bench.on_gpio_thread(getattr(pin, inactive))
    bench.run_for(0.01)
    assert bench.states() == [("door", True), ("door", False)]
    assert bench.published[0].state.encode().startswith(b'{"state":"on","ts":"')


def test_the_watcher_neither_drops_nor_reorders_edges(bench: Bench) -> None:
    # A plain MockPin does not debounce: every edge reaches the watcher, which publishes
    # each, in order, even when several queue up before the loop runs.
    bench.open({"door": gpio(27, bounce_time=0.05), "float": gpio(22, bounce_time=0)})
    door, floater = bench.factory.pin(27), bench.factory.pin(22)
    bench.on_gpio_thread(
        door.drive_low, floater.drive_low, door.drive_high, door.drive_low, floater.drive_high
    )
    bench.run_for(0.01)
    assert bench.states() == [
        ("door", True),
        ("float", True),
        ("door", False),
        ("door", True),
        ("float", False),
    ]
    assert {p.thread for p in bench.published} == {threading.get_ident()}


def test_bounce_time_reaches_the_pin(bench: Bench) -> None:
    bench.open({"door": gpio(27, bounce_time=0.05), "button": gpio(22, bounce_time=0)})
    assert bench.factory.pin(27).bounce == pytest.approx(0.05)
    assert bench.factory.pin(22).bounce is None


def test_bounce_within_bounce_time_is_swallowed(bench: Bench) -> None:
    bench.factory.pin_class = GlitchFilterPin
    bench.open({"door": gpio(27, bounce_time=0.1)})
    pin = bench.factory.pin(27)
    assert isinstance(pin, GlitchFilterPin)
    # The contact closes, chattering three times within a millisecond or so.
    bench.on_gpio_thread(
        pin.drive_low, pin.drive_high, pin.drive_low, pin.drive_high, pin.drive_low
    )
    assert bench.published == []
    bench.run_until(lambda: bool(bench.published))
    assert bench.states() == [("door", True)]
    assert bench.published[0].thread == threading.get_ident()
    # A glitch that returns to the settled level within bounce_time is no edge at all.
    bench.on_gpio_thread(pin.drive_high, pin.drive_low)
    bench.run_for(0.3)
    assert bench.states() == [("door", True)]
    # A clean opening after that is.
    bench.on_gpio_thread(pin.drive_high)
    bench.run_until(lambda: len(bench.published) == 2)
    bench.run_for(0.2)  # and nothing after it
    assert bench.states() == [("door", True), ("door", False)]


def test_an_input_on_a_pin_in_use_is_reported_and_the_rest_work(bench: Bench) -> None:
    squatter = Relay(27, pin_factory=bench.factory)
    try:
        watcher = bench.open({"door": gpio(27), "window": gpio(22, bounce_time=0)})
        assert [(e.kind, e.fields, e.level) for e in bench.events] == [
            ("input_unavailable", {"input": "door"}, "error")
        ]
        assert list(watcher.drivers) == ["window"]
        bench.on_gpio_thread(bench.factory.pin(22).drive_low)
        bench.run_for(0.01)
        assert bench.states() == [("window", True)]
        watcher.publish_all()
        assert bench.states() == [("window", True), ("window", True)]
    finally:
        squatter.close()


def test_publish_all_sends_every_state(bench: Bench) -> None:
    watcher = bench.open({"door": gpio(27), "button": gpio(22, pull_up=False)})
    bench.factory.pin(22).drive_high()  # pressed before anyone connected
    bench.run_for(0.01)
    bench.published.clear()
    watcher.publish_all()
    assert sorted(bench.states()) == [("button", True), ("door", False)]


def test_no_edge_is_published_after_close(bench: Bench) -> None:
    watcher = bench.open({"door": gpio(27, bounce_time=0)})
    pin = bench.factory.pin(27)
    bench.on_gpio_thread(pin.drive_low)  # queued on the loop, not yet handled
    watcher.close()
    bench.run_for(0.01)
    pin.drive_high()
    bench.run_for(0.01)
    assert bench.published == []
