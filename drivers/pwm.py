"""PWM outputs (dimmable LEDs, fans, pumps with a speed input) through gpiozero's
``PWMOutputDevice``.

The duty cycle is a *level* from 0 to 100 %. As for relays, the pin is configured with its
initial level in gpiozero's constructor, so it never shows another level at start: an LED
strip that starts at 0 % does not flash, an active-low driver board (``active_high:
false``) sees its inverted duty from the first instant.

On a Pi with Bookworm gpiozero's default pin factory is lgpio, which times the PWM itself
(on any GPIO, up to a few kHz, with some jitter at high frequencies); under ``--simulate``
and in tests it is ``MockFactory(pin_class=MockPWMPin)``.

``min_level``/``max_level`` bound what "on" can mean: a fan that stalls below 30 % gets
``min_level: 30``, an LED that runs hot above 80 % ``max_level: 80``; any level asked for
above 0 is clamped into that band, 0 is always off.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Annotated, Any, Literal

import msgspec

from drivers.base import DriverSpec, OptionError, Output, OutputOptions
from drivers.errors import HardwareConfigError
from drivers.gpio import GPIOAccessError, GPIOClosed, _access_error, _open_error
from drivers.hardware import Hardware, SimulatedHardware
from drivers.sim.fake_pwm import FakePWMChip

Percent = Annotated[float, msgspec.Meta(ge=0, le=100, description="duty cycle, %")]

SAMPLE = """\
fan:
  driver: pwm
  pin: 18                # BCM number, or any pin name gpiozero accepts
  frequency: 25000       # Hz: 25 kHz for 4-wire PC fans; 100..1000 for LEDs
  active_high: true      # false when the driver board inverts
  initial: off           # off | on | restore
  initial_level: 60      # %: the level of `initial: on` (default: max_level)
  min_level: 30          # %: any level above 0 is at least this (a fan that stalls below)
  max_level: 100         # %: and at most this
  failsafe: off          # without the broker for failsafe_after: off, or on at failsafe_level
  failsafe_level: null   # %: default max_level
  max_on: 0s             # 0: no limit
  ha_component: fan      # light (brightness) or fan (percentage) in Home Assistant
  hardware_pwm: null     # or {chip: 0, channel: 0}: the kernel's PWM (dtoverlay=pwm-2chan:
                         # GPIO 18 = channel 0, 19 = 1), no jitter, no CPU
