"""The command handler (CONTRACT section 7): one reply per command, where it should go."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.commands.handler import CommandHandler, Reply
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage
from tests.actuation.rig import Rig, relay

NOW = parse_iso_ts("2026-11-23T04:11:27Z")
TOPICS = Topics.for_device("edge", "gh-1")


class Bench:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.now = NOW
        self.sent: list[Reply] = []
        self.outputs = rig.open({"pump": relay(17, interlock=["heater"]), "heater": relay(18)})
        self.handler = CommandHandler(
            topics=TOPICS,
            outputs=self.outputs,
            max_age=30.0,
            send=self.sent.append,
            clock=lambda: self.now,
        )

    def send(
        self,
        payload: bytes | str,
        *,
        output: str = "pump",
        topic: str | None = None,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> list[Reply]:
        self.sent.clear()
        self.handler.handle(
            IncomingMessage(
                topic=topic or TOPICS.output_set(output),
                payload=payload.encode() if isinstance(payload, str) else payload,
                qos=1,
                retain=retain,
                properties=properties,
            )
        )
        return list(self.sent)

    def reply(self, payload: bytes | str, **kwargs: Any) -> dict[str, Any]:
        replies = self.send(payload, **kwargs)
        assert [r.topic for r in replies] == [TOPICS.reply]
        body: dict[str, Any] = json.loads(replies[0].payload)
        return body

    def on(self, pin: int) -> bool:
        return bool(self.rig.pin(pin).state)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    rig = Rig(state_path=tmp_path / "outputs.json")
    yield Bench(rig)
    rig.close()


def v5(**fields: Any) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in fields.items():
        setattr(props, name, value)
    return props


def test_an_accepted_command_is_answered_ok(bench: Bench) -> None:
    body = bench.reply('{"state": "on", "id": "c-17"}')
    assert body == {
        "id": "c-17",
        "output": "pump",
        "ok": True,
        "state": "on",
        "until": None,
        "ts": iso_ts(NOW),
    }
    assert bench.on(17)
    assert bench.handler.results[("pump", "ok")] == 1


def test_a_pulse_reply_says_until(bench: Bench) -> None:
    started = time.time()  # the outputs' clock
    body = bench.reply('{"state": "on", "duration": 30}')
    assert body["until"] is not None
    assert started + 29.9 < parse_iso_ts(body["until"]) < time.time() + 30.1


def test_a_refusal_is_answered_with_its_code_and_id(bench: Bench) -> None:
    body = bench.reply('{"state": "sideways", "id": 4}')
    assert body["ok"] is False
    assert (body["id"], body["output"], body["error"]) == (4, "pump", "bad_payload")
    assert body["message"]
    assert set(body) == {"id", "output", "ok", "error", "message", "ts"}
    assert bench.handler.results[("pump", "bad_payload")] == 1


def test_an_unknown_output_is_refused_with_the_id(bench: Bench) -> None:
    body = bench.reply('{"state": "on", "id": "u"}', output="sprinkler")
    assert (body["ok"], body["error"], body["id"], body["output"]) == (
        False,
        "unknown_output",
        "u",
        "sprinkler",
    )
    assert "heater" in body["message"] and "pump" in body["message"]


def test_a_retained_command_is_refused(bench: Bench) -> None:
    body = bench.reply('{"state": "on", "id": "r"}', retain=True)
    assert (body["ok"], body["error"], body["id"]) == (False, "retained_command", "r")
    assert not bench.on(17)


def test_an_empty_message_is_a_bad_payload_not_ignored(bench: Bench) -> None:
    assert bench.reply(b"", retain=True)["error"] == "bad_payload"


@pytest.mark.parametrize(
    "topic",
    [
        TOPICS.reply,
        TOPICS.output_state("pump"),
        "edge/gh-1/output/pump/set/x",
        "edge/gh-2/output/pump/set",
        "edge/gh-1/output//set",
    ],
)
def test_messages_on_other_topics_get_no_reply(bench: Bench, topic: str) -> None:
    assert bench.send("on", topic=topic) == []
    assert not bench.on(17)


def test_a_response_topic_gets_the_same_reply_with_correlation_data(bench: Bench) -> None:
    replies = bench.send("on", properties=v5(ResponseTopic="ctl/resp", CorrelationData=b"\x01q"))
    assert [(r.topic, r.correlation_data) for r in replies] == [
        (TOPICS.reply, None),
        ("ctl/resp", b"\x01q"),
    ]
    assert replies[0].payload == replies[1].payload


def test_a_response_topic_without_correlation_data(bench: Bench) -> None:
    replies = bench.send("off", properties=v5(ResponseTopic="ctl/resp"))
    assert [(r.topic, r.correlation_data) for r in replies] == [
        (TOPICS.reply, None),
        ("ctl/resp", None),
    ]


@pytest.mark.parametrize("response_topic", ["", "ctl/+/resp", "ctl/#"])
def test_an_invalid_response_topic_is_not_used(bench: Bench, response_topic: str) -> None:
    replies = bench.send("on", properties=v5(ResponseTopic=response_topic))
    assert [r.topic for r in replies] == [TOPICS.reply]


def test_an_expired_message_is_stale(bench: Bench) -> None:
    body = bench.reply("on", properties=v5(MessageExpiryInterval=0))
    assert body["error"] == "stale"
    assert not bench.on(17)
    assert bench.reply("on", properties=v5(MessageExpiryInterval=5))["ok"] is True


def test_a_redelivered_toggle_is_answered_but_not_acted_on_twice(bench: Bench) -> None:
    first = bench.reply('{"state": "toggle", "id": "t-1"}')
    assert bench.on(17)
    writes = list(bench.rig.pin(17).writes)
    again = bench.reply('{"state": "toggle", "id": "t-1"}')
    assert again == {**first, "duplicate": True}
    assert bench.rig.pin(17).writes == writes and bench.on(17)


def test_a_new_id_or_payload_is_a_new_command(bench: Bench) -> None:
    bench.reply('{"state": "toggle", "id": "t-1"}')
    assert "duplicate" not in bench.reply('{"state": "toggle", "id": "t-2"}')
    assert not bench.on(17)
    assert "duplicate" not in bench.reply('{"state": "toggle", "id": "t-1", "duration": 5}')
    assert bench.on(17)


def test_the_same_id_after_max_age_is_a_new_command(bench: Bench) -> None:
    bench.reply('{"state": "toggle", "id": "t-1"}')
    bench.now += 31
    assert "duplicate" not in bench.reply('{"state": "toggle", "id": "t-1"}')
    assert not bench.on(17)


def test_a_refused_command_is_not_remembered(bench: Bench) -> None:
    bench.reply("on", output="heater")
    pump = '{"state": "on", "id": "p"}'
    bench.rig.pin(18).fail_writes = True
    assert bench.reply(pump)["error"] == "interlocked"
    bench.rig.pin(18).fail_writes = False
    body = bench.reply(pump)
    assert body["ok"] is True and "duplicate" not in body
    assert bench.on(17) and not bench.on(18)


def test_plain_commands_are_never_taken_for_redeliveries(bench: Bench) -> None:
    bench.reply("toggle")
    bench.reply("toggle")
    assert not bench.on(17)
    assert bench.handler.results[("pump", "ok")] == 2
