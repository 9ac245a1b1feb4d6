"""Home Assistant discovery payloads, field by field, and the announcer's removals."""

from __future__ import annotations

import json
from pathlib import Path

from agent import __version__
from agent.config.load import parse_config
from agent.config.model import Config
from agent.homeassistant.announcer import Announcer
from agent.homeassistant.discovery import (
    component_payloads,
    device_payload,
    discovery_topic,
    expire_after,
)
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage

CONFIG = """\
device_id: gh1
sensors:
  air: {driver: bme280, interval: 10s}
  pi: {driver: system, interval: 60s}
outputs:
  pump: {driver: relay, pin: 17}
inputs:
  door: {driver: gpio, pin: 27}
homeassistant: {discovery: true}
"""


def config(text: str = CONFIG) -> Config:
    return parse_config(text, file="c.yaml", base_dir=Path("."), environ={})


def payload(cfg: Config | None = None) -> dict[str, object]:
    cfg = cfg or config()
    return device_payload(cfg, Topics("edge/gh1"), model="Raspberry Pi 4 Model B Rev 1.4")


def test_device_origin_and_availability() -> None:
    body = payload()
    assert body["dev"] == {
        "ids": ["edge_agent_gh1"],
        "name": "gh1",
        "mf": "pi-edge-agent",
        "mdl": "Raspberry Pi 4 Model B Rev 1.4",
        "sw": __version__,
    }
    assert body["o"] == {"name": "pi-edge-agent", "sw": __version__}
    assert body["availability_topic"] == "edge/gh1/status"
    assert (body["payload_available"], body["payload_not_available"]) == ("online", "offline")
    assert discovery_topic("homeassistant", "gh1") == "homeassistant/device/edge_agent_gh1/config"


def test_a_sensor_entity_per_quantity() -> None:
    cmps = payload()["cmps"]
    assert isinstance(cmps, dict)
    temperature = cmps["air_temperature"]
    assert temperature == {
        "p": "sensor",
        "name": "air temperature",
        "unique_id": "gh1_air_temperature",
        "state_topic": "edge/gh1/sensor/air",
        "value_template": (
            "{{ '' if value_json.replayed is defined or 'temperature' not in value_json['values']"
            " else value_json['values']['temperature'] }}"
        ),
        "state_class": "measurement",
        "suggested_display_precision": 2,
        "expire_after": 60,
        "unit_of_measurement": "°C",
        "device_class": "temperature",
    }
    # %RH is spelled % in Home Assistant.
    assert cmps["air_humidity"]["unit_of_measurement"] == "%"
    assert cmps["air_humidity"]["device_class"] == "humidity"
    assert cmps["air_pressure"]["unit_of_measurement"] == "hPa"
    assert cmps["air_pressure"]["device_class"] == "atmospheric_pressure"
    # Shown with the decimals of the chip's resolution (0.008 %RH, 0.0018 hPa).
    assert cmps["air_humidity"]["suggested_display_precision"] == 3
    assert cmps["air_pressure"]["suggested_display_precision"] == 4
    # The Pi's own health is diagnostic; its interval sets the expiry.
    soc = cmps["pi_soc_temperature"]
    assert soc["entity_category"] == "diagnostic"
    assert soc["expire_after"] == expire_after(60) == 185
    assert cmps["pi_uptime"]["suggested_display_precision"] == 0
    assert "entity_category" not in temperature


def test_derived_quantities_are_entities_and_expiry_follows_the_heartbeat() -> None:
    cfg = config(
        "device_id: gh1\n"
        "sensors:\n"
        "  air:\n"
        "    driver: bme280\n"
        "    interval: 10s\n"
        "    derived: [vpd, dew_point]\n"
        "    publish:\n"
        "      on_change: {temperature: 0.1, humidity: 0.5, pressure: 0.5}\n"
        "      heartbeat: 5m\n"
        "  shed:\n"
        "    driver: bme280\n"
        "    publish: {on_change: {temperature: 0.1, humidity: 0.5, pressure: 0.5}}\n"
    )
    cmps = payload(cfg)["cmps"]
    assert isinstance(cmps, dict)
    vpd = cmps["air_vpd"]
    assert (vpd["unit_of_measurement"], vpd["device_class"]) == ("kPa", "pressure")
    assert cmps["air_dew_point"]["device_class"] == "temperature"
    assert "'vpd' not in value_json['values']" in vpd["value_template"]
    # a heartbeat of 300 s: a reading at most 310 s apart, plus two intervals and 5 s
    assert vpd["expire_after"] == cmps["air_temperature"]["expire_after"] == 335
    # on_change without a heartbeat may hold every value back for ever: no expiry
    assert "expire_after" not in cmps["shed_temperature"]


