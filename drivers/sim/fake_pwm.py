"""A fake Linux PWM chip (``/sys/class/pwm/pwmchipN``) on
:class:`~drivers.hardware.SimulatedHardware`, with the kernel's rules (Documentation/
driver-api/pwm.rst, "Using PWMs with the sysfs interface"):

- ``export`` takes a channel number below ``npwm`` and creates ``pwmX/`` (EBUSY if it
  already exists, EINVAL past ``npwm``); ``unexport`` removes it (and disables it);
- ``period`` and ``duty_cycle`` are nanoseconds; a duty cycle longer than the period is
  EINVAL, whichever is written, so a driver changing the frequency must order its writes;
- ``enable`` is 0 or 1; enabling with no period is EINVAL;
- a disabled channel drives its inactive level: low.

It records the output's every change as the fraction of time the pin is high, so a test
can see that a driver never showed another level than the one it was configured with.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.hardware import SimulatedHardware

PWM_CLASS = "/sys/class/pwm"


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass
class FakePWMChannel:
    period_ns: int = 0
    duty_ns: int = 0
    enabled: bool = False

    @property
    def high_fraction(self) -> float:
        """What the pin shows: the share of each period it is high (0 when disabled)."""
        if not self.enabled or self.period_ns == 0:
            return 0.0
        return self.duty_ns / self.period_ns


@dataclass
class FakePWMChip:
    hardware: SimulatedHardware
    chip: int = 0
    npwm: int = 2
    channels: dict[int, FakePWMChannel] = field(default_factory=dict)
    #: (channel, high fraction) at every change of an output, oldest first.
    history: list[tuple[int, float]] = field(default_factory=list)
    #: Writes to ``export`` raise this (EACCES: the agent lacks the udev rule's group).
    export_error: int | None = None

    def __post_init__(self) -> None:
        base = self.hardware.path(f"{PWM_CLASS}/pwmchip{self.chip}")
        self.base = base
        self.hardware.serve_attr(base / "npwm", lambda: f"{self.npwm}\n")
        self.hardware.serve_attr(base / "export", self._refuse_read, self._export)
        self.hardware.serve_attr(base / "unexport", self._refuse_read, self._unexport)

    @staticmethod
    def _refuse_read() -> str:
        raise _error(errno.EACCES)  # write-only attributes

    def _number(self, text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise _error(errno.EINVAL) from None
        if not 0 <= number < self.npwm:
            raise _error(errno.EINVAL)
        return number

    def _export(self, text: str) -> None:
        if self.export_error is not None:
            raise _error(self.export_error)
        number = self._number(text)
        if number in self.channels:
            raise _error(errno.EBUSY)
        channel = self.channels[number] = FakePWMChannel()
        where = self.base / f"pwm{number}"
        h = self.hardware
        h.serve_attr(where / "period", lambda: f"{channel.period_ns}\n", self._setter(number, "p"))
        h.serve_attr(
            where / "duty_cycle", lambda: f"{channel.duty_ns}\n", self._setter(number, "d")
        )
        h.serve_attr(
            where / "enable", lambda: f"{int(channel.enabled)}\n", self._setter(number, "e")
        )
        h.serve_attr(where / "polarity", lambda: "normal\n")

    def _unexport(self, text: str) -> None:
        number = self._number(text)
        channel = self.channels.pop(number, None)
        if channel is None:
            raise _error(errno.EINVAL)
        channel.enabled = False
        self._record(number, channel)
        for name in ("period", "duty_cycle", "enable", "polarity"):
            self.hardware.remove_attr(self.base / f"pwm{number}" / name)

    def _setter(self, number: int, what: str) -> Callable[[str], None]:
        def write(text: str) -> None:
            channel = self.channels[number]
            try:
                value = int(text.strip())
            except ValueError:
                raise _error(errno.EINVAL) from None
            if what == "p":
                if value < channel.duty_ns or value < 0:
                    raise _error(errno.EINVAL)
                channel.period_ns = value
            elif what == "d":
                if not 0 <= value <= channel.period_ns:
                    raise _error(errno.EINVAL)
                channel.duty_ns = value
            else:
                if value not in (0, 1) or (value == 1 and channel.period_ns == 0):
                    raise _error(errno.EINVAL)
                channel.enabled = bool(value)
            self._record(number, channel)

        return write

    def _record(self, number: int, channel: FakePWMChannel) -> None:
        level = channel.high_fraction
        last = next((f for n, f in reversed(self.history) if n == number), None)
        if last != level:
            self.history.append((number, level))

    def levels(self, number: int) -> list[float]:
        """Every level channel ``number`` showed, oldest first (disabled: 0)."""
        return [f for n, f in self.history if n == number]