"""


class LevelOutput(Output):
    """An output with a level between off and full on.

    Subclasses *must* implement :meth:`set_level` and :attr:`level`; :meth:`set` and
    :attr:`is_on` follow from them.
    """

    def set(self, on: bool) -> None:
        self.set_level(1.0 if on else 0.0)

    @property
    def is_on(self) -> bool:
        return self.level > 0

    def set_level(self, level: float) -> None:
        """Drive the output at ``level`` (0..1 of full on)."""
        raise NotImplementedError

    @property
    def level(self) -> float:
        """The level read back from the pin, 0..1."""
        raise NotImplementedError


class PWMOutput(LevelOutput):
    """A PWM output on one GPIO pin.

    Args:
        pin: BCM number or a gpiozero pin name.
        frequency: PWM frequency, Hz.
        active_high: True if full on is a HIGH pin; False for inverting boards.
        initial_level: 0..1, configured with the pin: it shows no other level at start.
        pin_factory: gpiozero pin factory; ``None`` for gpiozero's default.

    Raises:
        HardwareConfigError: the pin is invalid, in use, not accessible, or has no PWM.
        DeviceNotFound: this machine has no GPIO gpiozero can drive.
    """

    def __init__(
        self,
        pin: int | str,
        *,
        frequency: float = 100.0,
        active_high: bool = True,
        initial_level: float = 0.0,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import PWMOutputDevice
        from gpiozero.exc import GPIOZeroError

        if not 0.0 <= initial_level <= 1.0:
            raise HardwareConfigError(f"initial level must be 0..1, not {initial_level}")
        self.pin = pin
        self.active_high = active_high
        try:
            self._device: Any = PWMOutputDevice(
                pin,
                active_high=active_high,
                initial_value=initial_level,
                frequency=frequency,
                pin_factory=pin_factory,
            )
        except (GPIOZeroError, OSError) as e:
            raise _open_error(pin, "a PWM output", e) from e

    def set_level(self, level: float) -> None:
        """Drive the duty cycle to ``level`` (0..1).

        Raises:
            GPIOClosed: after :meth:`close`.
            GPIOAccessError: the pin could not be written.
        """
        from gpiozero.exc import GPIOZeroError

        if not 0.0 <= level <= 1.0:
            raise HardwareConfigError(f"level must be 0..1, not {level}")
        try:
            self._device.value = level
        except (GPIOZeroError, OSError) as e:
            raise _access_error(self.pin, e) from e

    @property
    def level(self) -> float:
        """The duty cycle read back from the pin (honouring ``active_high``), 0..1."""
        from gpiozero.exc import GPIOZeroError

        try:
            return round(float(self._device.value), 6)
        except (GPIOZeroError, OSError) as e:
            raise _access_error(self.pin, e) from e

    def close(self) -> None:
        """Release the pin. Calling it again does nothing."""
        self._device.close()


def channel_problem(hardware: Hardware, chip: int, channel: int) -> str | None:
    """Why channel ``channel`` of ``/sys/class/pwm/pwmchip<chip>`` cannot be used, found
    without exporting it (``check --hardware`` must not touch an output); None if it exists."""
    chip_dir = hardware.path(f"/sys/class/pwm/pwmchip{chip}")
    try:
        channels = int(hardware.read_attr(chip_dir / "npwm").strip())
    except (OSError, ValueError):
        return (
            f"no {chip_dir}; enable hardware PWM with dtoverlay=pwm-2chan in "
            "/boot/firmware/config.txt (GPIO 18 and 19), or drop hardware_pwm to time the "
            "PWM in software on any pin"
        )
    if channel >= channels:
        return f"pwmchip{chip} has {channels} channels (0..{channels - 1})"
    return None


class SysfsPWMOutput(LevelOutput):
    """A hardware PWM channel through the kernel's sysfs interface
    (``/sys/class/pwm/pwmchip<chip>/pwm<channel>``): the PWM block times the signal, so
    it has no jitter at any frequency and costs no CPU. On a Pi it needs
    ``dtoverlay=pwm-2chan`` (GPIO 18 → channel 0, GPIO 19 → channel 1) or ``pwm`` in
    ``config.txt``.

    The channel is configured (period, then the initial duty cycle) before it is enabled,
    so its first level is the initial one. A disabled channel drives its pin low, from
    boot until here: only a non-inverting driver stage is safe on it.

    Args:
        hardware: where ``/sys`` is.
        chip, channel: the PWM chip and its channel.
        frequency: Hz.
        initial_level: 0..1.

    Raises:
        HardwareConfigError: no such PWM chip or channel, or no permission to use it.
    """

    def __init__(
        self,
        hardware: Hardware,
        *,
        chip: int,
        channel: int,
        frequency: float = 100.0,
        initial_level: float = 0.0,
    ) -> None:
        if not 0.0 <= initial_level <= 1.0:
            raise HardwareConfigError(f"initial level must be 0..1, not {initial_level}")
        self._hardware = hardware
        self._chip_dir = hardware.path(f"/sys/class/pwm/pwmchip{chip}")
        self._dir = self._chip_dir / f"pwm{channel}"
        self._name = f"PWM chip {chip} channel {channel}"
        self._channel = channel
        self._closed = False
        self.period_ns = max(1, round(1e9 / frequency))
        problem = channel_problem(hardware, chip, channel)
        if problem is not None:
            raise HardwareConfigError(f"{self._name}: {problem}")
        try:
            self._export()
            # A duty cycle longer than the period is refused, whichever is written: a
            # channel left running by a previous run at a lower frequency must get its
            # new (shorter) duty cycle before its new period.
            duty = self._duty_ns(initial_level)
            if self._read_int("duty_cycle") > self.period_ns:
                self._write("duty_cycle", duty)
                self._write("period", self.period_ns)
            else:
                self._write("period", self.period_ns)
                self._write("duty_cycle", duty)
            self._write("enable", 1)
        except PermissionError as e:
            raise HardwareConfigError(
                f"{self._name}: permission denied ({e}); the agent's user needs write access "
                "to /sys/class/pwm (a udev rule giving group gpio the pwmchip)"
            ) from e
        except OSError as e:
            raise HardwareConfigError(f"{self._name} cannot be used: {e}") from e

    def _export(self) -> None:
        if (self._dir / "period").exists():
            return  # exported already (a previous run, or by hand)
        try:
            self._hardware.write_attr(self._chip_dir / "export", str(self._channel))
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
        # udev sets the new attributes' owner a moment after the export.
        deadline = self._hardware.monotonic() + 1.0
        while not (self._dir / "period").exists() and self._hardware.monotonic() < deadline:
            self._hardware.sleep(0.01)

    def _duty_ns(self, level: float) -> int:
        return round(self.period_ns * level)

    def _read_int(self, name: str) -> int:
        return int(self._hardware.read_attr(self._dir / name).strip())

    def _write(self, name: str, value: int) -> None:
        self._hardware.write_attr(self._dir / name, str(value))

    def set_level(self, level: float) -> None:
        """Drive the duty cycle to ``level`` (0..1).

        Raises:
            GPIOClosed: after :meth:`close`.
            GPIOAccessError: the attribute could not be written.
        """
        if not 0.0 <= level <= 1.0:
            raise HardwareConfigError(f"level must be 0..1, not {level}")
        if self._closed:
            raise GPIOClosed(f"{self._name} was closed")
        try:
            self._write("duty_cycle", self._duty_ns(level))
        except OSError as e:
            raise GPIOAccessError(f"{self._name}: {e}") from e

    @property
    def level(self) -> float:
        """The duty cycle the channel runs, read back from the kernel (0 when disabled)."""
        if self._closed:
            raise GPIOClosed(f"{self._name} was closed")
        try:
            if self._read_int("enable") != 1:
                return 0.0
            period = self._read_int("period")
            return round(self._read_int("duty_cycle") / period, 6) if period else 0.0
        except (OSError, ValueError) as e:
            raise GPIOAccessError(f"{self._name}: {e}") from e

    def close(self) -> None:
        """Switch it off (duty 0, disabled: the pin low) and unexport it. Calling it again
        does nothing."""
        if self._closed:
            return
        self._closed = True
        for name, value in (("duty_cycle", 0), ("enable", 0)):
            with contextlib.suppress(OSError):
                self._write(name, value)
        with contextlib.suppress(OSError):
            self._hardware.write_attr(self._chip_dir / "unexport", str(self._channel))


class HardwarePWM(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which kernel PWM channel drives the pin."""

    chip: Annotated[int, msgspec.Meta(ge=0, description="/sys/class/pwm/pwmchip<chip>")] = 0
    channel: Annotated[int, msgspec.Meta(ge=0, description="its pwm<channel>")] = 0


