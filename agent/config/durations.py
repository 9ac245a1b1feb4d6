"""Durations as users write them: seconds as a number, or "500ms", "10s", "5m", "1h", "7d"."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string.

    Raises:
        ValueError: with a message fit to show the user.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10s, 5m or a number of seconds, got {value}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(
        f"expected a duration such as 500ms, 10s, 5m, 1h, 7d or a number of seconds, got {value!r}"
    )


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` ("90s", "5m", "7d")."""
    if seconds and seconds < 1:
        return f"{_number(seconds * 1000)}ms"
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{_number(seconds / _UNITS[unit])}{unit}"
    return f"{_number(seconds)}s"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
