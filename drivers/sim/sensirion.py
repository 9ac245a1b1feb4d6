"""What Sensirion's I2C chips (SHT3x, SHT4x, SCD4x) share, for their emulators.

Every write is a command; its result waits in a one-shot output buffer of CRC'd words
that the next read takes (and clears: a second read is NACKed, never stale data). While a
command executes the chip NACKs. A test (or ``simulation.fail_rate``) can make
measurement reads fail the two ways a flaky wire does: a NACK, or a flipped CRC bit.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from drivers.protocols.crc import sensirion_encode
from drivers.sim.fake_smbus import CommandChip, nack


class SensirionChip(CommandChip):
    """Base of an emulated Sensirion chip: subclasses implement :meth:`command` (under
    :attr:`lock`) with :meth:`busy`, :meth:`busy_for`, :meth:`send` and :meth:`clear`.

    Args:
        clock: monotonic seconds, injectable so tests can step time.
        fail_rate: share of measurement reads that fail (half NACK, half CRC error).
        rng: where failures come from.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        fail_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.fail_rate = fail_rate
        #: Answers whose first CRC is corrupted from now on.
        self.corrupt_next = 0
        self.lock = threading.Lock()
        self._clock = clock
        self._rng = rng or random.Random()
        self._busy_until = 0.0
        self._output = b""
        self._is_measurement = False

    def busy(self) -> bool:
        """A command is still executing (the chip NACKs)."""
        return self._clock() < self._busy_until

    def busy_for(self, seconds: float) -> None:
        """Start executing something that takes ``seconds``."""
        self._busy_until = self._clock() + seconds

    def send(self, *words: int, measurement: bool = False) -> None:
        """Put ``words`` (each with its CRC) in the output buffer."""
        self.send_encoded(sensirion_encode(*words), measurement=measurement)

    def send_encoded(self, data: bytes, *, measurement: bool = False) -> None:
        """Put already encoded words in the output buffer."""
        self._output, self._is_measurement = data, measurement

    def clear(self) -> None:
        """Nothing to send (what a new command does to the previous one's result)."""
        self._output, self._is_measurement = b"", False

    def answer(self, length: int) -> bytes:
        with self.lock:
            if self.busy() or not self._output:
                raise nack()
            out = bytearray(self._output[:length])
            measurement = self._is_measurement
            self.clear()
            if measurement and self.fail_rate and self._rng.random() < self.fail_rate:
                if self._rng.random() < 0.5:
                    raise nack()
                self.corrupt_next += 1
            if self.corrupt_next and len(out) >= 3:
                self.corrupt_next -= 1
                out[2] ^= 0x01
            return bytes(out)
