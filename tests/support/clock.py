"""Clocks the tests step: an in-process fake, and the control file of the real process."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.clock import CLOCK_FILE_ENV

#: 2022-06-01T00:00:00Z: where a Pi without a real-time clock may boot.
IN_2022 = 1654041600.0


class SteppableClock:
    """A :class:`agent.clock.ClockSource` whose every part the test sets.

    :meth:`advance` lets time pass (both clocks); :meth:`step` moves the wall clock
    alone, as NTP or a person with ``date -s`` does.
    """

    def __init__(
        self,
        *,
        wall: float = IN_2022,
        mono: float = 100.0,
        synced: bool = False,
        boot_id: str = "boot-a",
    ) -> None:
        self.now = wall
        self.mono = mono
        self.is_synced = synced
        self.boot = boot_id

    @property
    def boot_id(self) -> str:
        return self.boot

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def synced(self) -> bool:
        return self.is_synced

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.now += seconds

    def sync(self, wall: float) -> None:
        """The clock steps to ``wall`` and is synchronised from now on."""
        self.now = wall
        self.is_synced = True

    def reboot(self, boot_id: str, *, wall: float, mono: float = 5.0) -> None:
        self.boot, self.now, self.mono, self.is_synced = boot_id, wall, mono, False


class ClockControl:
    """Steers a real agent's clock through its control file (``EDGE_AGENT_CLOCK_FILE``)."""

    def __init__(self, path: Path, *, offset_s: float = 0.0, synced: bool = False) -> None:
        self.path = path
        self.offset_s = offset_s
        self.is_synced = synced
        self._write()

    @property
    def env(self) -> dict[str, str]:
        """The environment that points an agent at this file."""
        return {CLOCK_FILE_ENV: str(self.path)}

    def step(self, seconds: float) -> None:
        self.offset_s += seconds
        self._write()

    def sync(self) -> None:
        """The clock is right from now on: no offset, synchronised."""
        self.offset_s = 0.0
        self.is_synced = True
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"offset_s": self.offset_s, "synced": self.is_synced}))
        os.replace(tmp, self.path)
