"""The agent against a real Home Assistant Core (``make test-ha``; minutes, not in ``make test``).

One Home Assistant, one mosquitto and one real ``edge-agent`` on simulated hardware for the
whole module; the tests run in file order and each leaves the rig running. The agent talks
to the broker through a :class:`FaultProxy`, Home Assistant directly, so an outage of the
agent's link leaves Home Assistant connected and subscribed: it receives the replay.

What is checked comes from Home Assistant's own APIs (REST states and history, websocket
registries and ``state_changed`` events), never from our payloads alone.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.demo.broker import PrivateBroker
from tests.ha.core import HomeAssistantCore
from tests.ha.websocket import HomeAssistantSocket
from tests.support.configs import write_config
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import AgentProcess, Collector, Received, retained

pytestmark = [pytest.mark.ha, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]

DEVICE = "ha-e2e"
SENSORS = """\
  air:
    driver: bme280
    interval: 200ms
    simulation:
      temperature: [-40, 80]
      humidity: [5, 95]
      pressure: [900, 1100]
"""
EXTRA = """\
outputs:
  pump: {driver: relay, pin: 17}
inputs:
  door:
    driver: gpio
    pin: 27
    device_class: door
homeassistant: {discovery: true}
health: {publish_interval: 2s}
"""
#: unique_id -> (entity domain, unit, device_class, state_class, display precision)
ENTITIES: dict[str, tuple[str, str | None, str | None, str | None, int | None]] = {
    f"{DEVICE}_air_temperature": ("sensor", "°C", "temperature", "measurement", 2),
    f"{DEVICE}_air_humidity": ("sensor", "%", "humidity", "measurement", 3),
    f"{DEVICE}_air_pressure": ("sensor", "hPa", "atmospheric_pressure", "measurement", 4),
    f"{DEVICE}_output_pump": ("switch", None, None, None, None),
    f"{DEVICE}_input_door": ("binary_sensor", None, "door", None, None),
    f"{DEVICE}_buffer_depth": ("sensor", "readings", None, "measurement", None),
    f"{DEVICE}_buffer_oldest_age": ("sensor", "s", "duration", "measurement", None),
    f"{DEVICE}_last_error": ("sensor", None, None, None, None),
}
QUANTITIES = ("temperature", "humidity", "pressure")
NOT_A_VALUE = {"unavailable", "unknown"}


@dataclass
class Rig:
    broker: PrivateBroker
    proxy: FaultProxy
    ha: HomeAssistantCore
    config: Path
    collector: Collector
    agent: AgentProcess | None = None
    entity_ids: dict[str, str] = field(default_factory=dict)  # unique_id -> entity_id

    def start_agent(self) -> AgentProcess:
        self.agent = AgentProcess(self.config).start()
        return self.agent

    def sensor_entity(self, quantity: str) -> str:
        return self.entity_ids[f"{DEVICE}_air_{quantity}"]

    def numeric_state(self, entity_id: str) -> float | None:
        state = self.ha.state(entity_id)
        if state is None or state["state"] in NOT_A_VALUE:
            return None
        return float(state["state"])


@pytest.fixture(scope="module")
def rig(ha_venv: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("ha")
    broker = PrivateBroker(workdir=root / "broker").start()
    proxy = FaultProxy(broker.port).start()
    ha = HomeAssistantCore(root / "ha-config")
    collector: Collector | None = None
    rig: Rig | None = None
    try:
        ha.start()
        ha.add_mqtt(broker.port)
        collector = Collector(
            broker.port, f"edge/{DEVICE}/#", persistent_id="ha-test", retain_as_published=True
        )
        (root / "agent").mkdir()
        config = write_config(
            root / "agent" / "config.yaml",
            port=proxy.port,
            device_id=DEVICE,
            sensors=SENSORS,
            extra=EXTRA,
            keepalive=5,
        )
        rig = Rig(broker=broker, proxy=proxy, ha=ha, config=config, collector=collector)
        rig.start_agent()

        def found() -> dict[str, str] | None:
            entries = {e["unique_id"]: e for e in registry(ha, "entity") if e["platform"] == "mqtt"}
            if not set(ENTITIES) <= set(entries):
                return None
            return {uid: entries[uid]["entity_id"] for uid in ENTITIES}

        rig.entity_ids = ha.wait_for(found, timeout=60, what="every entity in the registry")
        yield rig
    finally:
        if rig is not None and rig.agent is not None:
            rig.agent.stop(kill=True)
        if collector is not None:
            collector.close()
        ha.stop()
        proxy.stop()
        broker.stop()


def registry(ha: HomeAssistantCore, kind: str) -> list[dict[str, Any]]:
    with ha.socket() as ws:
        result: list[dict[str, Any]] = ws.call(f"config/{kind}_registry/list")
    return result


#: What Home Assistant rightly logs when its broker goes away.
BROKER_GONE = r"Error returned from MQTT server: The connection was lost|Disconnected from MQTT"


def mqtt_log_problems(ha: HomeAssistantCore, allow: str | None = None) -> list[str]:
    """WARNING and ERROR lines of Home Assistant's log about MQTT or templates."""
    return [
        line
        for line in ha.log().splitlines()
        if re.search(r" (WARNING|ERROR|CRITICAL) ", line)
        and re.search(r"mqtt|template|edge", line, re.IGNORECASE)
        and not (allow and re.search(allow, line))
    ]


