"""Home Assistant MQTT discovery, in its device-based form: one retained message on
``<prefix>/device/<node>/config`` describes the device and every entity (``cmps``).

Entities, with the ids they keep across restarts (``unique_id`` =
``<device_id>_<component id>``):

- a ``sensor`` per sensor quantity, derived ones included (``<sensor>_<quantity>``), its
  value picked out of the reading JSON, shown with the decimals of the quantity's
  resolution; a replayed reading (``"replayed": true``, from the buffer after an outage)
  or one that lacks the quantity (held back by a filter or ``on_change``) leaves the
  entity's state as it is (see :func:`sensor_value_template`); the ``system`` driver's
  are diagnostic;
- a ``switch`` per output (``output_<name>``), commanded on its set topic, its state read
  from the retained state JSON; a PWM output is a ``light`` with brightness (or a ``fan``
  with a percentage, ``ha_component: fan``) whose 0..100 is its level;
- a ``binary_sensor`` per input (``input_<name>``), with the input's ``device_class``;
- diagnostic sensors from ``<base>/health``: buffer depth (``buffer_depth``), oldest
  buffered reading (``buffer_oldest_age``) and the last error (``last_error``).

Every entity is available while ``<base>/status`` says ``online``. An entity that
disappears from the config is removed by announcing it once more with only its platform,
which is how device-based discovery removes a component; turning discovery off removes the
device with an empty retained config.

With ``discovery_mode: components`` each entity has a message of its own on
``<prefix>/<platform>/<node>/<component id>/config`` (:func:`component_payloads`): the same
entity config plus the device, origin and availability. Its discovery id
(``<node> <component id>``) is the one device-based discovery gives the entity, which is
what Home Assistant's ``migrate_discovery`` needs to move an entity between the two forms
without losing it (see :mod:`agent.homeassistant.announcer`).
"""

from __future__ import annotations

import math
from typing import Any

from agent import __version__
from agent.config.model import Config
from agent.filters.chain import reading_gap_s, sensor_quantities
from agent.mqtt.payloads import resolution_decimals
from agent.mqtt.topics import Topics
from drivers.pwm import PWMOptions
from drivers.registry import spec_of

#: Our units where Home Assistant expects another spelling for the same unit.
HA_UNITS = {"%RH": "%"}
#: Sensor drivers whose entities describe the Pi itself, not the world around it.
DIAGNOSTIC_DRIVERS = frozenset({"system"})


def node_id(device_id: str) -> str:
    return f"edge_agent_{device_id}"


def _dimmable(name: str, output: PWMOptions, device_id: str, topics: Topics) -> dict[str, Any]:
    """A PWM output: a ``light`` with brightness 0..100 (its level), or a ``fan`` with a
    percentage. Levels go to the output's own set topic as ``{"state": "on", "level": N}``;
    both read state and level back from its retained state."""
    level_command = '{"state": "on", "level": {{ value }}}'
    entity: dict[str, Any] = {
        "p": output.ha_component,
        "name": name,
        "unique_id": f"{device_id}_output_{name}",
        "command_topic": topics.output_set(name),
        "payload_on": "on",
        "payload_off": "off",
        "state_topic": topics.output_state(name),
        "state_value_template": "{{ value_json.state }}",
        "optimistic": False,
        "retain": False,
    }
    if output.ha_component == "light":
        entity |= {
            "brightness_command_topic": topics.output_set(name),
            "brightness_command_template": level_command,
            "brightness_state_topic": topics.output_state(name),
            "brightness_value_template": "{{ value_json.level | round(0) | int }}",
            "brightness_scale": 100,
            "on_command_type": "brightness",
        }
    else:
        entity |= {
            "percentage_command_topic": topics.output_set(name),
            "percentage_command_template": level_command,
            "percentage_state_topic": topics.output_state(name),
            "percentage_value_template": "{{ value_json.level | round(0) | int }}",
            "speed_range_min": 1,
            "speed_range_max": 100,
        }
    return entity


def discovery_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/device/{node_id(device_id)}/config"


def component_topic(prefix: str, device_id: str, platform: str, component_id: str) -> str:
    """The single-component discovery topic of one entity."""
    return f"{prefix}/{platform}/{node_id(device_id)}/{component_id}/config"


def component_filter(prefix: str, device_id: str) -> str:
    """Matches every single-component discovery topic of the device."""
    return f"{prefix}/+/{node_id(device_id)}/+/config"


#: The payload that starts Home Assistant's migration of an entity from one discovery
#: topic to another: it unloads the entity but keeps its registry entry (its entity id,
#: name, area, history) for the config that follows on the new topic.
MIGRATE = {"migrate_discovery": True}


def expire_after(gap_s: float, *, interval_s: float | None = None) -> int:
    """Seconds after which Home Assistant shows a sensor as unavailable: the longest gap
    between two readings plus two more intervals (three missed readings when every sample
    is published), and never less than a minute."""
    interval = gap_s if interval_s is None else interval_s
    return max(60, math.ceil(gap_s + 2 * interval + 5))


