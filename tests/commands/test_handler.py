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
from agent.commands.seen import SeenCommands
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage
from tests.actuation.rig import Rig, relay

NOW = parse_iso_ts("2026-11-23T04:11:27Z")
TOPICS = Topics.for_device("edge", "gh-1")


class Bench:
    def __init__(self, rig: Rig, **handler_args: Any) -> None:
        self.rig = rig
        self.now = NOW
        self.sent: list[Reply] = []
        self.outputs = rig.open({"pump": relay(17, interlock=["heater"]), "heater": relay(18)})
        self.handler = self.new_handler(**handler_args)

    def new_handler(self, **handler_args: Any) -> CommandHandler:
        """A handler as the daemon builds one (max_age 30 s, max_skew 5 s)."""
        args: dict[str, Any] = {
            "max_age": 30.0,
            "max_skew": 5.0,
            "reserved_prefixes": ("edge", "homeassistant"),
            **handler_args,
        }
        return CommandHandler(
            topics=TOPICS,
            outputs=self.outputs,
            send=self.sent.append,
            clock=lambda: self.now,
            **args,
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
    # The reply does not enumerate the device's outputs (info lists them, for those who may
    # read it).
    assert "heater" not in body["message"] and "pump" not in body["message"]
    assert bench.handler.results[("", "unknown_output")] == 1  # no label per topic name


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
        "edge/gh-1/output/set",
        "edge/gh-1/outputs/pump/set",
    ],
)
def test_messages_on_other_topics_get_no_reply(bench: Bench, topic: str) -> None:
    assert bench.send("on", topic=topic) == []
    assert not bench.on(17)


@pytest.mark.parametrize(
    "topic",
    [
        "edge/gh-1/output//set",
        "edge/gh-1/output/a/b/set",
        "edge/gh-1/output/pump/x/set",
        "edge/gh-1/output/pu mp/set",
        "edge/gh-1/output/pümp/set",
        "edge/gh-1/output/" + "p" * 65 + "/set",
    ],
)
def test_a_malformed_set_topic_gets_one_bad_payload_reply(bench: Bench, topic: str) -> None:
    replies = bench.send('{"state": "on", "id": "m"}', topic=topic)
    assert [r.topic for r in replies] == [TOPICS.reply]
    body = json.loads(replies[0].payload)
    assert (body["ok"], body["error"]) == (False, "bad_payload")
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


@pytest.mark.parametrize(
    "response_topic",
    [
        "",
        "ctl/+/resp",
        "ctl/#",
        # Reflection: a reply there would pass for this or another device's own message.
        "edge/gh-1/output/heater/state",
        "edge/gh-1/status",
        "edge/gh-1/reply",
        "edge/gh-2/reply/x",  # another device's replies
        "edge/gh-1/replyx",
        "edge/gh-2/output/pump/state",
        "edge",
        "homeassistant/switch/gh-1/pump/config",
        "homeassistant/status",
        "$SYS/broker/clients",
        "$share/g/ctl",
    ],
)
def test_a_response_topic_that_could_be_mistaken_is_refused(
    bench: Bench, response_topic: str
) -> None:
    replies = bench.send('{"state": "on", "id": "r"}', properties=v5(ResponseTopic=response_topic))
    assert [r.topic for r in replies] == [TOPICS.reply]
    body = json.loads(replies[0].payload)
    assert (body["ok"], body["error"], body["id"]) == (False, "bad_payload", None)
    assert "response topic" in body["message"]
    if "/" in response_topic:  # the topic is not echoed (its prefix may be named)
        assert response_topic not in body["message"]
    assert not bench.on(17)


@pytest.mark.parametrize(
    "response_topic",
    ["edgy/x", "/edge/x", "edge2/r", "ctl/edge/gh-1", "edge/gh-1/reply/edge-agent-send-1"],
)
def test_a_response_topic_outside_the_prefixes_is_used(bench: Bench, response_topic: str) -> None:
    replies = bench.send("on", properties=v5(ResponseTopic=response_topic))
    assert [r.topic for r in replies] == [TOPICS.reply, response_topic]


def test_a_response_prefix_allows_only_topics_under_it(tmp_path: Path) -> None:
    rig = Rig(state_path=tmp_path / "outputs.json")
    try:
        bench = Bench(rig, response_prefix="ctl/replies")
        assert [r.topic for r in bench.send("on", properties=v5(ResponseTopic="ctl/x"))] == [
            TOPICS.reply
        ]
        assert not bench.on(17)
        inside = bench.send("on", properties=v5(ResponseTopic="ctl/replies/app-1"))
        assert [r.topic for r in inside] == [TOPICS.reply, "ctl/replies/app-1"]
        assert bench.on(17)
    finally:
        rig.close()


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


def test_a_new_id_is_a_new_command(bench: Bench) -> None:
    bench.reply('{"state": "toggle", "id": "t-1"}')
    assert "duplicate" not in bench.reply('{"state": "toggle", "id": "t-2"}')
    assert not bench.on(17)


def test_an_id_reused_for_another_command_is_refused(bench: Bench) -> None:
    bench.reply('{"state": "toggle", "id": "t-1"}')
    body = bench.reply('{"state": "toggle", "id": "t-1", "duration": 5}')
    assert (body["ok"], body["error"], body["id"]) == (False, "bad_payload", "t-1")
    assert bench.on(17)
    # ... also for another output: an id names one command, to one output.
    assert bench.reply('{"state": "on", "id": "t-1"}', output="heater")["ok"] is True