def readings(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"edge/{DEVICE}/sensor/air"]


def test_every_entity_and_the_device(rig: Rig) -> None:
    for uid, (domain, unit, device_class, state_class, precision) in ENTITIES.items():
        entity_id = rig.entity_ids[uid]
        assert entity_id.startswith(f"{domain}."), entity_id
        state = rig.ha.wait_for(
            lambda e=entity_id: (s := rig.ha.state(e)) and s["state"] not in NOT_A_VALUE and s,
            timeout=30,
            what=f"a state of {entity_id}",
        )
        attributes = state["attributes"]
        assert attributes.get("unit_of_measurement") == unit, (entity_id, attributes)
        assert attributes.get("device_class") == device_class, (entity_id, attributes)
        assert attributes.get("state_class") == state_class, (entity_id, attributes)
        with rig.ha.socket() as ws:
            entry = ws.call("config/entity_registry/get", entity_id=entity_id)
        if precision is not None:
            assert entry["options"]["sensor"]["suggested_display_precision"] == precision
        if uid.endswith(("buffer_depth", "buffer_oldest_age", "last_error")):
            assert entry["entity_category"] == "diagnostic"
    door = rig.ha.state(rig.entity_ids[f"{DEVICE}_input_door"])
    assert door is not None and door["state"] in {"on", "off"}
    devices = [
        d
        for d in registry(rig.ha, "device")
        if ["mqtt", f"edge_agent_{DEVICE}"] in d["identifiers"]
    ]
    assert len(devices) == 1
    device = devices[0]
    assert (device["name"], device["manufacturer"]) == (DEVICE, "pi-edge-agent")
    assert device["model"] and device["sw_version"]
    entries = [e for e in registry(rig.ha, "entity") if e["unique_id"] in ENTITIES]
    assert {e["device_id"] for e in entries} == {device["id"]}
    assert mqtt_log_problems(rig.ha) == []


def test_the_switch_round_trip(rig: Rig) -> None:
    pump = rig.entity_ids[f"{DEVICE}_output_pump"]
    for service, expected in (("turn_on", "on"), ("turn_off", "off"), ("toggle", "on")):
        started = time.monotonic()
        rig.ha.call_service("switch", service, entity_id=pump)
        rig.ha.wait_for(
            lambda x=expected: (s := rig.ha.state(pump)) and s["state"] == x,
            timeout=10,
            what=f"{pump} {expected}",
        )
        print(f"switch.{service}: {pump} {expected} after {time.monotonic() - started:.3f}s")
    commanded = rig.collector.wait_for(
        lambda m: m.topic == f"edge/{DEVICE}/output/pump/state" and b'"command"' in m.payload,
        count=3,
    )
    assert [m.json()["state"] for m in commanded] == ["on", "off", "on"]
    assert all(m.retain for m in commanded)
    rig.ha.call_service("switch", "turn_off", entity_id=pump)


