"""GPIO relays (outputs) and contacts (inputs) through gpiozero.

Every class takes gpiozero's ``pin_factory=``: the Pi's default factory in production,
``MockFactory`` under ``--simulate`` and in tests, so the same code runs without hardware.

A relay is driven to its safe level from the first instant: the initial level is handed to
gpiozero's constructor, which configures the pin as an output *with* that level in one
step. A common active-low relay board (``active_high: false``) that starts off therefore
sees its pin go straight to HIGH and never clicks on at boot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drivers.base import (
    DriverSpec,
    Input,
    InputOptions,
    Options,
    Output,
    OutputOptions,
    Seconds,
)
from drivers.errors import (
    DeviceNotFound,
    DriverError,
    HardwareConfigError,
    PermanentError,
    TransientError,
)
from drivers.hardware import Hardware, SimulatedHardware

SAMPLE_RELAY = """\
pump:
  driver: relay
  pin: 17                # BCM number, or any pin name gpiozero accepts ("GPIO17", "BOARD11")
  active_high: true      # false for the common active-low relay boards
  initial: off           # off | on | restore (the last state, kept in state_dir)
  max_on: 10m            # 0: no limit; switched off after this long on
  failsafe: off          # forced after failsafe_after without the broker; null: keep
  failsafe_after: 60s
  interlock: []          # outputs never on together with this one
  min_switch_interval: 0s
"""

SAMPLE_GPIO = """\
door:
  driver: gpio
  pin: 27                # BCM number, or any pin name gpiozero accepts
  pull_up: true          # on = pin pulled LOW (a contact to ground); false: on = HIGH
  bounce_time: 50ms      # edges closer than this are one edge
  simulation:            # used only when simulating
    toggle_every: 30s    # the contact opens and closes by itself
"""


class GPIOClosed(PermanentError, RuntimeError):
    """The GPIO device was used after :meth:`close`; open a new one."""


class GPIOAccessError(TransientError, OSError):
    """Setting or reading an open GPIO pin failed."""


class RelayOptions(OutputOptions, frozen=True, kw_only=True, tag="relay"):
    """Options of the ``relay`` driver (a gpiozero ``OutputDevice``)."""

    #: BCM number, or any pin name gpiozero accepts ("GPIO17", "BOARD11", "J8:11").
    pin: int | str
    #: False for relay boards that switch on when their input is pulled LOW.
    active_high: bool = True


class GPIOInputOptions(InputOptions, frozen=True, kw_only=True, tag="gpio"):
    """Options of the ``gpio`` input driver (a gpiozero ``DigitalInputDevice``)."""

    #: BCM number, or any pin name gpiozero accepts.
    pin: int | str
    #: True: internal pull-up, "on" when the pin reads LOW. False: pull-down, "on" when HIGH.
    pull_up: bool = True
    #: Edges within this many seconds of the last are ignored; 0 disables debouncing.
    bounce_time: Seconds = 0.05
    #: Used only when simulating: the contact opens and closes every this many seconds
    #: (0: it stays open).
    simulation: InputSimulation | None = None


class InputSimulation(Options, frozen=True):
    """How a simulated input behaves."""

    #: Seconds between two changes of the emulated contact; 0 or absent: never changes.
    toggle_every: Seconds = 0.0


def _open_error(pin: int | str, what: str, e: Exception) -> DriverError:
    """A gpiozero or OS error raised while reserving ``pin``, as a driver error."""
    from gpiozero.exc import BadPinFactory, GPIOPinInUse, PinUnknownPi

    if isinstance(e, BadPinFactory | PinUnknownPi):
        return DeviceNotFound(
            f"GPIO {pin}: no usable GPIO on this machine ({e}); off a Pi, use --simulate"
        )
    if isinstance(e, GPIOPinInUse):
        return HardwareConfigError(f"GPIO {pin} is already in use by another device")
    if isinstance(e, PermissionError):
        return HardwareConfigError(
            f"GPIO {pin}: permission denied; the agent's user needs group gpio ({e})"
        )
    return HardwareConfigError(f"GPIO {pin} cannot be used as {what}: {e}")


def _access_error(pin: int | str, e: Exception) -> DriverError:
    """A gpiozero or OS error raised while using an open pin, as a driver error."""
    from gpiozero.exc import GPIODeviceClosed

    if isinstance(e, GPIODeviceClosed):
        return GPIOClosed(f"GPIO {pin} was closed")
    return GPIOAccessError(f"GPIO {pin}: {e}")


class Relay(Output):
    """A relay (or any on/off load) on one GPIO pin.

    Args:
        pin: BCM number or a gpiozero pin name.
        active_high: True if the load is on when the pin is HIGH; False for active-low
            relay boards.
        initial: the level the pin is configured with, atomically: no glitch to the other
            level, however briefly, at construction.
        pin_factory: gpiozero pin factory; ``None`` for gpiozero's default.

    Raises:
        HardwareConfigError: the pin is invalid, already in use, or not accessible.
        DeviceNotFound: this machine has no GPIO gpiozero can drive.
    """

    def __init__(
        self,
        pin: int | str,
        *,
        active_high: bool = True,
        initial: bool = False,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import OutputDevice
        from gpiozero.exc import GPIOZeroError

        self.pin = pin
        self.active_high = active_high
        try:
            self._device: Any = OutputDevice(
                pin, active_high=active_high, initial_value=initial, pin_factory=pin_factory
            )
        except (GPIOZeroError, OSError) as e:
            raise _open_error(pin, "an output", e) from e

    def set(self, on: bool) -> None:
        """Drive the load on (the active level) or off.

        Raises:
            GPIOClosed: after :meth:`close`.
            GPIOAccessError: the pin could not be written.
        """
        from gpiozero.exc import GPIOZeroError

        try:
            if on:
                self._device.on()
            else:
                self._device.off()
        except (GPIOZeroError, OSError) as e:
            raise _access_error(self.pin, e) from e

    @property
    def is_on(self) -> bool:
        """Whether the load is on, read back from the pin's level (honouring
        ``active_high``), not from what was last asked for."""
        from gpiozero.exc import GPIOZeroError

        try:
            return bool(self._device.value)
        except (GPIOZeroError, OSError) as e:
            raise _access_error(self.pin, e) from e

    def close(self) -> None:
        """Release the pin (gpiozero returns it to an input). Calling it again does nothing.

        The level the load sees afterwards depends on the board's pull resistors: the agent
        drives every output to its safe state before closing it.
        """
        self._device.close()


class GPIOInput(Input):
    """A binary input (door contact, float switch, button) on one GPIO pin.

    "On" means *active*: with ``pull_up=True`` the pin idles HIGH through the internal
    pull-up and is on while something pulls it LOW (a contact to ground closed); with
    ``pull_up=False`` it idles LOW and is on while HIGH.

    Edges are reported by gpiozero's edge callbacks (no polling loop), debounced by its
    ``bounce_time``: after an edge, further edges within ``bounce_time`` are ignored.

    Args:
        pin: BCM number or a gpiozero pin name.
        pull_up: use the internal pull-up (True) or pull-down (False).
        bounce_time: debounce window in seconds; 0 disables it.
        pin_factory: gpiozero pin factory; ``None`` for gpiozero's default.

    Raises:
        HardwareConfigError: the pin is invalid, already in use, or not accessible.
        DeviceNotFound: this machine has no GPIO gpiozero can drive.
    """

    def __init__(
        self,
        pin: int | str,
        *,
        pull_up: bool = True,
        bounce_time: float = 0.05,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import DigitalInputDevice
        from gpiozero.exc import GPIOZeroError

        self.pin = pin
        self.pull_up = pull_up
        self._callbacks: list[Callable[[bool], None]] = []
        try:
            self._device: Any = DigitalInputDevice(
                pin,
                pull_up=pull_up,
                bounce_time=bounce_time or None,
                pin_factory=pin_factory,
            )
        except (GPIOZeroError, OSError) as e:
            raise _open_error(pin, "an input", e) from e
        self._device.when_activated = self._activated
        self._device.when_deactivated = self._deactivated

    @property
    def is_on(self) -> bool:
        """Whether the input is active now (see the class docstring for what "on" means)."""
        from gpiozero.exc import GPIOZeroError

        try:
            return bool(self._device.is_active)
        except (GPIOZeroError, OSError) as e:
            raise _access_error(self.pin, e) from e

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(is_on)`` on every debounced edge.

        Callbacks run on gpiozero's event thread (synchronously inside
        ``MockPin.drive_low()`` under a mock factory): they should hand the event over and
        return. Several callbacks may be registered; they run in registration order.
        """
        self._callbacks.append(callback)

    def _activated(self) -> None:
        for callback in list(self._callbacks):
            callback(True)

    def _deactivated(self) -> None:
        for callback in list(self._callbacks):
            callback(False)

    def close(self) -> None:
        """Release the pin and drop the callbacks. Calling it again does nothing."""
        self._callbacks.clear()
        self._device.close()


