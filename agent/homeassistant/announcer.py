"""When to (re)announce the device to Home Assistant, and what to remove.

The device is announced after every connect, whenever Home Assistant says
``<prefix>/status`` = ``online`` (it restarted and forgot non-retained state), and after a
reload. Entities announced before - in this run, or in an earlier one, as the retained
discovery message read back at connect shows - that are no longer configured are removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from agent.config.model import Config
from agent.homeassistant.discovery import components, device_payload, discovery_topic
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
        #: Component id -> platform of everything Home Assistant may know of.
        self._known: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self._config.homeassistant.discovery

    @property
    def topic(self) -> str:
        assert self._config.device_id is not None
        return discovery_topic(self._config.homeassistant.prefix, self._config.device_id)

    @property
    def status_topic(self) -> str:
        """Home Assistant's birth/last-will topic."""
        return f"{self._config.homeassistant.prefix}/status"

    def subscriptions(self) -> list[str]:
        """What to subscribe to: Home Assistant's status, and our own retained discovery
        message (to learn what an earlier run announced)."""
        return [self.status_topic, self.topic]

    def announce(self) -> None:
        """Publish the device with every configured entity, and remove stale ones."""
        if not self.enabled:
            return
        payload = device_payload(self._config, self._topics, model=self._model)
        current = {cid: str(c["p"]) for cid, c in payload["cmps"].items()}
        removed = {cid: p for cid, p in self._known.items() if cid not in current}
        if removed:
            log.info("removing from Home Assistant: %s", ", ".join(sorted(removed)))
            payload = device_payload(self._config, self._topics, model=self._model, removed=removed)
        self._publish(self.topic, encode_json(payload))
        self._known = current

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
        return False

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
                self.remove_device()
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
        self._config, self._topics = config, topics
        if was_enabled and (not self.enabled or old_topic != self.topic):
            self._publish(old_topic, b"")
            self._known = {}
        self.announce()

    def remove_device(self) -> None:
        """Remove the whole device from Home Assistant (an empty retained config)."""
        self._publish(self.topic, b"")
        self._known = {}