def assert_no_replayed_value(
    rig: Rig, mark: int, since: datetime, events: list[tuple[int, Any, float]]
) -> dict[str, int]:
    """Home Assistant's states of each quantity since ``since`` - the live
    ``state_changed`` events and the recorded history - are, in order, values of live
    readings sent after ``mark`` (an index into the collector's messages), never a
    replayed one. Before them may come only the value HA had before the outage: HA shows
    it again when the device's availability returns, until the first live reading.

    Returns how many replayed readings the broker carried, per quantity.
    """
    replayed_counts: dict[str, int] = {}
    before = readings(rig.collector.messages[:mark])
    after = readings(rig.collector.messages[mark:])
    history = rig.ha.history([rig.sensor_entity(q) for q in QUANTITIES], since.isoformat())
    for quantity in QUANTITIES:
        entity_id = rig.sensor_entity(quantity)
        live = [r["values"][quantity] for r in after if "replayed" not in r]
        replayed = [r["values"][quantity] for r in after if "replayed" in r]
        live_before = [r["values"][quantity] for r in before if "replayed" not in r]
        # A reading sent just before the cut may reach the broker and be replayed too (its
        # PUBACK was lost): it is a live value, not one HA never had.
        only_replayed = set(replayed) - set(live) - set(live_before)
        replayed_counts[quantity] = len(replayed)
        last_before = live_before[-5:]
        seen = [
            float(e["data"]["new_state"]["state"])
            for _, e, _ in events
            if e["data"]["entity_id"] == entity_id
            and e["data"]["new_state"] is not None
            and e["data"]["new_state"]["state"] not in NOT_A_VALUE
        ]
        recorded = [
            float(row["state"])
            for row in history.get(entity_id, [])
            if row["state"] not in NOT_A_VALUE
        ]
        for name, states in (("state_changed events", seen), ("history", recorded)):
            assert not set(states) & only_replayed, (
                f"{entity_id}: {name} show replayed values {sorted(set(states) & only_replayed)}"
            )
            rest = list(states)
            while rest and rest[0] in last_before:
                rest.pop(0)  # HA's own last value, shown again when the agent is back
            assert len(states) - len(rest) <= 3, f"{entity_id}: {name} {states}"
            assert rest, f"{entity_id}: {name}: no live value after the outage: {states}"
            assert is_subsequence(rest, live), (
                f"{entity_id}: {name} {rest} are not live readings in order {live}"
            )
    return replayed_counts


def old_value_shown(rig: Rig, events: list[tuple[int, Any, float]]) -> float:
    """How long HA showed its pre-outage temperature again when the agent came back, in
    seconds of HA's own event times (0 when it did not)."""
    entity_id = rig.sensor_entity("temperature")
    changes = [
        (e["data"]["new_state"]["state"], datetime.fromisoformat(e["time_fired"]))
        for _, e, _ in events
        if e["data"]["entity_id"] == entity_id and e["data"]["new_state"] is not None
    ]
    for i in range(1, len(changes) - 2):
        (old, _), (gone, _), (back, at), (_, next_at) = changes[i - 1 : i + 3]
        if gone == "unavailable" and back == old:
            return (next_at - at).total_seconds()
    return 0.0


def is_subsequence(states: list[float], live: list[float]) -> bool:
    """``states`` appear in ``live`` in the same order (HA drops repeats of a value)."""
    it = iter(live)
    return all(any(value == candidate for candidate in it) for value in states)


def watch(rig: Rig) -> HomeAssistantSocket:
    ws = rig.ha.socket()
    ws.call("subscribe_events", event_type="state_changed")
    return ws


