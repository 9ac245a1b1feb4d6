"""Events: what the agent reports on ``<base>/event`` and in its log (CONTRACT section 4)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class Event:
    """Something a person or a controller should hear about."""

    kind: str
    message: str
    level: Level = "info"
    fields: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


EventSink = Callable[[Event], None]


class RateLimiter:
    """Lets one event per key through every ``period_s``; counts what it held back."""

    def __init__(self, period_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        return True

    def take_suppressed(self, key: str) -> int:
        return self.suppressed.pop(key, 0)
