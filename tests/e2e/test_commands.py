"""Commands and output safety, end to end: the real agent process, a real mosquitto.

The agent runs on simulated hardware (gpiozero's MockFactory); the state it publishes is
read back from the pin (``Relay.is_on``), so a published state is the pin's level.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.demo.broker import PrivateBroker
from agent.mqtt.payloads import iso_ts, parse_iso_ts
from tests.support.configs import write_config
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import AgentProcess, Collector, Received, retained

pytestmark = pytest.mark.e2e

OUTPUTS = """\
outputs:
  pump:
    driver: relay
    pin: 17
  heater:
    driver: relay
    pin: 18
    active_high: false
    interlock: [pump]
"""


class Commander:
    """A controller that sends commands (MQTT 5 or 3.1.1)."""

    def __init__(self, port: int, *, v5: bool = True) -> None:
        protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        self.v5 = v5
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    def send(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def commander(broker: PrivateBroker) -> Iterator[Commander]:
    c = Commander(broker.port)
    yield c
    c.close()


def start_agent(
    tmp_path: Path,
    port: int,
    device_id: str,
    agents: Callable[..., AgentProcess],
    *,
    outputs: str = OUTPUTS,
    commands: str = "",
    protocol: str = "5",
    keepalive: int = 5,
) -> AgentProcess:
    config = write_config(
        tmp_path / "c.yaml",
        port=port,
        device_id=device_id,
        interval="5s",
        extra=outputs + commands,
        protocol=protocol,
        keepalive=keepalive,
    )
    return agents(config)


def reply_to(c: Collector, base: str, command_id: str, timeout: float = 15.0) -> Any:
    found = c.wait_for(
        lambda m: m.topic == f"{base}/reply" and m.json().get("id") == command_id,
        timeout=timeout,
    )
    return found[0].json()


def states(c: Collector, base: str, output: str) -> list[Any]:
    return [m.json() for m in c.on(f"{base}/output/{output}/state")]


def wait_state(c: Collector, base: str, output: str, state: str, reason: str) -> Received:
    def match(m: Received) -> bool:
        if m.topic != f"{base}/output/{output}/state":
            return False
        body = m.json()
        return bool(body["state"] == state and body["reason"] == reason)

    return c.wait_for(match)[0]


def stamped(m: Received) -> float:
    """The agent's own time stamp of a state message."""
    return parse_iso_ts(m.json()["ts"])


def ready(c: Collector, base: str, outputs: tuple[str, ...] = ("pump", "heater")) -> None:
    for name in outputs:
        c.topic(f"{base}/output/{name}/state")


def test_every_plain_and_json_form(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    forms: list[tuple[str, str]] = [
        ("on", "on"),
        ("OFF", "off"),
        ('{"state": "toggle", "id": "t-1"}', "on"),
        ('{"state": " Toggle\\n", "id": "t-2"}', "off"),
        ("1", "on"),
        ("0", "off"),
        ("true", "on"),
        ("False", "off"),
        ('{"state": "on"}', "on"),
        (f'{{"state": "off", "ts": "{iso_ts(time.time())}"}}', "off"),
        ('{"state": "toggle", "id": 3}', "on"),
        ('{"state": "OFF", "id": 7}', "off"),
    ]
    with Collector(broker.port, f"{base}/#") as c:
        start_agent(tmp_path, broker.port, device_id, agents)
        ready(c, base)
        for i, (payload, expected) in enumerate(forms):
            before = len(c.on(f"{base}/reply"))
            commander.send(f"{base}/output/pump/set", payload)
            replies = c.wait_for(lambda m: m.topic == f"{base}/reply", count=before + 1)
            reply = replies[-1].json()
            assert reply["ok"] is True, (payload, reply)
            assert reply["output"] == "pump" and reply["state"] == expected, (i, payload, reply)
            assert states(c, base, "pump")[-1]["state"] == expected
        # A JSON id is echoed.
        commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "c-17"}')
        assert reply_to(c, base, "c-17")["state"] == "on"
    state = retained(broker.port, f"{base}/output/pump/state")
    assert state is not None and state.retain and state.json()["state"] == "on"
    assert state.json()["reason"] == "command"