def test_an_outage_of_the_agents_link_leaves_no_replayed_value(rig: Rig) -> None:
    temperature = rig.sensor_entity("temperature")
    ws = watch(rig)
    try:
        rig.ha.wait_for(lambda: rig.numeric_state(temperature) is not None, what="a live value")
        mark = len(rig.collector.messages)
        since = datetime.now(UTC)
        rig.proxy.refuse()
        rig.proxy.cut()  # the agent's Wi-Fi drops; Home Assistant stays connected
        rig.ha.wait_for(
            lambda: (s := rig.ha.state(temperature)) and s["state"] == "unavailable",
            timeout=10,
            what="unavailable on the Last Will",
        )
        ws.collect_events(6.0)  # ~30 readings per quantity go to the buffer
        healed_at = time.time()
        rig.proxy.heal()
        rig.collector.wait_for(
            lambda m: m.topic.endswith("/sensor/air") and b'"replayed":true' in m.payload,
            count=20,
            timeout=30,
        )
        rig.collector.wait_for(  # replay and live readings interleave; HA takes both in
            lambda m: (
                m.at > healed_at
                and m.topic.endswith("/sensor/air")
                and b"replayed" not in m.payload
            ),
            count=15,
            timeout=20,
        )
        ws.collect_events(1.0)
        counts = assert_no_replayed_value(rig, mark, since, ws.events)
        print(f"link cut 6 s: replayed readings per quantity {counts}; none became a state")
        print(f"pre-outage value shown again for {old_value_shown(rig, ws.events):.3f}s")
        assert min(counts.values()) >= 20
        recent = [r["values"]["temperature"] for r in readings(rig.collector.messages)[-15:]]
        assert rig.numeric_state(temperature) in recent
        ignored = rig.ha.log().count("Ignore empty state from")
        print(f"Home Assistant log: {ignored} 'Ignore empty state' (debug) lines")
        assert ignored >= sum(counts.values())
    finally:
        ws.close()
    assert mqtt_log_problems(rig.ha) == []


def test_a_broker_restart_leaves_no_replayed_value(rig: Rig) -> None:
    temperature = rig.sensor_entity("temperature")
    ws = watch(rig)
    try:
        rig.ha.wait_for(lambda: rig.numeric_state(temperature) is not None, what="a live value")
        mark = len(rig.collector.messages)
        since = datetime.now(UTC)
        rig.broker.stop()
        time.sleep(5)  # everyone is disconnected; the agent buffers
        rig.broker.start()
        rig.collector.wait_for(
            lambda m: m.topic.endswith("/sensor/air") and b'"replayed":true' in m.payload,
            count=len([m for m in rig.collector.messages[:mark] if b"replayed" in m.payload]) + 10,
            timeout=40,
        )
        # Home Assistant is back (its client reconnects within seconds) and live again.
        rig.ha.wait_for(
            lambda: rig.numeric_state(temperature) is not None, timeout=60, what="live again"
        )
        ws.collect_events(3.0)
        counts = assert_no_replayed_value(rig, mark, since, ws.events)
        print(f"broker restart 5 s: replayed readings per quantity {counts}; none became a state")
        print(f"pre-outage value shown again for {old_value_shown(rig, ws.events):.3f}s")
    finally:
        ws.close()
    assert mqtt_log_problems(rig.ha, allow=BROKER_GONE) == []


def test_unavailable_when_the_agent_is_killed_and_back_when_it_returns(rig: Rig) -> None:
    # Not a broker restart: the agent's link is cut and the broker publishes its Last Will.
    assert rig.agent is not None
    watched = [rig.entity_ids[uid] for uid in ENTITIES]
    rig.agent.signal(signal.SIGKILL)
    rig.agent.wait()
    for entity_id in watched:
        rig.ha.wait_for(
            lambda e=entity_id: (s := rig.ha.state(e)) and s["state"] == "unavailable",
            timeout=10,
            what=f"{entity_id} unavailable",
        )
    rig.agent.stop()
    rig.start_agent()
    for entity_id in watched:
        rig.ha.wait_for(
            lambda e=entity_id: (s := rig.ha.state(e)) and s["state"] not in NOT_A_VALUE,
            timeout=30,
            what=f"{entity_id} back",
        )