def test_a_switch_per_output_and_a_binary_sensor_per_input() -> None:
    cmps = payload()["cmps"]
    assert isinstance(cmps, dict)
    assert cmps["output_pump"] == {
        "p": "switch",
        "name": "pump",
        "unique_id": "gh1_output_pump",
        "command_topic": "edge/gh1/output/pump/set",
        "payload_on": "on",
        "payload_off": "off",
        "state_topic": "edge/gh1/output/pump/state",
        "value_template": "{{ value_json.state }}",
        "state_on": "on",
        "state_off": "off",
        "optimistic": False,
        "retain": False,
    }
    assert cmps["input_door"] == {
        "p": "binary_sensor",
        "name": "door",
        "unique_id": "gh1_input_door",
        "state_topic": "edge/gh1/input/door",
        "value_template": "{{ value_json.state }}",
        "payload_on": "on",
        "payload_off": "off",
    }


def test_an_input_with_a_device_class() -> None:
    cfg = config(
        CONFIG.replace("{driver: gpio, pin: 27}", "{driver: gpio, pin: 27, device_class: door}")
    )
    cmps = payload(cfg)["cmps"]
    assert isinstance(cmps, dict)
    assert cmps["input_door"]["device_class"] == "door"


def test_diagnostic_entities_from_the_health_topic() -> None:
    cmps = payload()["cmps"]
    assert isinstance(cmps, dict)
    for cid in ("buffer_depth", "buffer_oldest_age", "last_error"):
        entity = cmps[cid]
        assert entity["state_topic"] == "edge/gh1/health"
        assert entity["entity_category"] == "diagnostic"
        assert entity["unique_id"] == f"gh1_{cid}"
    assert cmps["buffer_depth"]["value_template"] == "{{ value_json.queue_depth }}"


def test_unique_ids_are_unique_and_stable() -> None:
    first, second = payload(), payload()
    assert first == second
    cmps = first["cmps"]
    assert isinstance(cmps, dict)
    ids = [c["unique_id"] for c in cmps.values()]
    assert len(ids) == len(set(ids)) == 3 + 5 + 1 + 1 + 3


class Published:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def last(self) -> dict[str, object]:
        body = json.loads(self.messages[-1][1])
        assert isinstance(body, dict)
        return body


def announcer(cfg: Config, published: Published) -> Announcer:
    return Announcer(config=cfg, topics=Topics("edge/gh1"), publish=published, model="test")


def test_reload_removes_entities_with_only_their_platform() -> None:
    published = Published()
    a = announcer(config(), published)
    a.announce()
    smaller = config(
        CONFIG.replace("  pump: {driver: relay, pin: 17}\n", "").replace("outputs:\n", "")
    )
    a.reconfigure(smaller, Topics("edge/gh1"))
    cmps = published.last()["cmps"]
    assert isinstance(cmps, dict)
    assert cmps["output_pump"] == {"p": "switch"}
    assert "air_temperature" in cmps
    # Once removed, the entity is left out of later announcements.
    a.announce()
    later = published.last()["cmps"]
    assert isinstance(later, dict) and "output_pump" not in later


def test_entities_of_an_earlier_run_are_removed_when_its_retained_config_is_read_back() -> None:
    published = Published()
    old = announcer(config(), published)
    old.announce()
    retained = published.messages[-1][1]
    smaller = config(CONFIG.replace("inputs:\n  door: {driver: gpio, pin: 27}\n", ""))
    new_published = Published()
    new = announcer(smaller, new_published)
    new.announce()
    assert new.handle(IncomingMessage(new.topic, retained, 1, True, None))
    cmps = new_published.last()["cmps"]
    assert isinstance(cmps, dict) and cmps["input_door"] == {"p": "binary_sensor"}
    # Our own echo changes nothing more.
    count = len(new_published.messages)
    new.handle(IncomingMessage(new.topic, new_published.messages[-1][1], 1, True, None))
    assert len(new_published.messages) == count


