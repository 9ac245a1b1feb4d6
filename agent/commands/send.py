"""``edge-agent send``: publish one command and wait for its reply.

The command is built by :func:`build_command` (pure: what is sent, nothing about how), and
turned into the payload by :func:`command_payload`; a signing step (CONTRACT section 13)
wraps the second. :func:`send_command` does the MQTT part: it subscribes to the replies
first, then publishes the command (QoS 1, not retained) to ``<base>/output/<name>/set``
and waits for the one reply that is its own:

- under MQTT 5, the command carries a response topic (``<base>/reply/<client id>``) and
  the command id as correlation data, and the agent answers there too;
- always, the agent answers on ``<base>/reply``, matched by the command's ``id``.

Whichever comes first is the answer.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.client import BrokerTarget, connect
from agent.mqtt.payloads import iso_ts
from agent.mqtt.topics import Topics


def new_command_id() -> str:
    """A command id nobody else uses: ``send-`` and 12 random hex digits."""
    return f"send-{secrets.token_hex(6)}"


def build_command(
    state: str,
    *,
    command_id: str,
    ts: float,
    duration: float | None = None,
    level: float | None = None,
) -> dict[str, Any]:
    """The command as a JSON object (CONTRACT section 7): ``state``, ``id``, ``ts`` (so
    that the agent refuses it as stale if it waited somewhere), and ``duration`` and
    ``level`` when given."""
    command: dict[str, Any] = {"state": state, "id": command_id, "ts": iso_ts(ts)}
    if duration is not None:
        command["duration"] = duration
    if level is not None:
        command["level"] = level
    return command


def command_payload(command: dict[str, Any]) -> bytes:
    """The bytes published on the set topic: the command's compact JSON."""
    return json.dumps(command, separators=(",", ":"), ensure_ascii=False).encode()


def send_command(
    target: BrokerTarget,
    topics: Topics,
    output: str,
    payload: bytes,
    *,
    command_id: str,
    timeout: float = 10.0,
) -> dict[str, Any] | None:
    """Publish ``payload`` on ``output``'s set topic and return the reply to ``command_id``,
    or None when none came within ``timeout`` seconds.

    Raises:
        OSError: the broker cannot be reached.
    """
    client_id = f"edge-agent-send-{secrets.token_hex(4)}"
    client = target.client(client_id)
    response_topic = f"{topics.reply}/{client_id}"
    correlation = command_id.encode()
    subscribed = threading.Event()
    answered = threading.Event()
    reply: dict[str, Any] = {}

    def on_connect(c: paho.Client, *args: Any) -> None:
        filters = [(topics.reply, 1)]
        if target.v5:
            filters.append((response_topic, 1))
        c.subscribe(filters)

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict) or answered.is_set():
            return
        ours = body.get("id") == command_id
        if msg.topic == response_topic:
            data = getattr(msg.properties, "CorrelationData", None)
            ours = ours or data == correlation
        if ours:
            reply.update(body)
            answered.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = on_message
    connect(client, target)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        if not subscribed.wait(timeout):
            return None
        properties = None
        if target.v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = response_topic
            properties.CorrelationData = correlation
        client.publish(
            topics.output_set(output), payload, qos=1, retain=False, properties=properties
        )
        answered.wait(max(0.0, deadline - time.monotonic()))
        return reply if answered.is_set() else None
    finally:
        client.disconnect()
        client.loop_stop()