def test_home_assistant_restart(rig: Rig) -> None:
    temperature = rig.sensor_entity("temperature")
    discovery = Collector(
        rig.broker.port,
        f"homeassistant/device/edge_agent_{DEVICE}/config",
        retain_as_published=True,
    )
    rig.ha.restart()
    # The agent announces the device again on HA's birth message; entities and live values
    # come back without touching the agent.
    values = [rig.ha.wait_for(lambda: rig.numeric_state(temperature), timeout=60, what="a value")]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(set(values)) < 3:
        values.append(rig.numeric_state(temperature))
        time.sleep(0.3)
    assert len(set(values)) >= 3, f"the value does not move after the restart: {values}"
    pump = rig.entity_ids[f"{DEVICE}_output_pump"]
    rig.ha.call_service("switch", "turn_on", entity_id=pump)
    rig.ha.wait_for(lambda: (s := rig.ha.state(pump)) and s["state"] == "on", what="pump on")
    # The agent saw HA's birth message and announced the device again: a second message
    # after the retained copy every new subscriber gets.
    discovery.wait_for(lambda m: True, count=2, timeout=5)
    discovery.close()
    assert mqtt_log_problems(rig.ha, allow=BROKER_GONE) == []


def mqtt_entities_of_the_device(rig: Rig) -> dict[str, str]:
    """unique_id -> entity_id of every MQTT entity HA has for our device."""
    device_ids = {
        d["id"]
        for d in registry(rig.ha, "device")
        if ["mqtt", f"edge_agent_{DEVICE}"] in d["identifiers"]
    }
    return {
        e["unique_id"]: e["entity_id"]
        for e in registry(rig.ha, "entity")
        if e["platform"] == "mqtt" and e["device_id"] in device_ids
    }


def assert_same_entities_and_live(rig: Rig) -> None:
    """HA has exactly our entities, with the entity ids they had, and fresh values."""
    assert rig.ha.wait_for(
        lambda: mqtt_entities_of_the_device(rig) == rig.entity_ids,
        timeout=20,
        what="the same entities",
    )
    for uid, entity_id in rig.entity_ids.items():
        rig.ha.wait_for(
            lambda e=entity_id: (s := rig.ha.state(e)) and s["state"] not in NOT_A_VALUE,
            timeout=20,
            what=f"{uid} has a state",
        )
    temperature = rig.sensor_entity("temperature")
    first = rig.numeric_state(temperature)
    rig.ha.wait_for(
        lambda: rig.numeric_state(temperature) not in (None, first),
        timeout=10,
        what="a new temperature",
    )


def test_switching_the_discovery_mode_keeps_every_entity(rig: Rig) -> None:
    assert rig.agent is not None
    device_topic = f"homeassistant/device/edge_agent_{DEVICE}/config"
    single = f"homeassistant/sensor/edge_agent_{DEVICE}/air_temperature/config"
    text = rig.config.read_text()
    # By reload: device -> components.
    rig.config.write_text(
        text.replace("discovery: true", "discovery: true, discovery_mode: components")
    )
    rig.agent.signal(signal.SIGHUP)
    rig.ha.wait_for(
        lambda: retained(rig.broker.port, device_topic, timeout=0.5) is None,
        timeout=20,
        what="the device message cleared",
    )
    assert retained(rig.broker.port, single) is not None
    assert_same_entities_and_live(rig)
    after_reload = len(mqtt_log_problems(rig.ha, allow=BROKER_GONE))
    # By restart: components -> device.
    rig.agent.stop()
    rig.config.write_text(text)
    rig.start_agent()
    rig.ha.wait_for(
        lambda: retained(rig.broker.port, single, timeout=0.5) is None,
        timeout=20,
        what="the single-component messages cleared",
    )
    assert retained(rig.broker.port, device_topic) is not None
    assert_same_entities_and_live(rig)
    problems = mqtt_log_problems(rig.ha, allow=BROKER_GONE)
    print(
        f"HA warnings: {after_reload} after the switch by reload, "
        f"{len(problems) - after_reload} after the switch by restart"
    )
    # What HA 2025.4.4 says during a migration: a config on the new topic before the old
    # one was migrated (after a restart the old topics are known only once their retained
    # messages are read back), or the old device topic cleared after HA unloaded it.
    migration = r"Received a conflicting MQTT discovery|No device components to cleanup"
    assert mqtt_log_problems(rig.ha, allow=f"{BROKER_GONE}|{migration}") == []