def test_pulse_reverts_and_max_on_switches_off(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    outputs = """\
outputs:
  pump:
    driver: relay
    pin: 17
    max_on: 1s
  heater:
    driver: relay
    pin: 18
"""
    with Collector(broker.port, f"{base}/#") as c:
        start_agent(tmp_path, broker.port, device_id, agents, outputs=outputs)
        ready(c, base)
        commander.send(f"{base}/output/heater/set", '{"state": "on", "duration": 0.5, "id": "p"}')
        reply = reply_to(c, base, "p")
        assert reply["ok"] and reply["state"] == "on"
        until = parse_iso_ts(reply["until"])
        # Timed by the agent's own stamps (a busy machine can delay what the collector
        # sees): never early; late only by a loaded loop, not by a missed timer.
        on = stamped(wait_state(c, base, "heater", "on", "command"))
        off = stamped(wait_state(c, base, "heater", "off", "pulse_end"))
        assert off - on >= 0.5 - 0.002
        assert until - 0.002 <= off < until + 5

        commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "m"}')
        assert reply_to(c, base, "m")["ok"]
        on = stamped(wait_state(c, base, "pump", "on", "command"))
        off = stamped(wait_state(c, base, "pump", "off", "max_on"))
        assert 1.0 - 0.002 <= off - on < 1.0 + 5
        event = c.wait_for(lambda m: m.topic == f"{base}/event" and "max_on" in m.text)[0]
        assert event.json()["kind"] == "max_on"


def test_interlock_switches_the_other_off_first_under_racing_commands(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
) -> None:
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/#") as c:
        start_agent(tmp_path, broker.port, device_id, agents)
        ready(c, base)
        # Two controllers race each other, each switching its own output on and off. Each
        # round's two commands reach the broker before the next round's, in either order:
        # left unpaced, one controller's 40 can all arrive before the other's first (a
        # loaded machine), and then the outputs never overlap and no interlock is needed.
        racers = [Commander(broker.port), Commander(broker.port)]
        try:
            for i in range(40):
                sent = []
                for racer, name in zip(racers, ("pump", "heater"), strict=True):
                    toggle = json.dumps({"state": "toggle", "id": f"{name}-{i}"})
                    sent.append(
                        racer.client.publish(
                            f"{base}/output/{name}/set", "on" if i % 3 else toggle, qos=1
                        )
                    )
                for info in sent:
                    info.wait_for_publish(5)
            c.wait_for(lambda m: m.topic == f"{base}/reply", count=80, timeout=15)
        finally:
            for racer in racers:
                racer.close()
    # Replay the published states in order: never both on.
    level = {"pump": False, "heater": False}
    changes = 0
    for m in c.messages:
        if m.topic.endswith("/state") and "/output/" in m.topic:
            name = m.topic.split("/")[-2]
            level[name] = m.json()["state"] == "on"
            changes += 1
            assert not (level["pump"] and level["heater"]), "interlocked outputs both on"
    assert changes > 20
    reasons = {m.json()["reason"] for m in c.messages if m.topic.endswith("/state")}
    assert "interlock" in reasons


def test_mqtt5_reply_on_response_topic_with_correlation_data(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    response = f"controller/{device_id}/replies"
    with Collector(broker.port, f"{base}/#") as c, Collector(broker.port, response) as r:
        start_agent(tmp_path, broker.port, device_id, agents)
        ready(c, base)
        received: list[Any] = []
        r.client.on_message = lambda client, userdata, msg: received.append(msg)
        commander.send(
            f"{base}/output/pump/set", "on", response_topic=response, correlation=b"\x00req-1"
        )
        commander.send(
            f"{base}/output/nope/set", "on", response_topic=response, correlation=b"req-2"
        )
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received) == 2
        first, second = received
        assert first.properties.CorrelationData == b"\x00req-1"
        assert json.loads(first.payload)["ok"] is True
        assert second.properties.CorrelationData == b"req-2"
        assert json.loads(second.payload)["error"] == "unknown_output"
        # ... and both on <base>/reply too.
        c.wait_for(lambda m: m.topic == f"{base}/reply", count=2)


def test_mqtt311_agent_and_client_get_the_reply_on_the_reply_topic(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
) -> None:
    base = f"edge/{device_id}"
    v311 = MQTTProtocolVersion.MQTTv311
    with Collector(broker.port, f"{base}/#", protocol=v311) as c:
        start_agent(tmp_path, broker.port, device_id, agents, protocol="3.1.1")
        ready(c, base)
        commander = Commander(broker.port, v5=False)
        try:
            commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "old-client"}')
            reply = reply_to(c, base, "old-client")
        finally:
            commander.close()
    assert reply["ok"] is True and reply["state"] == "on"
    assert states(c, base, "pump")[-1]["state"] == "on"


