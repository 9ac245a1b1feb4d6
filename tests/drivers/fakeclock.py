"""A clock that moves only when the code under test sleeps, shared by driver and emulator."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds; :meth:`sleep` advances them and records each wait."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds
