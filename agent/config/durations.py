"""Durations as users write them: seconds as a number, or "500ms", "10s", "5m", "1h", "7d"."""

from __future__ import annotations

from drivers.base import DURATION_UNITS, parse_duration

__all__ = ["format_duration", "parse_duration"]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` ("90s", "5m", "7d")."""
    if seconds and seconds < 1:
        return f"{_number(seconds * 1000)}ms"
    for unit in ("d", "h", "m"):
        if seconds >= DURATION_UNITS[unit] and seconds % DURATION_UNITS[unit] == 0:
            return f"{_number(seconds / DURATION_UNITS[unit])}{unit}"
    return f"{_number(seconds)}s"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