def test_refused_commands_get_their_code_and_move_nothing(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    outputs = """\
outputs:
  pump:
    driver: relay
    pin: 17
    min_switch_interval: 1h
  heater:
    driver: relay
    pin: 18
"""
    old = iso_ts(time.time() - 120)
    cases: list[tuple[str, bytes, bool, str]] = [
        ("pump", f'{{"state": "on", "id": "s", "ts": "{old}"}}'.encode(), False, "stale"),
        ("pump", b'{"state": "on", "id": "r"}', True, "retained_command"),
        (
            "pump",
            b'{"state": "on", "id": "big", "pad": "' + b"x" * 5000 + b'"}',
            False,
            "bad_payload",
        ),
        ("pump", b"\xff\xfeon", False, "bad_payload"),
        ("pump", b'{"state": ["on"], "id": "shape"}', False, "bad_payload"),
        ("pump", b'["on"]', False, "bad_payload"),
        ("pump", b"", False, "bad_payload"),
        ("valve", b'{"state": "on", "id": "u"}', False, "unknown_output"),
    ]
    with Collector(broker.port, f"{base}/#", retain_as_published=True) as c:
        start_agent(tmp_path, broker.port, device_id, agents, outputs=outputs)
        ready(c, base)
        boot_states = len(c.on(f"{base}/output/pump/state"))
        for output, payload, retain, _ in cases:
            commander.send(f"{base}/output/{output}/set", payload, retain=retain)
        replies = c.wait_for(lambda m: m.topic == f"{base}/reply", count=len(cases))
        got = [(r.json()["output"], r.json()["error"]) for r in replies]
        assert got == [(output, code) for output, _, _, code in cases]
        assert all(r.json()["ok"] is False and r.json()["message"] for r in replies)
        assert [r.json()["id"] for r in replies][:2] == ["s", "r"]
        commander.send(f"{base}/output/pump/set", b"", retain=True)  # clear the retained one
        c.wait_for(lambda m: m.topic == f"{base}/reply", count=len(cases) + 1)
        # min_switch_interval counts from boot too: a compressor that was running before a
        # power blip must not restart at once.
        commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "early"}')
        limited = reply_to(c, base, "early")
        assert limited["ok"] is False and limited["error"] == "rate_limited"
        time.sleep(0.3)
    pump = states(c, base, "pump")
    assert len(pump) == boot_states and pump[-1]["state"] == "off"
    assert [s["state"] for s in states(c, base, "heater")] == ["off"]


def test_retained_command_present_at_subscription_is_refused(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    # Someone left a retained "on" behind: the agent must never act on it, at any connect.
    commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "ghost"}', retain=True)
    # A persistent session, so that the reply sent right after the restart is not missed.
    with Collector(broker.port, f"{base}/#", persistent_id=f"c-{device_id}") as c:
        agent = start_agent(tmp_path, broker.port, device_id, agents)
        reply = reply_to(c, base, "ghost")
        assert reply["error"] == "retained_command"
        broker.restart()
        c.wait_for(lambda m: m.topic == f"{base}/reply", count=2, timeout=15)
        c.wait_for(lambda m: m.topic == f"{base}/status" and m.text == "online", count=2)
        agent.stop()
    assert {s["state"] for s in states(c, base, "pump")} == {"off"}
    commander.send(f"{base}/output/pump/set", b"", retain=True)