def test_the_same_id_is_remembered_for_max_age_plus_max_skew(bench: Bench) -> None:
    bench.reply('{"state": "toggle", "id": "t-1"}')
    bench.now += 34.9
    assert bench.reply('{"state": "toggle", "id": "t-1"}')["duplicate"] is True
    bench.now += 0.2
    assert "duplicate" not in bench.reply('{"state": "toggle", "id": "t-1"}')
    assert not bench.on(17)


def test_a_command_dated_ahead_is_recognised_until_it_turns_stale(bench: Bench) -> None:
    # The red team's case: ts 25 s ahead, sent again 31 s later. Beyond max_skew it is
    # refused at once; within it, the id is kept until the ts itself turns stale.
    dated_ahead = f'{{"state": "toggle", "id": "a", "ts": "{iso_ts(NOW + 25)}"}}'
    assert bench.reply(dated_ahead)["error"] == "stale"
    ahead = f'{{"state": "toggle", "id": "f", "ts": "{iso_ts(NOW + 5)}"}}'
    assert bench.reply(ahead)["ok"] is True
    bench.now += 31
    assert bench.reply(ahead)["duplicate"] is True
    bench.now += 4.1
    assert bench.reply(ahead)["error"] == "stale"
    assert bench.on(17)


def test_an_id_is_remembered_after_many_other_commands(bench: Bench) -> None:
    bench.reply('{"state": "toggle", "id": "first"}')
    for i in range(300):
        bench.reply(f'{{"state": "off", "id": {i}}}', output="heater")
    assert bench.reply('{"state": "toggle", "id": "first"}')["duplicate"] is True
    assert bench.on(17)


def test_a_full_memory_refuses_new_ids_instead_of_forgetting(bench: Bench) -> None:
    handler = bench.handler = bench.new_handler(seen=SeenCommands(path=None, capacity=3))
    for i in range(3):
        assert bench.reply(f'{{"state": "on", "id": {i}}}')["ok"] is True
    body = bench.reply('{"state": "off", "id": 3}')
    assert (body["ok"], body["error"]) == (False, "rate_limited")
    assert bench.on(17)
    assert bench.reply("off")["ok"] is True  # commands without an id are not held back
    assert bench.reply('{"state": "on", "id": 0}')["duplicate"] is True
    bench.now += 36
    assert bench.reply('{"state": "on", "id": 3}')["ok"] is True
    assert len(handler.seen) == 1


def test_ids_are_remembered_across_a_reload(bench: Bench) -> None:
    bench.reply('{"state": "toggle", "id": "t-1"}')
    previous = bench.handler
    bench.handler = bench.new_handler(seen=previous.seen)
    bench.handler.carry_over(previous)
    assert bench.reply('{"state": "toggle", "id": "t-1"}')["duplicate"] is True
    assert bench.on(17)


def test_ids_are_remembered_across_a_restart(bench: Bench, tmp_path: Path) -> None:
    path = tmp_path / "state" / "commands.seen"
    seen = SeenCommands(path=path)
    seen.open(bench.now)
    bench.handler = bench.new_handler(seen=seen)
    first = bench.reply('{"state": "toggle", "id": "t-1", "duration": 600}')
    assert first["ok"] is True
    bench.now += 20
    bench.reply('{"state": "on", "id": "later"}', output="heater")
    seen.close()
    assert path.stat().st_mode & 0o777 == 0o600
    # A new process: nothing in memory but what the file says.
    again = SeenCommands(path=path)
    again.open(bench.now)
    assert len(again) == 2
    bench.handler = bench.new_handler(seen=again)
    body = bench.reply('{"state": "toggle", "id": "t-1", "duration": 600}')
    assert body["duplicate"] is True
    assert (body["ok"], body["state"]) == (True, "off")  # the output's state now
    assert not bench.on(17)
    again.close()
    # Expired entries are not carried into the next run.
    bench.now += 30
    third = SeenCommands(path=path)
    third.open(bench.now)
    assert len(third) == 1
    third.close()


def test_a_damaged_memory_file_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "commands.seen"
    path.write_text(
        '{"k":"[\\"pump\\", 1]","u":2000000000,"h":"ab"}\n'
        "not json\n"
        '{"k": 5, "u": 1, "h": "x"}\n'
        '{"k":"[\\"pump\\", 2]","u":20'
    )
    seen = SeenCommands(path=path)
    seen.open(NOW)
    assert len(seen) == 1 and seen.get('["pump", 1]', NOW) is not None
    seen.close()


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
    bench.reply("on")
    bench.reply("off")
    bench.reply("on")
    assert bench.on(17)
    assert bench.handler.results[("pump", "ok")] == 3


def test_a_toggle_without_an_id_is_refused(bench: Bench) -> None:
    # Commands without an id may be carried out twice (a QoS 1 redelivery after a stall
    # cannot be told from a new command): harmless for on and off, not for toggle.
    assert bench.reply("toggle")["error"] == "bad_payload"
    assert not bench.on(17)


@pytest.mark.parametrize("digits", [309, 400, 4301])
def test_a_huge_duration_gets_one_bad_payload_reply(bench: Bench, digits: int) -> None:
    body = bench.reply('{"state": "on", "duration": ' + "9" * digits + "}")
    assert body["error"] == "bad_payload"
    assert not bench.on(17)
