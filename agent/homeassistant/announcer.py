"""When to (re)announce the device to Home Assistant, and what to remove.

The device is announced after every connect, whenever Home Assistant says
``<prefix>/status`` = ``online`` (it restarted and forgot non-retained state), and after a
reload. Entities announced before - in this run, or in an earlier one, as the retained
discovery message read back at connect shows - that are no longer configured are removed.

Switching ``discovery_mode`` follows Home Assistant's documented migration: the old
topics get ``{"migrate_discovery": true}`` (HA unloads the entities and keeps their
registry entries), then an empty retained message (removing the old config from the
broker), then the new config takes the entities over with the same unique ids. A switch
by reload knows the old topics; after a restart they are learned from the retained
messages read back at connect, so HA may first log that the new config conflicts with
the old one, and the migration follows a moment later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from agent.config.model import Config
from agent.homeassistant.discovery import (
    MIGRATE,
    component_filter,
    component_payloads,
    components,
    device_payload,
    discovery_topic,
)
from agent.mqtt.payloads import encode_json
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage

log = logging.getLogger(__name__)

#: Publishes a retained QoS 1 message.
Publish = Callable[[str, bytes], None]


def hardware_model(root: Path = Path("/")) -> str:
    """The board's model from the device tree, or a generic name off a Pi."""
    try:
        return (root / "proc/device-tree/model").read_text(errors="replace").rstrip("\x00\n")
    except OSError:
        return "Linux computer"


