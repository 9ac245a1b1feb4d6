"""Payload codecs (CONTRACT sections 4 and 5): pure functions of their inputs."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from drivers.base import Quantity

_encoder = msgspec.json.Encoder()


#: The last whole second :func:`iso_ts` formatted, and its text up to the milliseconds:
#: one tuple, replaced in one assignment, so threads sharing it never see a torn pair.
_last_second: list[tuple[int, str]] = [(-1, "")]


def iso_ts(unix_s: float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``: ``2026-11-23T04:11:27.123Z``.

    The text of ``datetime.fromtimestamp(unix_s, UTC)`` cut to milliseconds (the fraction
    rounded half-even to microseconds first, as ``datetime`` does), at a fifth of its cost:
    every reading, state and event carries one, and consecutive ones mostly share their
    second, whose text is kept.
    """
    whole = math.floor(unix_s)
    micros = round((unix_s - whole) * 1e6)
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    cached = _last_second[0]
    if cached[0] != whole:
        cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
        _last_second[0] = cached
    return f"{cached[1]}{micros // 1000:03d}Z"


def parse_iso_ts(text: str) -> float:
    """Unix seconds from an ISO 8601 time; a time without offset is taken as UTC.

    Raises:
        ValueError: not an ISO 8601 time.
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def round_to_resolution(value: float, resolution: float) -> float:
    """``value`` rounded to the decimals that ``resolution`` implies (0.01 -> 2 decimals).

    Rounding to decimals rather than to multiples keeps e.g. 21.53 from printing as
    21.530000000000001; a resolution of 1/1024 rounds to 3 decimals, not to 0.0009765625.
    """
    if not math.isfinite(value) or resolution <= 0:
        return value
    if resolution >= 1:
        return float(round(value / resolution) * resolution)
    return round(value, resolution_decimals(resolution))


@functools.lru_cache(maxsize=256)
def resolution_decimals(resolution: float) -> int:
    """The decimals ``resolution`` implies (0.01 -> 2, 1/1024 -> 3, 1 or more -> 0)."""
    if resolution >= 1:
        return 0
    exponent = Decimal(repr(resolution)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def round_values(raw: Mapping[str, float], quantities: Mapping[str, Quantity]) -> dict[str, float]:
    """Each value rounded to its quantity's resolution; unknown quantities as they are."""
    return {
        name: round_to_resolution(value, quantities[name].resolution)
        if name in quantities
        else value
        for name, value in raw.items()
    }


@dataclass(frozen=True)
class Reading:
    """One sample of one sensor."""

    sensor: str
    ts: float
    seq: int
    values: dict[str, float]
    replayed: bool = False
    #: The ``seq`` counters' epoch (see :class:`agent.buffer.store.SequenceStore`); None
    #: for counters that are not kept (``edge-agent read``).
    epoch: int | None = None
    #: False when ``ts`` came from a clock that was not synchronised (CONTRACT 14): the
    #: payload then says ``"clock_synced": false``, also after a re-stamp at sync.
    clock_synced: bool = True
    #: The monotonic time of the sample (:mod:`agent.clock`), not published: the buffer
    #: measures ages on it, and re-stamps ``ts`` from it at sync. None: not known.
    mono: float | None = None

    def encode(self) -> bytes:
        """The JSON payload of CONTRACT section 5."""
        body: dict[str, Any] = {
            "sensor": self.sensor,
            "ts": iso_ts(self.ts),
            "seq": self.seq,
        }
        if self.epoch is not None:
            body["epoch"] = self.epoch
        body["values"] = self.values
        if not self.clock_synced:
            body["clock_synced"] = False
        if self.replayed:
            body["replayed"] = True
        return _encoder.encode(body)


def restamp_payload(payload: bytes, ts: float) -> bytes:
    """A reading's payload with ``ts`` replaced, every other key as it was, in its place
    (``"clock_synced": false`` stays: CONTRACT 14).

    Raises:
        ValueError: ``payload`` is not a JSON object.
    """
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError as e:
        raise ValueError(f"not a reading payload: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("a reading payload is a JSON object")
    body["ts"] = iso_ts(ts)
    return _encoder.encode(body)


def encode_json(body: Any) -> bytes:
    """Compact JSON bytes."""
    return _encoder.encode(body)