class PWMOptions(OutputOptions, frozen=True, kw_only=True, tag="pwm"):
    """Options of the ``pwm`` output driver."""

    pin: int | str
    frequency: Annotated[float, msgspec.Meta(gt=0, le=100_000, description="Hz")] = 100.0
    active_high: bool = True
    #: The level ``initial: on`` (and a restored "on") starts at; default ``max_level``.
    initial_level: Percent | None = None
    min_level: Percent = 0.0
    max_level: Percent = 100.0
    #: The level ``failsafe: on`` goes to; default ``max_level``.
    failsafe_level: Percent | None = None
    #: How Home Assistant shows it: a dimmable light, or a fan with a speed.
    ha_component: Literal["light", "fan"] = "light"
    #: The kernel's hardware PWM instead of gpiozero's software-timed PWM.
    hardware_pwm: HardwarePWM | None = None

    def __post_init__(self) -> None:
        if self.hardware_pwm is not None and not self.active_high:
            raise OptionError(
                "active_high",
                "hardware_pwm needs active_high: true — a hardware PWM pin is low from boot "
                "until the agent starts, which an inverting board takes as full on; wire it "
                "non-inverting, or drop hardware_pwm",
            )
        if self.min_level > self.max_level:
            raise OptionError("min_level", "min_level is above max_level")
        for name in ("initial_level", "failsafe_level"):
            value = getattr(self, name)
            if value is not None and value > 0 and not self.min_level <= value <= self.max_level:
                raise OptionError(name, f"{name} {value:g} is outside min_level..max_level")

    def clamp(self, percent: float) -> float:
        """A requested level as this output will run it: 0 stays off, anything else is
        kept within ``min_level``..``max_level``."""
        if percent <= 0:
            return 0.0
        return float(min(self.max_level, max(self.min_level, percent)))

    @property
    def on_level(self) -> float:
        """The level of ``initial: on``."""
        return self.clamp(self.initial_level if self.initial_level is not None else self.max_level)

    @property
    def failsafe_on_level(self) -> float:
        """The level of ``failsafe: on``."""
        level = self.failsafe_level if self.failsafe_level is not None else self.max_level
        return self.clamp(level)


def open_pwm(
    options: PWMOptions, hardware: Hardware, initial_on: bool | None = None
) -> LevelOutput:
    """Open the PWM output at its initial level (``initial: on`` → ``initial_level``)."""
    if initial_on is None:
        initial_on = options.initial == "on"
    if options.hardware_pwm is not None:
        return SysfsPWMOutput(
            hardware,
            chip=options.hardware_pwm.chip,
            channel=options.hardware_pwm.channel,
            frequency=options.frequency,
            initial_level=options.on_level / 100 if initial_on else 0.0,
        )
    return PWMOutput(
        options.pin,
        frequency=options.frequency,
        active_high=options.active_high,
        initial_level=options.on_level / 100 if initial_on else 0.0,
        pin_factory=hardware.pin_factory(),
    )


def emulate_pwm(options: PWMOptions, hardware: SimulatedHardware) -> None:
    """Make the simulated pin factory's pins PWM-capable (gpiozero's plain ``MockPin``
    refuses PWM); they serve relays and inputs as well, as a Pi's pins do."""
    from gpiozero.pins.mock import MockPWMPin

    hardware.pin_factory().pin_class = MockPWMPin
    if options.hardware_pwm is not None:
        chip = options.hardware_pwm.chip
        if not hardware.path(f"/sys/class/pwm/pwmchip{chip}/export").exists():
            FakePWMChip(hardware, chip=chip, npwm=max(2, options.hardware_pwm.channel + 1))


SPEC = DriverSpec(
    name="pwm",
    kind="output",
    summary="a PWM output (dimmable LED, fan speed) on a GPIO pin (gpiozero PWMOutputDevice)",
    options=PWMOptions,
    open=open_pwm,
    emulate=emulate_pwm,
    sample=SAMPLE,
)