class Announcer:
    """Keeps Home Assistant's view of the device in step with the config."""

    def __init__(
        self, *, config: Config, topics: Topics, publish: Publish, model: str | None = None
    ) -> None:
        self._config = config
        self._topics = topics
        self._publish = publish
        self._model = model or hardware_model()
        #: Component id -> platform of everything Home Assistant may know of (device form).
        self._known: dict[str, str] = {}
        #: Whether the device-form topic holds a config of ours (retained on the broker).
        self._device_retained = False
        #: Single-component topics that hold a config of ours.
        self._component_topics: set[str] = set()
        #: Single-component topics migrated away and cleared: their retained copies still
        #: on the way to us are not news.
        self._cleared: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._config.homeassistant.discovery

    @property
    def topic(self) -> str:
        assert self._config.device_id is not None
        return discovery_topic(self._config.homeassistant.prefix, self._config.device_id)

    @property
    def mode(self) -> str:
        return self._config.homeassistant.discovery_mode

    @property
    def component_filter(self) -> str:
        assert self._config.device_id is not None
        return component_filter(self._config.homeassistant.prefix, self._config.device_id)

    @property
    def status_topic(self) -> str:
        """Home Assistant's birth/last-will topic."""
        return f"{self._config.homeassistant.prefix}/status"

    def subscriptions(self) -> list[str]:
        """What to subscribe to: Home Assistant's status, and our own retained discovery
        messages of both forms (to learn what an earlier run announced)."""
        return [self.status_topic, self.topic, self.component_filter]

    def announce(self) -> None:
        """Publish every configured entity in the configured form, migrate entities still
        announced in the other form, and remove stale ones."""
        if not self.enabled:
            return
        if self.mode == "components":
            self._announce_components()
        else:
            self._announce_device()

    def _migrate_away(self, topic: str) -> None:
        """Start HA's migration of what ``topic`` announced, and clear it from the broker."""
        self._publish(topic, encode_json(MIGRATE))
        self._publish(topic, b"")

    def _announce_components(self) -> None:
        if self._device_retained:
            log.info("Home Assistant discovery: migrating to one message per entity")
            self._migrate_away(self.topic)
            self._device_retained = False
            self._known = {}
        payloads = component_payloads(self._config, self._topics, model=self._model)
        for topic, body in payloads.items():
            self._publish(topic, encode_json(body))
        self._cleared -= set(payloads)
        for topic in sorted(self._component_topics - set(payloads)):
            log.info("removing from Home Assistant: %s", topic)
            self._publish(topic, b"")
        self._component_topics = set(payloads)

    def _announce_device(self) -> None:
        if self._component_topics:
            # Every topic an entity of ours can have, not only those seen so far: after a
            # restart the retained ones arrive one by one, and one migration that covers
            # them all spares Home Assistant a device message that conflicts with the rest.
            possible = component_payloads(self._config, self._topics, model=self._model)
            old = self._component_topics | set(possible)
            log.info("Home Assistant discovery: migrating to the device message")
            for topic in sorted(old):
                self._migrate_away(topic)
            self._cleared |= old
            self._component_topics = set()
        payload = device_payload(self._config, self._topics, model=self._model)
        current = {cid: str(c["p"]) for cid, c in payload["cmps"].items()}
        removed = {cid: p for cid, p in self._known.items() if cid not in current}
        if removed:
            log.info("removing from Home Assistant: %s", ", ".join(sorted(removed)))
            payload = device_payload(self._config, self._topics, model=self._model, removed=removed)
        self._publish(self.topic, encode_json(payload))
        self._known = current
        self._device_retained = True

    def handle(self, message: IncomingMessage) -> bool:
        """Act on a message for us; False when it is not ours."""
        if message.topic == self.status_topic:
            if message.payload.strip().lower() == b"online":
                log.info("Home Assistant is online: announcing the device again")
                self.announce()
            return True
        if message.topic == self.topic:
            self._learn(message.payload)
            return True
        if self._is_component_topic(message.topic):
            self._learn_component(message.topic, message.payload)
            return True
        return False

    def _is_component_topic(self, topic: str) -> bool:
        """``topic`` matches :attr:`component_filter` (``<prefix>/+/<node>/+/config``)."""
        pattern = self.component_filter.split("/")
        levels = topic.split("/")
        return len(levels) == len(pattern) and all(
            p in ("+", level) for p, level in zip(pattern, levels, strict=True)
        )

    def _learn_component(self, topic: str, payload: bytes) -> None:
        """A single-component config of ours (retained from an earlier run, or our echo)."""
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            return
        if not isinstance(body, dict) or not body.get("unique_id"):
            return  # empty, or a migrate_discovery message: nothing announced there
        if topic in self._component_topics or topic in self._cleared:
            return  # our own, or already migrated away
        self._component_topics.add(topic)
        if not self.enabled:
            self.remove_device()
        else:
            self.announce()  # migrates it to the device form, or removes it if stale

    def _learn(self, payload: bytes) -> None:
        """A discovery message of ours (retained from an earlier run, or our own echo):
        entities in it that we no longer have are removed."""
        try:
            body = json.loads(payload) if payload else {}
            cmps = body.get("cmps", {}) if isinstance(body, dict) else {}
            seen = {
                str(cid): str(c["p"])
                for cid, c in cmps.items()
                if isinstance(c, dict) and "p" in c and len(c) > 1
            }
        except (ValueError, TypeError, AttributeError):
            return
        if not self.enabled:
            if seen:  # announced by a run that had discovery on
                self._device_retained = True
                self.remove_device()
            return
        if self.mode == "components":
            if seen and not self._device_retained:
                self._device_retained = True  # an earlier run announced the device form
                self.announce()
            return
        current = components(self._config, self._topics)
        stale = {cid: platform for cid, platform in seen.items() if cid not in current}
        if stale:
            self._known.update(stale)
            self.announce()

    def reconfigure(self, config: Config, topics: Topics) -> None:
        """A reload: announce the new set of entities, or remove the device if discovery
        was turned off."""
        was_enabled, old_topic = self.enabled, self.topic
        old_component_topics = set(self._component_topics)
        self._config, self._topics = config, topics
        if was_enabled and (not self.enabled or old_topic != self.topic):
            if self._device_retained:
                self._publish(old_topic, b"")
            for topic in sorted(old_component_topics):
                self._publish(topic, b"")
            self._known, self._device_retained, self._component_topics = {}, False, set()
        self.announce()

    def remove_device(self) -> None:
        """Remove the whole device from Home Assistant: an empty retained config on every
        discovery topic of ours."""
        if self._device_retained or not self._component_topics:
            self._publish(self.topic, b"")
        for topic in sorted(self._component_topics):
            self._publish(topic, b"")
        self._known, self._device_retained, self._component_topics = {}, False, set()
