"""Reading a command payload (CONTRACT section 7): a pure function of its inputs.

Everything that is not clearly a command is refused here, before any output is touched:
an empty, oversized, non-UTF-8 or wrongly shaped payload is ``bad_payload`` (so is JSON
with a duplicate key, a number too long to be meant, a pulse shorter than
:data:`MIN_DURATION_S`, and a ``toggle`` without an ``id``); a retained message is
``retained_command``; a ``ts`` older than ``commands.max_age``, or further in the future
than ``commands.max_skew`` (a controller with a wrong clock, or a command made to be
replayed later), is ``stale``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from agent.mqtt.payloads import parse_iso_ts

MAX_PAYLOAD_BYTES = 4096
#: The longest pulse a command may ask for: a week.
MAX_DURATION_S = 7 * 86400.0
#: The shortest pulse: below this a relay may not even pull in.
MIN_DURATION_S = 0.05
MAX_ID_LENGTH = 128
#: The longest number literal read: 2**53 has 16 digits, a week in ms 9; anything longer is
#: refused before it is converted (a 309-digit integer overflows a float).
MAX_NUMBER_CHARS = 24

Action = Literal["on", "off", "toggle"]
ErrorCode = Literal[
    "bad_payload",
    "unauthenticated",
    "replayed",
    "unknown_output",
    "stale",
    "retained_command",
    "interlocked",
    "rate_limited",
    "hardware_error",
]

PLAIN_ACTIONS: dict[str, Action] = {
    "on": "on",
    "off": "off",
    "toggle": "toggle",
    "1": "on",
    "0": "off",
    "true": "on",
    "false": "off",
}
JSON_KEYS = frozenset({"state", "duration", "id", "ts", "level"})
#: A signed command also has a nonce (CONTRACT 13), and must have it and its ts.
SIGNED_KEYS = JSON_KEYS | {"nonce"}
NONCE = re.compile(r"[\x21-\x7e]{8,64}")


@dataclass(frozen=True)
class Command:
    """A command that passed every check that does not need the output itself."""

    action: Action
    #: Seconds to hold the new state before switching back (a pulse); None: hold.
    duration: float | None = None
    id: str | int | None = None
    #: When the controller sent it (unix s), if it said.
    ts: float | None = None
    #: A signed command's nonce.
    nonce: str | None = None
    #: The level (0..100 %) for a dimmable output, ``{"state": "on", "level": 40}`` or
    #: ``40%``; None: the output's own "on" level.
    level: float | None = None


class CommandRefused(Exception):
    """A command that is answered with an error reply and changes nothing."""

    def __init__(self, code: ErrorCode, message: str, command_id: str | int | None = None):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.command_id = command_id


def parse_command(
    payload: bytes,
    *,
    retained: bool,
    now: float,
    max_age: float,
    max_skew: float = 5.0,
    signed: bool = False,
) -> Command:
    """The command in ``payload``.

    Args:
        payload: the raw MQTT payload.
        retained: the message's retain flag (as published, under MQTT 5).
        now: the current unix time.
        max_age: ``commands.max_age`` in seconds.
        max_skew: ``commands.max_skew``: how far in the future a ``ts`` may be.
        signed: ``payload`` is the inner command of a verified envelope: a JSON object
            that must have ``ts`` and ``nonce``.

    Raises:
        CommandRefused: with the reply's error code; ``command_id`` is the payload's ``id``
            when one could be read, so the refusal can still be matched to its request.
    """
    if not payload:
        raise CommandRefused("bad_payload", "the payload is empty; send on, off or toggle")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRefused(
            "bad_payload", f"the payload is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}"
        )
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandRefused("bad_payload", "the payload is not valid UTF-8") from None
    body = _json_object(text)
    command_id = _command_id(body) if body is not None else None
    if retained:
        raise CommandRefused(
            "retained_command",
            "retained commands are never acted on: they would replay on every reconnect",
            command_id,
        )
    if signed and body is None:
        raise CommandRefused("bad_payload", "a signed command is a JSON object")
    if body is None:
        if text.endswith("%"):
            return Command("on", level=_percent(text[:-1].strip(), text))
        action = PLAIN_ACTIONS.get(text.lower())
        if action is None:
            raise CommandRefused(
                "bad_payload",
                f"{_preview(text)} is not a command; send on, off, toggle or a JSON object",
            )
        if action == "toggle":
            raise CommandRefused("bad_payload", _TOGGLE_NEEDS_ID)
        return Command(action)
    return _from_json(body, command_id, now=now, max_age=max_age, max_skew=max_skew, signed=signed)


def envelope_of(payload: bytes) -> dict[str, Any] | None:
    """The outer JSON object of ``payload`` when it is shaped like a signed command (an
    object with a ``signed`` key), else None. Only the envelope is read here: the signed
    command inside stays a string until its signature has been checked."""
    if not payload or len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        text = payload.decode("utf-8").strip()
        body = _json_object(text)
    except (UnicodeDecodeError, CommandRefused):
        return None
    return body if body is not None and "signed" in body else None


_TOGGLE_NEEDS_ID = (
    "toggle needs an id: a redelivered toggle would undo itself; "
    'send {"state": "toggle", "id": "..."} or on/off'
)


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text``; None when ``text`` is not JSON-object-shaped at all."""
    if not text.startswith("{"):
        return None
    try:
        body = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
            object_pairs_hook=_unique_keys,
        )
    except CommandRefused:
        raise
    except (ValueError, RecursionError) as e:
        raise CommandRefused("bad_payload", f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise CommandRefused("bad_payload", "a JSON command must be an object")
    return body


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _bounded_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise CommandRefused("bad_payload", f"a number of {len(literal)} digits is out of range")
    return int(literal)


def _bounded_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise CommandRefused("bad_payload", f"a number of {len(literal)} characters is too long")
    value = float(literal)
    if not math.isfinite(value):
        raise CommandRefused("bad_payload", f"{literal} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names each key once: ``{"state":"off","state":"on"}`` is not a
    command whose last key wins, it is ambiguous."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CommandRefused("bad_payload", f"duplicate key {_preview(key)}")
        out[key] = value
    return out


def _command_id(body: dict[str, Any]) -> str | int | None:
    value = body.get("id")
    # A JSON escape can spell a lone surrogate ("\ud800"): not text, and it could not be
    # echoed back in a UTF-8 reply, so it is no id.
    if isinstance(value, str) and len(value) <= MAX_ID_LENGTH and _is_text(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _from_json(
    body: dict[str, Any],
    command_id: str | int | None,
    *,
    now: float,
    max_age: float,
    max_skew: float,
    signed: bool = False,
) -> Command:
    def refuse(message: str) -> CommandRefused:
        return CommandRefused("bad_payload", message, command_id)

    unknown = sorted(set(body) - (SIGNED_KEYS if signed else JSON_KEYS))
    if unknown:
        has = (
            "state, level, duration, id, ts and nonce"
            if signed
            else "state, level, duration, id and ts"
        )
        raise refuse(f"unknown key {unknown[0]!r}; a command has {has}")
    nonce = body.get("nonce")
    if signed:
        if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
            raise refuse('a signed command needs a "nonce" of 8 to 64 printable ASCII characters')
        if body.get("ts") is None:
            raise refuse('a signed command needs its "ts"')
    if body.get("id") is not None and command_id is None:
        raise refuse(f"id must be a string of at most {MAX_ID_LENGTH} characters or an integer")
    state = body.get("state")
    if not isinstance(state, str) or state.strip().lower() not in PLAIN_ACTIONS:
        raise refuse('"state" must be "on", "off" or "toggle"')
    action = PLAIN_ACTIONS[state.strip().lower()]
    if action == "toggle" and command_id is None:
        raise refuse(_TOGGLE_NEEDS_ID)
    level = body.get("level")
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 <= level <= 100:
            raise refuse('"level" must be a number from 0 to 100 (%)')
        if action == "off":
            raise refuse('"level" goes with "on" or "toggle"; "off" is level 0')
        level = float(level)
    duration = body.get("duration")
    if duration is not None:
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not math.isfinite(duration)
            or not MIN_DURATION_S <= duration <= MAX_DURATION_S
        ):
            raise refuse(
                f'"duration" must be seconds, from {MIN_DURATION_S:g} to {MAX_DURATION_S:g}'
            )
        duration = float(duration)
    ts = body.get("ts")
    sent: float | None = None
    if ts is not None:
        if not isinstance(ts, str):
            raise refuse('"ts" must be an ISO 8601 time such as "2026-11-23T04:11:27Z"')
        try:
            sent = parse_iso_ts(ts)
        except (ValueError, OverflowError, OSError):
            raise refuse(f'"ts" {_preview(ts)} is not an ISO 8601 time') from None
        age = now - sent
        if age > max_age:
            raise CommandRefused(
                "stale", f"the command is {age:.1f} s old; at most {max_age:g} s", command_id
            )
        if -age > max_skew:
            raise CommandRefused(
                "stale",
                f"the command's ts is {-age:.1f} s in the future (at most {max_skew:g} s): "
                "check the sender's clock",
                command_id,
            )
    return Command(
        action,
        duration=duration,
        id=command_id,
        ts=sent,
        nonce=nonce if signed else None,
        level=level,
    )


def _percent(number: str, text: str) -> float:
    """The level in a plain ``40%`` payload."""
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:  # also refuses nan and inf
        raise CommandRefused("bad_payload", f"{_preview(text)} is not a level from 0% to 100%")
    return value


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
