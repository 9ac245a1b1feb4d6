"""Telling a session takeover from a flaky link (issue 20, row 6: cloned SD cards).

Two agents with one client id (every Pi cloned from one image has the same hostname, so
the same default ``device_id``) throw each other off the broker: each connect of one ends
the other's session. Reconnecting at once makes both flap ``online`` for ever and puts
commands wherever the last connect landed. The transport asks a :class:`TakeoverDetector`
after every disconnect whether this was a takeover, and if so backs off for minutes
(with jitter, so two clones drift apart) instead of fighting.

- MQTT 5 says so: the broker's DISCONNECT carries reason code 0x8E, *Session taken over*.
- MQTT 3.1.1 cannot say why, and mosquitto 2.0 just closes an MQTT 5 client's socket
  too: a clean close (EOF, not a reset) soon (:data:`SHORT_SESSION_S`) after every
  successful connect, :data:`SUSPECT_AFTER` times in a row, with every reconnect
  succeeding at once, is taken as one. A link that is reset (a cut) or a broker that is
  down for a moment (a reconnect fails: a restart) starts the count again.

Pure: a function of the events and the clock it is given.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SESSION_TAKEN_OVER",
    "SHORT_SESSION_S",
    "SUSPECT_AFTER",
    "Takeover",
    "TakeoverDetector",
    "takeover_message",
]

#: MQTT 5 DISCONNECT reason code "Session taken over".
SESSION_TAKEN_OVER: Final = 0x8E
#: Under 3.1.1, a session shorter than this counts towards a suspected takeover.
SHORT_SESSION_S: Final = 5.0
#: Short sessions in a row that make a suspected takeover (3.1.1).
SUSPECT_AFTER: Final = 3
#: A session that lasted this long ends the episode: the other agent is gone.
STABLE_SESSION_S: Final = 60.0
#: The first back-off, doubled per takeover in an episode, at most MAX_BACKOFF_S.
FIRST_BACKOFF_S: Final = 120.0
MAX_BACKOFF_S: Final = 900.0


@dataclass(frozen=True)
class Takeover:
    """A takeover was detected: wait ``backoff_s`` before connecting again."""

    backoff_s: float
    #: True when the broker said so (MQTT 5); False when inferred (3.1.1).
    certain: bool
    #: Takeovers in this episode, this one included.
    count: int
    #: True for the first one of an episode: the one to log and publish.
    first: bool


def takeover_message(client_id: str, takeover: Takeover) -> str:
    """The sentence a person reads in the log and the event."""
    how = "the broker says" if takeover.certain else "every connection ends within seconds:"
    return (
        f"another client connected as {client_id} ({how} the session was taken over): two"
        " agents share a device_id or client_id - a cloned SD card? Give each Pi its own"
        " device_id (or hostname). Waiting"
        f" {takeover.backoff_s:.0f} s before connecting again instead of fighting"
    )


class TakeoverDetector:
    """Watches connects and disconnects; see the module docstring.

    Args:
        clock: Monotonic seconds.
        rng: Random numbers in [0, 1) for the jitter.
        infer: Infer takeovers from short sessions (MQTT 3.1.1, which has no reason code).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
        infer: bool = True,
    ) -> None:
        self._clock = clock
        self._infer = infer
        self._rng = rng
        self._connected_at: float | None = None
        self._short = 0
        self.count = 0
        #: Monotonic time of the episode's first takeover, while one lasts.
        self.since: float | None = None

    @property
    def active(self) -> bool:
        """True while an episode lasts (until a session stays up STABLE_SESSION_S)."""
        return self.since is not None

    def connected(self) -> None:
        """A CONNACK with success."""
        self._connected_at = self._clock()

    def attempt_failed(self) -> None:
        """A connect attempt failed (refused, no CONNACK): the broker was down, so the
        short sessions before were not another agent's doing."""
        self._short = 0

    def disconnected(
        self, reason_code: int | None, *, by_us: bool = False, clean: bool = True
    ) -> Takeover | None:
        """A connection ended; a :class:`Takeover` when it was one.

        Args:
            reason_code: The MQTT 5 DISCONNECT reason code from the broker, if any.
            by_us: The agent closed it (stop, reload): never a takeover.
            clean: The broker closed the socket (EOF) rather than it being reset.
        """
        now = self._clock()
        lasted = None if self._connected_at is None else now - self._connected_at
        self._connected_at = None
        if by_us:
            return None
        if lasted is not None and lasted >= STABLE_SESSION_S:
            self._short, self.count, self.since = 0, 0, None
        if reason_code == SESSION_TAKEN_OVER:
            return self._takeover(now, certain=True)
        if not self._infer or not clean:
            self._short = 0
            return None
        if lasted is not None and lasted < SHORT_SESSION_S:
            self._short += 1
            if self._short >= SUSPECT_AFTER:
                return self._takeover(now, certain=False)
        elif lasted is not None:
            self._short = 0
        return None

    def _takeover(self, now: float, *, certain: bool) -> Takeover:
        first = self.since is None
        if first:
            self.since = now
        self.count += 1
        base = min(FIRST_BACKOFF_S * 2 ** (self.count - 1), MAX_BACKOFF_S)
        backoff = base * (0.75 + 0.5 * self._rng())  # +-25 %: two clones drift apart
        return Takeover(backoff_s=backoff, certain=certain, count=self.count, first=first)
