"""Fuzz: 10 000 random messages against the real handler, controller and relay drivers.

Whatever arrives (any topic, any bytes, retained or not, with or without MQTT 5
properties), ``handle`` never raises; every message on a set topic (malformed ones too)
gets exactly one well-formed reply on ``<base>/reply`` (and one on an acceptable response
topic), nothing else gets any; no reply is ever published under ``<topic_prefix>/#``
(other than ``<base>/reply``), the Home Assistant prefix or a ``$`` topic; a pin moves
only for an accepted command that changes a state (or, between messages, for a timer);
no command id is acted on twice within its window (the clock stands still here, so
never); two interlocked outputs are never on together.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.commands.handler import CommandHandler, Reply
from agent.commands.parse import MAX_PAYLOAD_BYTES, ErrorCode
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage
from drivers.gpio import Relay
from tests.actuation.rig import Rig, relay

NOW = parse_iso_ts("2026-11-23T04:11:27Z")
MAX_AGE = 30.0
BASE = "edge/fuzz-1"
TOPICS = Topics(BASE)
ERROR_CODES = frozenset(get_args(ErrorCode))
SET_TOPIC = re.compile(rf"^{re.escape(BASE)}/output/(.*)/set$", re.DOTALL)
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOPIC_PREFIX = "edge"
HA_PREFIX = "homeassistant"

#: name -> (GPIO, active_high). "ghost" cannot be opened: its pin is taken.
PINS = {
    "pump": (17, True),
    "heater": (18, False),
    "fan": (22, True),
    "lamp": (23, True),
    "ghost": (24, True),
}
#: Pairs that must never be on together.
INTERLOCKED = [("pump", "heater"), ("fan", "heater")]
PARTNERS = {"pump": {"heater"}, "fan": {"heater"}, "heater": {"pump", "fan"}}


# --- strategies ------------------------------------------------------------------------

# Strategies are built from few, cheap draws: 10 000 examples must run in seconds.
WORDS = ["on", "off", "toggle", "1", "0", "true", "false"]
whitespace = st.sampled_from(["", "", "", " ", "\n", " \t", "\r\n", "  "])


@st.composite
def any_case(draw: st.DrawFn) -> str:
    """A plain command word in random upper and lower case."""
    word = draw(st.sampled_from(WORDS))
    upper = draw(st.integers(0, 63))
    return "".join(c.upper() if upper >> i & 1 else c for i, c in enumerate(word))


plain_command = st.builds(
    lambda left, word, right: left + word + right, whitespace, any_case(), whitespace
)

json_values: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from([[], {}, ["on"], {"state": "on"}, [[[]]], {"": None}]),
)
state_values = st.one_of(plain_command, st.sampled_from(["", "maybe", "onn"]), json_values)
duration_values = st.one_of(
    st.floats(min_value=0.05, max_value=0.2),  # pulses that end a few hundred messages on
    st.floats(min_value=1e-300, max_value=0.05, exclude_max=True),  # too short: refused
    st.floats(min_value=60, max_value=7 * 86400),
    st.floats(),
    st.integers(min_value=-10, max_value=10**7),
    json_values,
)
id_values = st.one_of(
    st.text(max_size=140),
    st.integers(),
    st.sampled_from(["c-1", "c-2", "c-3", 1, 2]),  # repeated ids: redeliveries
    json_values,
)
ts_values = st.one_of(
    st.floats(min_value=-2 * MAX_AGE, max_value=2 * MAX_AGE).map(lambda d: iso_ts(NOW + d)),
    st.text(max_size=30),
    json_values,
)
FIELDS = {"state": state_values, "duration": duration_values, "id": id_values, "ts": ts_values}


@st.composite
def command_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON command with a random subset of its fields, of random types, and now and
    then a key it does not know."""
    present = draw(st.integers(0, 31))
    body = {key: draw(values) for i, (key, values) in enumerate(FIELDS.items()) if present >> i & 1}
    if present & 16:
        body[draw(st.sampled_from(["State", "delay", "", "x"]) | st.text(max_size=6))] = draw(
            json_values
        )
    return body