def sensor_value_template(quantity: str) -> str:
    """The template that picks ``quantity`` out of a reading for Home Assistant.

    It renders an empty string for a replayed reading (one with a ``replayed`` key) and for
    a reading without ``quantity``. Home Assistant's MQTT sensor ignores an empty state of a
    numeric sensor (logged at debug level only) and writes nothing: no state row, no
    ``last_reported``, no statistics input. So a reading sampled during an outage never
    becomes the entity's current state or a history entry stamped with its arrival time;
    consumers that want the backfill read ``ts``/``seq``/``replayed`` from the same topic.
    """
    values = "value_json['values']"
    return (
        f"{{{{ '' if value_json.replayed is defined or '{quantity}' not in {values}"
        f" else {values}['{quantity}'] }}}}"
    )


def components(config: Config, topics: Topics) -> dict[str, dict[str, Any]]:
    """Every entity of the device: component id -> its discovery config."""
    assert config.device_id is not None
    device_id = config.device_id
    out: dict[str, dict[str, Any]] = {}
    for name, options in config.sensors.items():
        spec = spec_of(options)
        gap = reading_gap_s(spec, options)
        for quantity, q in sensor_quantities(spec, options).items():
            cid = f"{name}_{quantity}"
            entity: dict[str, Any] = {
                "p": "sensor",
                "name": f"{name} {quantity.replace('_', ' ')}",
                "unique_id": f"{device_id}_{cid}",
                "state_topic": topics.sensor(name),
                "value_template": sensor_value_template(quantity),
                "state_class": "measurement",
                "suggested_display_precision": resolution_decimals(q.resolution),
            }
            if gap is not None:  # None: on_change without heartbeat may hold it for ever
                entity["expire_after"] = expire_after(gap, interval_s=options.interval)
            if q.unit:
                entity["unit_of_measurement"] = HA_UNITS.get(q.unit, q.unit)
            if q.device_class:
                entity["device_class"] = q.device_class
            if spec.name in DIAGNOSTIC_DRIVERS:
                entity["entity_category"] = "diagnostic"
            out[cid] = entity
    for name, output in config.outputs.items():
        if isinstance(output, PWMOptions):
            out[f"output_{name}"] = _dimmable(name, output, device_id, topics)
            continue
        out[f"output_{name}"] = {
            "p": "switch",
            "name": name,
            "unique_id": f"{device_id}_output_{name}",
            "command_topic": topics.output_set(name),
            "payload_on": "on",
            "payload_off": "off",
            "state_topic": topics.output_state(name),
            "value_template": "{{ value_json.state }}",
            "state_on": "on",
            "state_off": "off",
            "optimistic": False,
            "retain": False,
        }
    for name, input_options in config.inputs.items():
        binary: dict[str, Any] = {
            "p": "binary_sensor",
            "name": name,
            "unique_id": f"{device_id}_input_{name}",
            "state_topic": topics.input(name),
            "value_template": "{{ value_json.state }}",
            "payload_on": "on",
            "payload_off": "off",
        }
        if input_options.device_class is not None:
            binary["device_class"] = input_options.device_class
        out[f"input_{name}"] = binary
    health_expiry = expire_after(config.health.publish_interval)
    out["buffer_depth"] = {
        "p": "sensor",
        "name": "buffer depth",
        "unique_id": f"{device_id}_buffer_depth",
        "state_topic": topics.health,
        "value_template": "{{ value_json.queue_depth }}",
        "unit_of_measurement": "readings",
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "expire_after": health_expiry,
    }
    out["buffer_oldest_age"] = {
        "p": "sensor",
        "name": "oldest buffered reading",
        "unique_id": f"{device_id}_buffer_oldest_age",
        "state_topic": topics.health,
        "value_template": "{{ value_json.oldest_queued_age_s or 0 }}",
        "unit_of_measurement": "s",
        "device_class": "duration",
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "expire_after": health_expiry,
    }
    out["last_error"] = {
        "p": "sensor",
        "name": "last error",
        "unique_id": f"{device_id}_last_error",
        "state_topic": topics.health,
        "value_template": (
            "{{ (value_json.last_error.message if value_json.last_error else 'none')[:255] }}"
        ),
        "entity_category": "diagnostic",
        "icon": "mdi:alert-circle-outline",
    }
    return out


def device_payload(
    config: Config,
    topics: Topics,
    *,
    model: str,
    removed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The device discovery payload.

    Args:
        config: the running config.
        topics: the device's topics.
        model: what the hardware is ("Raspberry Pi 4 Model B Rev 1.4").
        removed: component id -> platform of entities to remove from Home Assistant.
    """
    assert config.device_id is not None
    cmps: dict[str, dict[str, Any]] = {cid: {"p": p} for cid, p in (removed or {}).items()}
    cmps.update(components(config, topics))
    return {
        "dev": {
            "ids": [node_id(config.device_id)],
            "name": config.device_id,
            "mf": "pi-edge-agent",
            "mdl": model,
            "sw": __version__,
        },
        "o": {"name": "pi-edge-agent", "sw": __version__},
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "cmps": cmps,
    }


def component_payloads(config: Config, topics: Topics, *, model: str) -> dict[str, dict[str, Any]]:
    """Every entity as a single-component discovery message: topic -> payload."""
    assert config.device_id is not None
    device = device_payload(config, topics, model=model)
    shared = {key: value for key, value in device.items() if key != "cmps"}
    out: dict[str, dict[str, Any]] = {}
    for cid, entity in device["cmps"].items():
        body = {key: value for key, value in entity.items() if key != "p"}
        body.update(shared)
        topic = component_topic(config.homeassistant.prefix, config.device_id, entity["p"], cid)
        out[topic] = body
    return out
