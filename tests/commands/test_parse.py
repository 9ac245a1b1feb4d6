"""Command payloads (CONTRACT section 7): every accepted form and every refusal, by code."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.commands.parse import (
    MAX_DURATION_S,
    MAX_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    MIN_DURATION_S,
    Action,
    Command,
    CommandRefused,
    parse_command,
)
from agent.mqtt.payloads import parse_iso_ts

NOW = parse_iso_ts("2026-11-23T04:11:27Z")
MAX_AGE = 30.0
MAX_SKEW = 5.0


def parse(payload: bytes | str, *, retained: bool = False, now: float = NOW) -> Command:
    raw = payload.encode() if isinstance(payload, str) else payload
    return parse_command(raw, retained=retained, now=now, max_age=MAX_AGE, max_skew=MAX_SKEW)


def refused(payload: bytes | str, *, retained: bool = False, now: float = NOW) -> CommandRefused:
    with pytest.raises(CommandRefused) as info:
        parse(payload, retained=retained, now=now)
    return info.value


def as_json(body: dict[str, Any]) -> str:
    return json.dumps(body)


# --- plain payloads ----------------------------------------------------------------------

PLAIN: list[tuple[str, Action]] = [
    ("on", "on"),
    ("off", "off"),
    ("1", "on"),
    ("0", "off"),
    ("true", "on"),
    ("false", "off"),
]


@pytest.mark.parametrize(("word", "action"), PLAIN)
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title])
def test_plain_commands_are_case_insensitive(word: str, action: Action, spelling: Any) -> None:
    assert parse(spelling(word)) == Command(action)


@pytest.mark.parametrize(("word", "action"), PLAIN)
@pytest.mark.parametrize("padding", [" {} ", "\t{}\n", "\r\n{}\r\n", "  {}"])
def test_plain_commands_ignore_surrounding_whitespace(
    word: str, action: Action, padding: str
) -> None:
    assert parse(padding.format(word)) == Command(action)


def test_mixed_case_plain_command() -> None:
    assert parse("oN").action == "on"
    assert parse("TrUe").action == "on"


@pytest.mark.parametrize("payload", ["toggle", "TOGGLE", " Toggle\n", '{"state": "toggle"}'])
def test_toggle_without_an_id_is_refused(payload: str) -> None:
    # An id-less command may be delivered twice (QoS 1 after a stall); on and off repeat
    # harmlessly, a repeated toggle undoes itself.
    error = refused(payload)
    assert error.code == "bad_payload"
    assert "id" in error.message


def test_toggle_with_an_id_is_accepted() -> None:
    assert parse('{"state": "toggle", "id": "t-1"}') == Command("toggle", id="t-1")


def test_a_plain_command_has_no_id_duration_or_ts() -> None:
    command = parse("on")
    assert (command.id, command.duration, command.ts) == (None, None, None)


# --- JSON payloads -----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["on", "off", "toggle", "ON", " Off ", "1", "0", "true", "FALSE"])
def test_json_state(state: str) -> None:
    expected = {"on": "on", "1": "on", "true": "on", "off": "off", "0": "off", "false": "off"}
    word = state.strip().lower()
    assert parse(as_json({"state": state, "id": 1})).action == expected.get(word, word)


def test_json_with_every_field() -> None:
    body = {"state": "on", "duration": 30, "id": "c-17", "ts": "2026-11-23T04:11:20Z"}
    assert parse(as_json(body)) == Command(
        "on", duration=30.0, id="c-17", ts=parse_iso_ts("2026-11-23T04:11:20Z")
    )


@pytest.mark.parametrize("duration", [MIN_DURATION_S, 0.5, 1, 30, 86400, MAX_DURATION_S])
def test_json_duration_in_range_is_seconds(duration: float) -> None:
    command = parse(as_json({"state": "on", "duration": duration}))
    assert command.duration == pytest.approx(duration)
    assert isinstance(command.duration, float)


@pytest.mark.parametrize("command_id", ["c-17", "", "x" * MAX_ID_LENGTH, "ünïcødé", 0, 42, -7])
def test_json_id_may_be_a_string_or_an_integer(command_id: str | int) -> None:
    assert parse(as_json({"state": "off", "id": command_id})).id == command_id


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-23T04:11:27Z",
        "2026-11-23T04:11:00Z",  # 27 s old: within max_age
        "2026-11-23T04:11:32Z",  # 5 s ahead: a clock slightly fast is tolerated (max_skew)
        "2026-11-23T04:11:27.500Z",
        "2026-11-23T05:11:27+01:00",
        "2026-11-23T04:11:27",  # no offset: UTC
    ],
)
def test_json_fresh_ts_is_accepted(ts: str) -> None:
    command = parse(as_json({"state": "on", "ts": ts}))
    assert command.ts is not None
    assert abs(command.ts - NOW) <= MAX_AGE


def test_json_null_duration_and_ts_mean_absent() -> None:
    assert parse(as_json({"state": "on", "duration": None, "ts": None})) == Command("on")


def test_json_with_surrounding_whitespace() -> None:
    assert parse('\n  {"state": "off"}  \n').action == "off"


# --- refusals: bad_payload ---------------------------------------------------------------


def test_empty_payload_is_bad_payload() -> None:
    # How people clear a retained message: it is still a command, and a bad one.
    error = refused(b"")
    assert error.code == "bad_payload"
    assert "empty" in error.message


def test_whitespace_only_payload_is_bad_payload() -> None:
    assert refused("   \n").code == "bad_payload"


def test_payload_over_4_kib_is_bad_payload() -> None:
    body = '{"state": "on", "id": "' + "x" * MAX_PAYLOAD_BYTES + '"}'
    error = refused(body)
    assert error.code == "bad_payload"
    assert str(MAX_PAYLOAD_BYTES) in error.message


def test_payload_of_exactly_4_kib_is_read() -> None:
    payload = "on" + " " * (MAX_PAYLOAD_BYTES - 2)
    assert len(payload.encode()) == MAX_PAYLOAD_BYTES
    assert parse(payload).action == "on"
    assert refused(payload + " ").code == "bad_payload"


@pytest.mark.parametrize("payload", [b"\xff", b"o\xffn", b"\xc3", b'{"state": "\xed\xa0\x80"}'])
def test_invalid_utf8_is_bad_payload(payload: bytes) -> None:
    error = refused(payload)
    assert error.code == "bad_payload"
    assert "UTF-8" in error.message


@pytest.mark.parametrize(
    "payload",
    ['{"state": "on"', '{"state": on}', "{state: 'on'}", '{"state": "on",}', "{", '{"a" 1}'],
)
def test_invalid_json_is_bad_payload(payload: str) -> None:
    error = refused(payload)
    assert error.code == "bad_payload"
    assert "JSON" in error.message


@pytest.mark.parametrize("payload", ['["on"]', '"on"', "null", "42", "1.0", "[]", "on off"])
def test_json_that_is_not_an_object_is_bad_payload(payload: str) -> None:
    assert refused(payload).code == "bad_payload"


def test_deeply_nested_json_is_bad_payload_not_a_crash() -> None:
    payload = '{"state": ' + "[" * 2000 + "]" * 2000 + "}"
    assert len(payload) <= MAX_PAYLOAD_BYTES
    assert refused(payload).code == "bad_payload"


@pytest.mark.parametrize("key", ["State", "delay", "value", ""])
def test_unknown_key_is_bad_payload_and_named(key: str) -> None:
    error = refused(as_json({"state": "on", key: 1, "id": "c-1"}))
    assert error.code == "bad_payload"
    assert repr(key) in error.message
    assert error.command_id == "c-1"


@pytest.mark.parametrize("state", ["maybe", "", 1, 0, True, None, ["on"], {"on": 1}, 1.0])
def test_bad_state_is_bad_payload(state: Any) -> None:
    error = refused(as_json({"state": state, "id": 9}))
    assert error.code == "bad_payload"
    assert '"state"' in error.message
    assert error.command_id == 9


def test_missing_state_is_bad_payload() -> None:
    assert refused(as_json({"duration": 3})).code == "bad_payload"


@pytest.mark.parametrize(
    "duration",
    [
        0,
        0.0,
        -1,
        -0.5,
        True,
        False,
        "30",
        "30s",
        [30],
        {"s": 30},
        MAX_DURATION_S + 1,
        1e308,
        1e-300,  # a 1e-300 s pulse: the relay would barely click
        0.049,
    ],
)
def test_bad_duration_is_bad_payload(duration: Any) -> None:
    error = refused(as_json({"state": "on", "duration": duration, "id": "d"}))
    assert error.code == "bad_payload"
    assert '"duration"' in error.message
    assert error.command_id == "d"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_bad_payload(literal: str) -> None:
    # Python's json would read these as floats; a command must not.
    assert refused('{"state": "on", "duration": ' + literal + "}").code == "bad_payload"


def test_overflowing_number_literal_is_bad_payload() -> None:
    # 1e999 is read as inf by json: it must not become a never-ending pulse.
    assert refused('{"state": "on", "duration": 1e999}').code == "bad_payload"


@pytest.mark.parametrize("key", ["duration", "id", "ts", "state"])
@pytest.mark.parametrize("digits", [25, 309, 5000])
def test_huge_number_literal_is_bad_payload_before_conversion(key: str, digits: int) -> None:
    # A 309-digit integer overflows float(); one of 5000 digits exceeds int()'s limit.
    body = '{"state": "on", "%s": %s}' % (key, "9" * digits)  # noqa: UP031
    error = refused(body)
    assert error.code == "bad_payload"
    assert "9" * 20 not in error.message  # the number is not echoed back


@pytest.mark.parametrize(
    "body",
    [
        '{"state": "off", "state": "on"}',
        '{"state": "on", "id": "a", "id": "b"}',
        '{"state": "on", "duration": 1, "duration": 600}',
        '{"state": "on", "x": {"a": 1, "a": 2}}',
    ],
)
def test_duplicate_json_keys_are_bad_payload(body: str) -> None:
    error = refused(body)
    assert error.code == "bad_payload"
    assert "duplicate" in error.message


@pytest.mark.parametrize(
    "command_id", [1.5, True, ["c"], {"c": 1}, "x" * (MAX_ID_LENGTH + 1), 2**53, -(2**53)]
)
def test_bad_id_is_bad_payload(command_id: Any) -> None:
    error = refused(as_json({"state": "on", "id": command_id}))
    assert error.code == "bad_payload"
    assert "id" in error.message
    assert error.command_id is None


def test_a_null_id_is_no_id() -> None:
    command = parse(b'{"state": "on", "id": null}')
    assert command.action == "on" and command.id is None


def test_id_with_a_lone_surrogate_is_bad_payload() -> None:
    # JSON escapes can spell a string that is not Unicode text; it could never be echoed
    # back in a UTF-8 reply.
    error = refused('{"state": "on", "id": "c-\\ud800"}')
    assert error.code == "bad_payload"
    assert error.command_id is None


@pytest.mark.parametrize(
    "ts", [1732335087, "yesterday", "2026-13-01T00:00:00Z", "", "2026-11-23T04:11:27ZZ", ["x"]]
)
def test_bad_ts_is_bad_payload(ts: Any) -> None:
    error = refused(as_json({"state": "on", "ts": ts, "id": "t"}))
    assert error.code == "bad_payload"
    assert '"ts"' in error.message
    assert error.command_id == "t"


# --- refusals: stale, retained_command ---------------------------------------------------


@pytest.mark.parametrize(
    "ts", ["2026-11-23T04:10:56Z", "2026-11-23T03:00:00Z", "2000-01-01T00:00:00Z"]
)
def test_ts_older_than_max_age_is_stale(ts: str) -> None:
    error = refused(as_json({"state": "on", "ts": ts, "id": "s-1"}))
    assert error.code == "stale"
    assert error.command_id == "s-1"
    assert "old" in error.message


@pytest.mark.parametrize(
    "ts", ["2026-11-23T04:11:32.010Z", "2026-11-23T04:11:52Z", "2026-11-24T00:00:00Z"]
)
def test_ts_further_ahead_than_max_skew_is_stale(ts: str) -> None:
    # A ts 25 s ahead would otherwise stay acceptable for 55 s: longer than its id is
    # remembered for (max_age + max_skew), so it could be carried out twice.
    error = refused(as_json({"state": "on", "ts": ts}))
    assert error.code == "stale"
    assert "future" in error.message


def test_stale_depends_on_now() -> None:
    body = as_json({"state": "on", "ts": "2026-11-23T04:11:27Z"})
    assert parse(body, now=NOW + MAX_AGE).action == "on"
    assert refused(body, now=NOW + MAX_AGE + 0.01).code == "stale"


@pytest.mark.parametrize("payload", ["on", "OFF", "toggle", '{"state": "on"}'])
def test_retained_command_is_refused(payload: str) -> None:
    error = refused(payload, retained=True)
    assert error.code == "retained_command"
    assert error.command_id is None


@pytest.mark.parametrize("command_id", ["c-17", 17])
def test_retained_command_refusal_carries_its_id(command_id: str | int) -> None:
    error = refused(as_json({"state": "on", "id": command_id}), retained=True)
    assert error.code == "retained_command"
    assert error.command_id == command_id


def test_retained_is_refused_even_when_the_payload_would_be_valid_and_fresh() -> None:
    body = as_json({"state": "on", "ts": "2026-11-23T04:11:27Z", "id": "r"})
    assert refused(body, retained=True).code == "retained_command"
    assert parse(body, retained=False).action == "on"


def test_retained_garbage_is_still_bad_payload() -> None:
    # What cannot be read at all is a bad payload first; a retained empty message (the
    # clearing of a retained command) is answered as bad_payload.
    assert refused(b"", retained=True).code == "bad_payload"
    assert refused(b"\xff", retained=True).code == "bad_payload"