def test_home_assistant_birth_triggers_a_new_announcement() -> None:
    published = Published()
    a = announcer(config(), published)
    assert a.handle(IncomingMessage("homeassistant/status", b"online", 1, False, None))
    assert a.handle(IncomingMessage("homeassistant/status", b"offline", 1, False, None))
    assert len(published.messages) == 1
    assert not a.handle(IncomingMessage("edge/gh1/output/pump/set", b"on", 1, False, None))


def test_discovery_turned_off_removes_the_device() -> None:
    published = Published()
    a = announcer(config(), published)
    a.announce()
    off = config(CONFIG.replace("discovery: true", "discovery: false"))
    a.reconfigure(off, Topics("edge/gh1"))
    assert published.messages[-1] == ("homeassistant/device/edge_agent_gh1/config", b"")
    # ... and after a restart with discovery off, a retained config left behind goes too.
    restarted = Published()
    b = announcer(off, restarted)
    b.announce()
    assert restarted.messages == []
    b.handle(IncomingMessage(b.topic, published.messages[0][1], 1, True, None))
    assert restarted.messages == [("homeassistant/device/edge_agent_gh1/config", b"")]


COMPONENTS = CONFIG.replace("discovery: true", "discovery: true, discovery_mode: components")
NODE = "edge_agent_gh1"


