"""Judging and answering commands (CONTRACT section 7).

Every message on a set topic is one command and gets exactly one reply on
``<base>/reply`` and, when it names an MQTT 5 response topic, one there too (with its
correlation data). Nothing here runs on paho's thread: the transport hands messages to the
event loop first.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.actuation.outputs import OutputController
from agent.commands.parse import CommandRefused, parse_command
from agent.mqtt.payloads import encode_json, iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import IncomingMessage

log = logging.getLogger(__name__)

#: How many accepted command ids are remembered to recognise a redelivery.
REMEMBERED_IDS = 256


class LatencyHistogram:
    """Cumulative latency buckets, as Prometheus histograms count them."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.counts[i] += 1


@dataclass(frozen=True)
class Reply:
    """One reply message."""

    topic: str
    payload: bytes
    correlation_data: bytes | None = None


class CommandHandler:
    """Turns messages on set topics into actuation and replies.

    Args:
        topics: the device's topics.
        outputs: the outputs commands switch.
        max_age: ``commands.max_age`` in seconds.
        send: publishes a reply (QoS 1, not retained).
        clock: wall clock, for staleness and reply ``ts``.
    """

    def __init__(
        self,
        *,
        topics: Topics,
        outputs: OutputController,
        max_age: float,
        send: Callable[[Reply], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topics = topics
        self._outputs = outputs
        self._max_age = max_age
        self._send = send
        self._clock = clock
        self._accepted: OrderedDict[tuple[str, str | int, bytes], tuple[float, dict[str, Any]]] = (
            OrderedDict()
        )
        #: (output, "ok" or error code) -> count, for /metrics.
        self.results: Counter[tuple[str, str]] = Counter()
        #: Seconds from arrival on the loop to the reply handed to the transport.
        self.latency = LatencyHistogram()

    def handle(self, message: IncomingMessage) -> None:
        """Judge ``message``; ignored unless it is on a set topic."""
        name = self._topics.output_of_set_topic(message.topic)
        if name is None:
            log.debug("ignoring message on %s", message.topic)
            return
        started = time.monotonic()
        now = self._clock()
        body = self._judge(name, message, now)
        self.results[(name, "ok" if body["ok"] else str(body["error"]))] += 1
        payload = encode_json(body)
        self._send(Reply(self._topics.reply, payload))
        response_topic, correlation = _response_route(message)
        if response_topic is not None:
            self._send(Reply(response_topic, payload, correlation))
        self.latency.observe(time.monotonic() - started)

    def carry_over(self, previous: CommandHandler) -> None:
        """Keep the counters of the handler this one replaces (after a reload)."""
        self.results = previous.results
        self.latency = previous.latency

    def _judge(self, name: str, message: IncomingMessage, now: float) -> dict[str, Any]:
        command_id: str | int | None = None
        try:
            if _expired(message):
                raise CommandRefused("stale", "the command's MQTT message expiry has passed")
            command = parse_command(
                message.payload, retained=message.retain, now=now, max_age=self._max_age
            )
            command_id = command.id
            if name not in self._outputs:
                raise CommandRefused(
                    "unknown_output",
                    f"no output named {name!r}; outputs: {', '.join(self._outputs.names) or '-'}",
                    command_id,
                )
            # A QoS 1 redelivery (same output, id and payload within max_age) of a command
            # already carried out is answered again but never acted on twice: a repeated
            # toggle would undo the first.
            key = (name, command_id, message.payload) if command_id is not None else None
            self._forget_before(now - self._max_age)
            if key is not None and key in self._accepted:
                return {**self._accepted[key][1], "duplicate": True, "ts": iso_ts(now)}
            state = self._outputs.command(name, command)
        except CommandRefused as e:
            command_id = e.command_id if e.command_id is not None else command_id
            log.warning("command to %s refused (%s): %s", name, e.code, e.message)
            return {
                "id": command_id,
                "output": name,
                "ok": False,
                "error": e.code,
                "message": e.message,
                "ts": iso_ts(now),
            }
        body: dict[str, Any] = {
            "id": command_id,
            "output": name,
            "ok": True,
            "state": "on" if state.on else "off",
            "until": iso_ts(state.until) if state.until is not None else None,
            "ts": iso_ts(now),
        }
        if key is not None:
            self._accepted[key] = (now, body)
            while len(self._accepted) > REMEMBERED_IDS:
                self._accepted.popitem(last=False)
        return body

    def _forget_before(self, cutoff: float) -> None:
        while self._accepted:
            key, (accepted_at, _) = next(iter(self._accepted.items()))
            if accepted_at >= cutoff:
                return
            del self._accepted[key]


def _response_route(message: IncomingMessage) -> tuple[str | None, bytes | None]:
    """The MQTT 5 response topic and correlation data of ``message``, if it has them."""
    props = message.properties
    topic = getattr(props, "ResponseTopic", None) if props is not None else None
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
        return None, None
    correlation = getattr(props, "CorrelationData", None)
    return topic, bytes(correlation) if correlation is not None else None


def _expired(message: IncomingMessage) -> bool:
    """MQTT 5: the broker passes on what is left of a message's expiry interval; 0 means
    the message is already too old to act on."""
    props = message.properties
    remaining = getattr(props, "MessageExpiryInterval", None) if props is not None else None
    return isinstance(remaining, int) and remaining <= 0