@st.composite
def json_payloads(draw: st.DrawFn) -> bytes:
    text = json.dumps(draw(command_bodies()), ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # truncated: invalid JSON
        text = text[: draw(st.integers(0, len(text)))]
    # ensure_ascii=False writes lone surrogates raw: invalid UTF-8 on the wire.
    return (draw(whitespace) + text + draw(whitespace)).encode("utf-8", "surrogatepass")


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn in proportion to its weight (``st.one_of`` draws
    its branches evenly)."""
    indices = st.sampled_from([i for i, (weight, _) in enumerate(choices) for _ in range(weight)])

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(choices[draw(indices)][1])

    return pick()


#: Valid commands from a small pool of ids: redeliveries (same payload) and reuses (same
#: id, another payload) of commands that were carried out.
ID_POOL = [f"c-{i}" for i in range(8)] + [1, 2, 3, 4]
valid_with_id = st.builds(
    lambda state, command_id, duration: json.dumps(
        {"state": state, "id": command_id, **({"duration": duration} if duration else {})}
    ).encode(),
    st.sampled_from(["on", "off", "toggle"]),
    st.sampled_from(ID_POOL),
    st.sampled_from([None, None, 600]),
)

payloads = weighted(
    (2, valid_with_id),
    (4, plain_command.map(str.encode)),
    (4, json_payloads()),
    (1, st.binary(max_size=64)),
    (1, st.text(max_size=64).map(str.encode)),
    (1, st.sampled_from([b"", b" ", b"{}", b"null", b"[]", b'"on"', b"\xff", b"{", b"NaN"])),
    # The same command again: a QoS 1 redelivery, answered but not acted on twice.
    (
        1,
        st.sampled_from(
            [
                b'{"state": "toggle", "id": "c-1"}',
                b'{"state": "on", "id": 7}',
                b'{"state": "off", "id": "x"}',
            ]
        ),
    ),
    (1, st.integers(MAX_PAYLOAD_BYTES - 4, MAX_PAYLOAD_BYTES + 50).map(lambda n: b" " * n + b"on")),
)

# Topics arrive as paho decodes them: well-formed UTF-8 (brokers refuse anything else).
name_text = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12)
topics = weighted(
    (12, st.sampled_from(list(PINS)).map(TOPICS.output_set)),
    (1, name_text.map(TOPICS.output_set)),  # unknown outputs (mostly)
    (
        1,
        st.sampled_from(
            [
                TOPICS.reply,
                TOPICS.status,
                TOPICS.event,
                TOPICS.output_state("pump"),
                f"{BASE}/output//set",
                f"{BASE}/output/pump/set/more",
                f"{BASE}/output/a/b/set",
                f"{BASE}/output/pump",
                f"{BASE}/set",
                "edge/other-device/output/pump/set",
                f"/{BASE}/output/pump/set",
                f"{BASE}/output/pump/SET",
                "output/pump/set",
            ]
        ),
    ),
    (1, st.text(st.characters(codec="utf-8"), max_size=40)),
    (1, name_text.map(lambda name: f"{BASE}/{name}")),
)


RESPONSE_TOPICS = [
    None,
    None,
    None,
    "ctl/resp/1",
    "ctl/resp/1",
    "ctl/ü",
    "edgy/x",
    "/edge/x",
    f"{TOPICS.reply}/edge-agent-send-1a2b",  # this device's own reply subtree: allowed
    # Refused: wildcards, empty, and every topic a reply could be mistaken on.
    "",
    "ctl/+/x",
    "ctl/#",
    TOPICS.reply,
    TOPICS.output_state("heater"),
    TOPICS.status,
    "edge/other-device/output/pump/state",
    "edge",
    "homeassistant/switch/x/config",
    "homeassistant",
    "$SYS/broker/x",
    "$share/g/x",
]


@st.composite
def v5_properties(draw: st.DrawFn) -> Properties | None:
    """None (MQTT 3.1.1), or MQTT 5 properties with or without a response topic (valid or
    not), correlation data and a remaining expiry."""
    if draw(st.integers(0, 2)) > 0:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    response = draw(st.sampled_from(RESPONSE_TOPICS) | st.text(max_size=12))
    if response is not None:
        props.ResponseTopic = response
    correlation = draw(st.sampled_from([None, None, b"", b"\x00\xff", b"req-1"]))
    if correlation is not None:
        props.CorrelationData = correlation
    expiry = draw(st.sampled_from([None, None, None, 0, 1, 60]))
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    return props


messages = st.builds(
    IncomingMessage,
    topic=topics,
    payload=payloads,
    qos=st.integers(0, 2),
    retain=st.sampled_from([False] * 9 + [True]),
    properties=v5_properties(),
)


# --- the rig ---------------------------------------------------------------------------


@pytest.fixture
def quiet() -> Iterator[None]:
    """10 000 refusals would each log a warning; keep pytest's log capture small."""
    logger = logging.getLogger("agent")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def under(topic: str, prefix: str) -> bool:
    return topic == prefix or topic.startswith(prefix + "/")


def valid_response_topic(props: Properties | None) -> str | None:
    """The response topic a reply may go to: no wildcard or NUL (MQTT forbids them in a
    topic name); below this device's own <base>/reply/, or else not a $ topic and not
    under the topic prefix or the Home Assistant prefix."""
    topic = getattr(props, "ResponseTopic", None) if props is not None else None
    if not (isinstance(topic, str) and topic and not any(c in topic for c in ("+", "#", "\x00"))):
        return None
    if topic.startswith(TOPICS.reply + "/"):
        return topic
    if topic.startswith("$") or under(topic, TOPIC_PREFIX) or under(topic, HA_PREFIX):
        return None
    return topic


def check_reply_body(payload: bytes, name: str) -> dict[str, Any]:
    body = json.loads(payload)
    assert isinstance(body, dict)
    assert body["output"] == name
    assert body["id"] is None or isinstance(body["id"], str | int)
    assert not isinstance(body["id"], bool)
    parse_iso_ts(body["ts"])
    if body["ok"] is True:
        assert set(body) - {"duplicate"} == {"id", "output", "ok", "state", "until", "ts"}
        assert body["state"] in ("on", "off")
        assert body.get("duplicate", True) is True
        if body["until"] is not None:
            parse_iso_ts(body["until"])
    else:
        assert body["ok"] is False
        assert set(body) == {"id", "output", "ok", "error", "message", "ts"}
        assert body["error"] in ERROR_CODES
        assert isinstance(body["message"], str) and body["message"]
    return body


# 10 000 hypothesis examples take about a minute on an idle 2-core machine and several
# on a loaded one; the default 120 s timeout measured the machine, not the handler.
@pytest.mark.timeout(600)
def test_random_messages_never_break_the_rules(tmp_path: Path, quiet: None) -> None:
    rig = Rig(state_path=tmp_path / "outputs.json")
    squatter = Relay(PINS["ghost"][0], pin_factory=rig.factory)
    outputs = rig.open(
        {
            "pump": relay(17, interlock=["heater"]),
            "heater": relay(18, active_high=False, min_switch_interval=0.05),
            "fan": relay(22, interlock=["heater"], max_on=3600),
            "lamp": relay(23, max_on=0.002),
            "ghost": relay(24),
        }
    )
    outputs.connected()
    sent: list[Reply] = []
    handler = CommandHandler(
        topics=TOPICS,
        outputs=outputs,
        max_age=MAX_AGE,
        send=sent.append,
        reserved_prefixes=(TOPIC_PREFIX, HA_PREFIX),
        clock=lambda: NOW,
    )
    seen: Counter[str] = Counter()
    #: (output, id) of every command with an id that was carried out.
    acted_on: set[tuple[str, str]] = set()

    pins = {name: (rig.pin(n), active_high) for name, (n, active_high) in PINS.items()}
    del pins["ghost"]

    def levels() -> dict[str, bool]:
        return {name: pin.state == active_high for name, (pin, active_high) in pins.items()}

    def check_interlocks(now: dict[str, bool]) -> None:
        for a, b in INTERLOCKED:
            assert not (now[a] and now[b]), f"{a} and {b} are on together"

    @settings(
        max_examples=10_000,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(message=messages)
    def one_message(message: IncomingMessage) -> None:
        # A message every 5 ms (of the rig's virtual time): timers (pulse ends, max_on)
        # that fell due since the last message run first.
        rig.run_for(0.005)
        check_interlocks(levels())
        before = levels()
        sent.clear()

        handler.handle(message)  # must not raise, whatever the message

        after = levels()
        check_interlocks(after)
        match = SET_TOPIC.match(message.topic)
        if match is None:
            assert sent == []
            assert after == before
            seen["not a set topic"] += 1
            return
        name = match.group(1)
        for reply in sent:  # never reflected onto a topic a device or Home Assistant uses
            assert under(reply.topic, TOPICS.reply) or not (
                under(reply.topic, TOPIC_PREFIX)
                or under(reply.topic, HA_PREFIX)
                or reply.topic.startswith("$")
            ), reply.topic
        response_topic = valid_response_topic(message.properties)
        asked = getattr(message.properties, "ResponseTopic", None)
        assert [r.topic for r in sent] == [TOPICS.reply] + (
            [response_topic] if response_topic else []
        )
        assert sent[0].correlation_data is None
        if response_topic is not None:
            assert sent[1].payload == sent[0].payload
            correlation = getattr(message.properties, "CorrelationData", None)
            assert sent[1].correlation_data == correlation
        body = check_reply_body(sent[0].payload, name)

        payload = message.payload
        if not OUTPUT_NAME.match(name):
            assert body["error"] == "bad_payload"  # output//set, a/b, spaces ...
            seen["malformed set topic"] += 1
        elif asked is not None and response_topic is None:
            assert body["error"] == "bad_payload"
            seen["refused response topic"] += 1
        elif getattr(message.properties, "MessageExpiryInterval", None) == 0:
            assert body["error"] == "stale"  # expired in transit: not even read
        elif not payload or len(payload) > MAX_PAYLOAD_BYTES:
            assert body["error"] == "bad_payload"
        if name not in PINS:
            assert body["ok"] is False
        if name == "ghost":
            assert body["ok"] is False
            assert body["error"] in ("bad_payload", "stale", "retained_command", "hardware_error")
        if message.retain:
            assert body["ok"] is False
            assert body["error"] in ("bad_payload", "stale", "retained_command")

        if body["ok"] is not True or body.get("duplicate"):
            assert after == before, "a pin moved without an accepted command"
            seen["duplicate" if body.get("duplicate") else body["error"]] += 1
            return
        seen["ok"] += 1
        if body["id"] is not None:
            key = (name, json.dumps(body["id"]))
            assert key not in acted_on, f"command id {key} acted on twice"
            acted_on.add(key)
        target = body["state"] == "on"
        assert after[name] is target
        state = outputs.state(name)
        assert state is not None and state.on is target
        for other, was in before.items():
            if other != name and after[other] != was:
                # Only an interlocked partner may move, and only off.
                assert other in PARTNERS.get(name, set()) and after[other] is False
                assert target is True
                seen["interlock"] += 1
        if after[name] != before[name]:
            seen["switched"] += 1

    try:
        one_message()
        # The fuzz reached every corner it claims to.
        assert seen["ok"] > 200 and seen["switched"] > 100 and seen["interlock"] > 5, seen
        assert seen["not a set topic"] > 200, seen
        assert seen["duplicate"] > 0, seen
        assert seen["malformed set topic"] > 20 and seen["refused response topic"] > 100, seen
        assert len(acted_on) > 20, acted_on
        # This handler has no keys: the signed-command refusals are tests/commands/test_signed.py's.
        for code in ERROR_CODES - {"unauthenticated", "replayed"}:
            assert seen[code] > 0, (code, seen)
        assert sum(seen.values()) - seen["switched"] - seen["interlock"] >= 10_000
    finally:
        squatter.close()
        rig.close()
