"""``edge-agent status``: one screen for a person at the Pi.

It asks the running agent's ``/healthz`` when ``health.listen`` is set; otherwise it reads
the device's own retained topics from the broker (status, info, health, the last reading
of each sensor, output and input states).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.model import Config
from agent.mqtt.payloads import parse_iso_ts
from agent.mqtt.topics import Topics
from agent.mqtt.transport import tls_context
from agent.observability.http import parse_listen


@dataclass
class DeviceView:
    """What is known of the device, from either source."""

    source: str
    online: bool | None = None
    healthy: bool | None = None
    reasons: list[str] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: dict[str, Any] | None = None


def from_healthz(listen: str, timeout: float = 3.0) -> DeviceView:
    """Ask the agent itself.

    Raises:
        OSError: nothing answers there.
    """
    host, port = parse_listen(listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as e:  # 503 still carries the body
        body = json.loads(e.read())
    now = time.time()
    view = DeviceView(
        source=url,
        online=bool(body.get("connected")),
        healthy=bool(body.get("ok")),
        reasons=list(body.get("reasons", [])),
        header=body,
        outputs=body.get("outputs", {}),
        inputs=body.get("inputs", {}),
        last_error=body.get("last_error"),
    )
    for name, sensor in body.get("sensors", {}).items():
        view.sensors[name] = {**sensor, "seen": now - (sensor.get("age_s") or 0)}
    return view


def from_broker(config: Config, timeout: float = 2.0) -> DeviceView:
    """Read the device's retained topics, and wait up to ``timeout`` for a live reading
    of each sensor.

    Raises:
        OSError: the broker cannot be reached.
    """
    assert config.device_id is not None
    topics = Topics.for_device(config.mqtt.topic_prefix, config.device_id)
    mqtt = config.mqtt
    received: dict[str, bytes] = {}
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if mqtt.username is not None:
        client.username_pw_set(mqtt.username, mqtt.password)
    if mqtt.tls is not None:
        client.tls_set_context(tls_context(mqtt.tls))
    client.on_connect = lambda c, *a: c.subscribe(f"{topics.base}/#", qos=1)
    wanted = {topics.sensor(name) for name in config.sensors}

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # Retained state, and live readings: those are not retained by default.
        received[msg.topic] = bytes(msg.payload)
        if wanted <= received.keys():
            done.set()

    client.on_message = on_message
    client.connect(mqtt.host, mqtt.effective_port, 10)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    view = DeviceView(source=f"retained topics on {mqtt.host}:{mqtt.effective_port}")
    status = received.get(topics.status)
    view.online = None if status is None else status == b"online"
    health = _json(received.get(topics.health))
    info = _json(received.get(topics.info))
    view.header = {
        "device_id": config.device_id,
        "version": info.get("version"),
        "broker": f"{mqtt.host}:{mqtt.effective_port}",
        "connected": view.online,
        "queue_depth": health.get("queue_depth"),
        "oldest_queued_age_s": health.get("oldest_queued_age_s"),
        "uptime_s": health.get("uptime_s"),
        "health_ts": health.get("ts"),
        "clock_synced": health.get("clock_synced", info.get("clock_synced")),
    }
    view.last_error = health.get("last_error")
    failed = set(health.get("sensors_failed", []))
    for name in config.sensors:
        reading = _json(received.get(topics.sensor(name)))
        ts = reading.get("ts")
        view.sensors[name] = {
            "ok": name not in failed,
            "values": reading.get("values", {}),
            "seen": parse_iso_ts(ts) if ts else None,
            "interval_s": config.sensors[name].interval,
        }
    for name in config.outputs:
        view.outputs[name] = _json(received.get(topics.output_state(name)))
    for name in config.inputs:
        view.inputs[name] = _json(received.get(topics.input(name)))
    return view


def _json(payload: bytes | None) -> dict[str, Any]:
    if not payload:
        return {}
    try:
        body = json.loads(payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def render(view: DeviceView, now: float | None = None) -> str:
    """The screen."""
    now = time.time() if now is None else now
    h = view.header
    link = {True: "online", False: "OFFLINE", None: "status unknown"}[view.online]
    lines = [
        f"edge-agent {h.get('device_id')} {h.get('version') or ''}".rstrip()
        + f" - {link}, broker {h.get('broker')}",
    ]
    if view.healthy is not None:
        lines.append("health: ok" if view.healthy else "health: UNHEALTHY")
        lines += [f"  - {reason}" for reason in view.reasons]
    if h.get("uptime_s") is not None:
        lines.append(f"uptime: {_duration(float(h['uptime_s']))}")
    synced = h.get("clock_synced")
    if synced is not None:
        lines.append(
            "clock: synchronised"
            if synced
            else "clock: NOT synchronised (readings carry clock_synced: false)"
        )
    depth = h.get("queue_depth")
    if depth is not None:
        oldest = h.get("oldest_queued_age_s")
        suffix = f", oldest {_duration(float(oldest))} old" if oldest else ""
        lines.append(f"buffer: {depth} readings waiting{suffix}")
    lines.append("")
    lines.append("sensors:")
    width = max((len(n) for n in [*view.sensors, *view.outputs, *view.inputs]), default=4)
    for name, s in view.sensors.items():
        values = "  ".join(f"{k}={v}" for k, v in (s.get("values") or {}).items()) or "-"
        seen = s.get("seen")
        age = f"{_duration(now - seen)} ago" if seen else "never"
        flag = "ok    " if s.get("ok", True) else "FAILED"
        lines.append(f"  {name:<{width}}  {flag} {values}  ({age})")
        if s.get("error") and not s.get("ok", True):
            lines.append(f"  {'':<{width}}  {s['error']}")
    if view.outputs:
        lines.append("outputs:")
        for name, o in view.outputs.items():
            state = o.get("state") or "?"
            detail = o.get("reason") or o.get("error") or ""
            until = f", until {o['until']}" if o.get("until") else ""
            lines.append(f"  {name:<{width}}  {state:<4} {detail}{until}")
    if view.inputs:
        lines.append("inputs:")
        for name, i in view.inputs.items():
            lines.append(f"  {name:<{width}}  {i.get('state') or '?'}")
    if view.last_error:
        lines.append("")
        lines.append(f"last error: {view.last_error.get('message')} ({view.last_error.get('ts')})")
    lines.append("")
    lines.append(f"(from {view.source})")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