def test_components_mode_one_message_per_entity_field_by_field() -> None:
    cfg = config(COMPONENTS)
    payloads = component_payloads(cfg, Topics("edge/gh1"), model="Raspberry Pi 4 Model B Rev 1.4")
    device = payload(config())
    cmps = device["cmps"]
    assert isinstance(cmps, dict)
    # One topic per entity, on <prefix>/<platform>/<node>/<component id>/config.
    assert set(payloads) == {
        f"homeassistant/{c['p']}/{NODE}/{cid}/config" for cid, c in cmps.items()
    }
    temperature = payloads[f"homeassistant/sensor/{NODE}/air_temperature/config"]
    assert temperature == {
        "name": "air temperature",
        "unique_id": "gh1_air_temperature",
        "state_topic": "edge/gh1/sensor/air",
        "value_template": (
            "{{ '' if value_json.replayed is defined or 'temperature' not in value_json['values']"
            " else value_json['values']['temperature'] }}"
        ),
        "state_class": "measurement",
        "suggested_display_precision": 2,
        "expire_after": 60,
        "unit_of_measurement": "°C",
        "device_class": "temperature",
        "dev": device["dev"],
        "o": device["o"],
        "availability_topic": "edge/gh1/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }
    pump = payloads[f"homeassistant/switch/{NODE}/output_pump/config"]
    assert pump["command_topic"] == "edge/gh1/output/pump/set"
    assert "p" not in pump
    # Every entity carries exactly its device-form config plus the shared keys.
    for cid, entity in cmps.items():
        single = payloads[f"homeassistant/{entity['p']}/{NODE}/{cid}/config"]
        shared = {k: v for k, v in device.items() if k != "cmps"}
        assert single == {**{k: v for k, v in entity.items() if k != "p"}, **shared}


def test_components_mode_announces_each_entity_and_removes_stale_ones() -> None:
    published = Published()
    a = announcer(config(COMPONENTS), published)
    a.announce()
    topics = [t for t, _ in published.messages]
    assert len(topics) == len(set(topics)) == 13
    assert all(t.startswith("homeassistant/") and t.endswith("/config") for t in topics)
    assert discovery_topic("homeassistant", "gh1") not in topics
    smaller = config(COMPONENTS.replace("inputs:\n  door: {driver: gpio, pin: 27}\n", ""))
    a.reconfigure(smaller, Topics("edge/gh1"))
    assert (f"homeassistant/binary_sensor/{NODE}/input_door/config", b"") in published.messages
    # A stale entity announced by an earlier run is found in its retained message.
    b_published = Published()
    b = announcer(smaller, b_published)
    b.announce()
    door_topic = f"homeassistant/binary_sensor/{NODE}/input_door/config"
    retained = next(p for t, p in published.messages if t == door_topic and p)
    assert b.handle(IncomingMessage(door_topic, retained, 1, True, None))
    assert b_published.messages[-1] == (door_topic, b"")


MIGRATE_BODY = b'{"migrate_discovery":true}'


def test_switching_device_to_components_migrates_then_clears_the_device_message() -> None:
    published = Published()
    a = announcer(config(), published)
    a.announce()
    device_topic = discovery_topic("homeassistant", "gh1")
    start = len(published.messages)
    a.reconfigure(config(COMPONENTS), Topics("edge/gh1"))
    sent = published.messages[start:]
    assert sent[0] == (device_topic, MIGRATE_BODY)
    assert sent[1] == (device_topic, b"")
    assert {t for t, _ in sent[2:]} == set(
        component_payloads(config(COMPONENTS), Topics("edge/gh1"), model="test")
    )
    # Only once: the next announcement has no migration.
    start = len(published.messages)
    a.announce()
    assert all(t != device_topic for t, _ in published.messages[start:])


def test_switching_components_to_device_migrates_every_entity_message() -> None:
    published = Published()
    a = announcer(config(COMPONENTS), published)
    a.announce()
    singles = [t for t, _ in published.messages]
    start = len(published.messages)
    a.reconfigure(config(), Topics("edge/gh1"))
    sent = published.messages[start:]
    for i, topic in enumerate(sorted(singles)):
        assert sent[2 * i : 2 * i + 2] == [(topic, MIGRATE_BODY), (topic, b"")]
    assert sent[-1][0] == discovery_topic("homeassistant", "gh1")
    assert len(sent) == 2 * len(singles) + 1


def test_a_restart_in_the_other_mode_migrates_what_the_retained_messages_show() -> None:
    # An earlier run announced one message per entity; this one runs in device mode.
    old = Published()
    announcer(config(COMPONENTS), old).announce()
    new_published = Published()
    new = announcer(config(), new_published)
    new.announce()
    topic, body = old.messages[0]
    assert new.handle(IncomingMessage(topic, body, 1, True, None))
    # One migration covers every entity's topic, each migrated before it is cleared, and
    # the device message comes last.
    sent = new_published.messages[1:]
    singles = sorted(t for t, _ in old.messages)
    assert sent[:-1] == [m for t in singles for m in ((t, MIGRATE_BODY), (t, b""))]
    assert sent[-1][0] == discovery_topic("homeassistant", "gh1")
    # The other retained messages, still on their way, start nothing more.
    count = len(new_published.messages)
    for t, p in old.messages[1:]:
        new.handle(IncomingMessage(t, p, 1, True, None))
    assert len(new_published.messages) == count
    # ... and the reverse: a retained device message under components mode.
    device_run = Published()
    announcer(config(), device_run).announce()
    comp_published = Published()
    comp = announcer(config(COMPONENTS), comp_published)
    comp.announce()
    device_topic = discovery_topic("homeassistant", "gh1")
    assert comp.handle(IncomingMessage(device_topic, device_run.messages[0][1], 1, True, None))
    count = len(comp_published.messages)
    assert comp_published.messages[13:15] == [(device_topic, MIGRATE_BODY), (device_topic, b"")]
    # Echoes of our own messages start nothing new.
    for t, p in comp_published.messages[:count]:
        comp.handle(IncomingMessage(t, p, 1, False, None))
    assert len(comp_published.messages) == count


def test_discovery_off_in_components_mode_clears_every_entity_message() -> None:
    published = Published()
    a = announcer(config(COMPONENTS), published)
    a.announce()
    singles = {t for t, _ in published.messages}
    off = config(COMPONENTS.replace("discovery: true", "discovery: false"))
    a.reconfigure(off, Topics("edge/gh1"))
    cleared = {t for t, p in published.messages[len(singles) :] if p == b""}
    assert cleared == singles
