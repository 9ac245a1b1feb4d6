"""Topic names (CONTRACT section 4). The only place a topic string is built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """Every topic of one device, under ``<topic_prefix>/<device_id>``."""

    base: str

    @classmethod
    def for_device(cls, topic_prefix: str, device_id: str) -> Topics:
        return cls(f"{topic_prefix}/{device_id}")

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    @property
    def command_filter(self) -> str:
        """The subscription that catches every output's set topic."""
        return f"{self.base}/output/+/set"

    def sensor(self, name: str) -> str:
        return f"{self.base}/sensor/{name}"

    def input(self, name: str) -> str:
        return f"{self.base}/input/{name}"

    def output_state(self, name: str) -> str:
        return f"{self.base}/output/{name}/state"

    def output_set(self, name: str) -> str:
        return f"{self.base}/output/{name}/set"

    def set_topic_level(self, topic: str) -> str | None:
        """What stands between ``<base>/output/`` and ``/set`` in ``topic`` (possibly empty,
        possibly several levels: a malformed set topic), or None when ``topic`` does not
        have that shape at all."""
        prefix, suffix = f"{self.base}/output/", "/set"
        if (
            len(topic) >= len(prefix) + len(suffix)
            and topic.startswith(prefix)
            and topic.endswith(suffix)
        ):
            return topic[len(prefix) : -len(suffix)]
        return None

    def output_of_set_topic(self, topic: str) -> str | None:
        """The output name in a set topic, or None when ``topic`` is not one."""
        prefix, suffix = f"{self.base}/output/", "/set"
        if topic.startswith(prefix) and topic.endswith(suffix):
            name = topic[len(prefix) : -len(suffix)]
            if name and "/" not in name:
                return name
        return None