def test_boot_state_is_applied_while_the_broker_is_unreachable(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    outputs = """\
outputs:
  pump:
    driver: relay
    pin: 17
    initial: "on"
    failsafe: null
  heater:
    driver: relay
    pin: 18
    active_high: false
"""
    broker.stop()
    started = time.time()
    agent = start_agent(tmp_path, broker.port, device_id, agents, outputs=outputs)
    deadline = time.monotonic() + 10
    while "output heater off at start" not in agent.log():
        assert time.monotonic() < deadline, agent.log()
        time.sleep(0.05)
    time.sleep(1)
    broker.start()
    with Collector(broker.port, f"{base}/output/+/state") as c:
        pump = c.topic(f"{base}/output/pump/state")[0].json()
        heater = c.topic(f"{base}/output/heater/state")[0].json()
    broker_up = time.time() - 0.5
    assert pump["state"] == "on" and pump["reason"] == "boot"
    assert heater["state"] == "off" and heater["reason"] == "boot"
    for body in (pump, heater):
        assert started - 1 < parse_iso_ts(body["ts"]) < broker_up


def test_restore_keeps_the_last_state_across_restarts_and_a_kill(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    outputs = """\
outputs:
  pump:
    driver: relay
    pin: 17
    initial: restore
  heater:
    driver: relay
    pin: 18
"""
    with Collector(broker.port, f"{base}/#") as c:
        first = start_agent(tmp_path, broker.port, device_id, agents, outputs=outputs)
        assert wait_state(c, base, "pump", "off", "restore")
        commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "a"}')
        assert reply_to(c, base, "a")["ok"]
        commander.send(f"{base}/output/heater/set", '{"state": "on", "id": "b"}')
        assert reply_to(c, base, "b")["ok"]
        assert first.stop() == 0
        # On a clean stop the restore output stays on; the other goes back to off.
        wait_state(c, base, "heater", "off", "shutdown")
        c.messages.clear()
        second = start_agent(tmp_path, broker.port, device_id, agents, outputs=outputs)
        wait_state(c, base, "pump", "on", "restore")
        commander.send(f"{base}/output/pump/set", '{"state": "off", "id": "c"}')
        assert reply_to(c, base, "c")["ok"]
        second.stop(kill=True)
        c.messages.clear()
        start_agent(tmp_path, broker.port, device_id, agents, outputs=outputs)
        wait_state(c, base, "pump", "off", "restore")


def test_sigterm_publishes_shutdown_states_then_offline(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    with Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(tmp_path, broker.port, device_id, agents)
        ready(c, base)
        commander.send(f"{base}/output/pump/set", '{"state": "on", "id": "x"}')
        assert reply_to(c, base, "x")["ok"]
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        off = wait_state(c, base, "pump", "off", "shutdown")
        offline = c.wait_for(lambda m: m.topic == f"{base}/status" and m.text == "offline")[0]
    assert c.messages.index(off) < c.messages.index(offline)


def test_failsafe_after_a_blackhole_is_reported_after_the_reconnect(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    outputs = """\
outputs:
  pump:
    driver: relay
    pin: 17
    failsafe: "off"
    failsafe_after: 1s
  heater:
    driver: relay
    pin: 18
    failsafe: null
"""
    with FaultProxy(broker.port) as proxy, Collector(broker.port, f"{base}/#") as c:
        agent = start_agent(tmp_path, proxy.port, device_id, agents, outputs=outputs)
        ready(c, base)
        for name in ("pump", "heater"):
            commander.send(f"{base}/output/{name}/set", f'{{"state": "on", "id": "{name}"}}')
            assert reply_to(c, base, name)["ok"]
        proxy.blackhole()
        deadline = time.monotonic() + 20
        while "failsafe: pump switched off" not in agent.log():
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.1)
        proxy.heal()
        pump = wait_state(c, base, "pump", "off", "failsafe")
        event = c.wait_for(lambda m: m.topic == f"{base}/event" and '"failsafe"' in m.text)[0]
        assert event.json()["output"] == "pump"
        heater = states(c, base, "heater")[-1]
    assert pump.json()["reason"] == "failsafe"
    assert heater["state"] == "on"  # failsafe: null keeps the state


def test_commands_queued_while_offline_are_judged_after_the_reconnect(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    base = f"edge/{device_id}"
    # Far longer than the agent's start on a busy machine: "fresh" stays fresh.
    commands = "commands:\n  max_age: 60s\n"
    with Collector(broker.port, f"{base}/#") as c:
        first = start_agent(tmp_path, broker.port, device_id, agents, commands=commands)
        ready(c, base)
        first.stop(kill=True)  # the broker keeps our session and queues commands for us
        c.wait_for(lambda m: m.topic == f"{base}/status" and m.text == "offline")
        # Fresh when it was sent, stale by the time the agent is back: judged by its age
        # when it is read.
        late = iso_ts(time.time() - 59)
        commander.send(
            f"{base}/output/pump/set", f'{{"state": "on", "id": "late", "ts": "{late}"}}'
        )
        time.sleep(1.5)
        fresh = iso_ts(time.time())
        commander.send(
            f"{base}/output/heater/set", f'{{"state": "on", "id": "fresh", "ts": "{fresh}"}}'
        )
        start_agent(tmp_path, broker.port, device_id, agents, commands=commands)
        assert reply_to(c, base, "late", timeout=30)["error"] == "stale"
        fresh_reply = reply_to(c, base, "fresh")
        assert fresh_reply["ok"] is True, fresh_reply
    assert states(c, base, "pump")[-1]["state"] == "off"
    assert states(c, base, "heater")[-1]["state"] == "on"


def test_input_edges_are_published_at_once_retained(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    inputs = """\
inputs:
  door:
    driver: gpio
    pin: 27
    simulation: {toggle_every: 300ms}
"""
    with Collector(broker.port, f"{base}/input/#", retain_as_published=True) as c:
        agent = start_agent(tmp_path, broker.port, device_id, agents, outputs=inputs)
        edges = c.topic(f"{base}/input/door", count=5)
        agent.stop()
    states = [m.json()["state"] for m in edges]
    # The boot state, then one message per edge: they alternate.
    assert all(a != b for a, b in itertools.pairwise(states)), states
    assert all(m.qos == 1 and m.retain for m in edges)
    stamps = [parse_iso_ts(m.json()["ts"]) for m in edges]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    last = retained(broker.port, f"{base}/input/door")
    assert last is not None and last.json()["state"] in ("on", "off")
