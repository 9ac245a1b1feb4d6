"""What a reload (SIGHUP, ``systemctl reload``) has to change: a pure comparison of the
running config with the new one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from agent.config.model import Config

#: Settings a running agent cannot take over; a reload that changes them is refused.
RESTART_ONLY: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("state_dir", lambda c: c.state_dir),
    ("simulate", lambda c: c.simulate),
    ("buffer.path", lambda c: c.buffer.path),
    ("buffer.durability", lambda c: c.buffer.durability),
    ("buffer.max_messages", lambda c: c.buffer.max_messages),
    ("buffer.max_age", lambda c: c.buffer.max_age),
    ("health.listen", lambda c: c.health.listen),
    ("buffer.memory_max_messages", lambda c: c.buffer.memory_max_messages),
)


def connection_settings(config: Config) -> tuple[object, ...]:
    """What the MQTT connection and its topics depend on, with defaults resolved: writing
    out a default (``port: 1883``, ``client_id: edge-agent-<id>``) is not a change."""
    mqtt = config.mqtt
    return (
        msgspec.structs.replace(
            mqtt,
            port=mqtt.effective_port,
            client_id=mqtt.client_id or f"edge-agent-{config.device_id}",
        ),
        config.device_id,
    )


@dataclass(frozen=True)
class ReloadPlan:
    """The parts of the agent a new config touches."""

    #: Keys whose change needs a restart; when any, the reload is refused as a whole.
    restart_needed: tuple[str, ...]
    sensors: bool
    outputs: bool
    inputs: bool
    #: The connection or the topics change: reconnect (``offline`` on the old base first).
    mqtt: bool
    commands: bool
    homeassistant: bool
    log_level: bool
    health_interval: bool

    @property
    def changes_anything(self) -> bool:
        return any(
            (
                self.sensors,
                self.outputs,
                self.inputs,
                self.mqtt,
                self.commands,
                self.homeassistant,
                self.log_level,
                self.health_interval,
            )
        )


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare two validated configs."""
    return ReloadPlan(
        restart_needed=tuple(key for key, get in RESTART_ONLY if get(old) != get(new)),
        sensors=old.sensors != new.sensors,
        outputs=old.outputs != new.outputs,
        inputs=old.inputs != new.inputs,
        mqtt=connection_settings(old) != connection_settings(new),
        commands=old.commands != new.commands,
        homeassistant=old.homeassistant != new.homeassistant,
        log_level=old.log_level != new.log_level,
        health_interval=old.health.publish_interval != new.health.publish_interval,
    )