def open_relay(options: RelayOptions, hardware: Hardware, initial_on: bool | None = None) -> Relay:
    """Open the relay that ``options`` describes, at its initial level.

    Args:
        options: the output's config.
        hardware: gives the pin factory.
        initial_on: the level to start at. ``None`` derives it from ``options.initial``:
            ``on`` → on, ``off`` → off, ``restore`` → off. For ``restore`` the agent passes
            the saved state here, so the pin is configured at that level from the start
            rather than switched to it after opening.
    """
    if initial_on is None:
        initial_on = options.initial == "on"
    return Relay(
        options.pin,
        active_high=options.active_high,
        initial=initial_on,
        pin_factory=hardware.pin_factory(),
    )


def open_gpio_input(options: GPIOInputOptions, hardware: Hardware) -> GPIOInput:
    """Open the input that ``options`` describes."""
    return GPIOInput(
        options.pin,
        pull_up=options.pull_up,
        bounce_time=options.bounce_time,
        pin_factory=hardware.pin_factory(),
    )


def emulate_nothing(options: Any, hardware: SimulatedHardware) -> None:
    """Relays need no emulator: ``SimulatedHardware.pin_factory()`` is a ``MockFactory``."""


def emulate_input(options: GPIOInputOptions, hardware: SimulatedHardware) -> None:
    """A ``MockFactory`` pin, and with ``simulation.toggle_every`` a contact that opens
    and closes by itself, so a simulated agent has input edges to report."""
    period = options.simulation.toggle_every if options.simulation else 0.0
    if period <= 0:
        return

    def toggle() -> None:
        pin = hardware.pin_factory().pin(options.pin)
        if pin.state:
            pin.drive_low()
        else:
            pin.drive_high()

    hardware.every(period, toggle, name=f"gpio{options.pin}")


RELAY_SPEC = DriverSpec(
    name="relay",
    kind="output",
    summary="a relay or other on/off load on a GPIO pin (gpiozero OutputDevice)",
    options=RelayOptions,
    open=open_relay,
    emulate=emulate_nothing,
    sample=SAMPLE_RELAY,
)

GPIO_SPEC = DriverSpec(
    name="gpio",
    kind="input",
    summary="a contact or switch on a GPIO pin (gpiozero DigitalInputDevice)",
    options=GPIOInputOptions,
    open=open_gpio_input,
    emulate=emulate_input,
    sample=SAMPLE_GPIO,
)

#: Both specs, for the registry.
SPECS = (RELAY_SPEC, GPIO_SPEC)
