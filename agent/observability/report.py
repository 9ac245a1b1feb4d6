"""The agent's state as the health topic, ``/healthz`` and ``/metrics`` report it."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__
from agent.mqtt.payloads import iso_ts

if TYPE_CHECKING:
    from agent.actuation.inputs import InputWatcher
    from agent.actuation.outputs import OutputController
    from agent.clock import ClockSource
    from agent.commands.handler import CommandHandler
    from agent.config.model import Config
    from agent.mqtt.transport import Transport
    from agent.pipeline.outbox import Outbox
    from agent.sampling.scheduler import Scheduler


class AgentState(Protocol):
    """What the reports read of the running agent (``agent.runtime.daemon.Agent``).

    A protocol, so this layer below the daemon never imports it.
    """

    @property
    def config(self) -> Config: ...
    @property
    def device_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def connected_since(self) -> float | None: ...
    @property
    def disconnected_at(self) -> float | None: ...
    @property
    def counters(self) -> dict[str, int]: ...
    @property
    def last_error(self) -> dict[str, str] | None: ...
    @property
    def readings(self) -> Counter[str]: ...
    @property
    def retired_read_errors(self) -> Counter[tuple[str, str]]: ...
    @property
    def scheduler(self) -> Scheduler | None: ...
    @property
    def outputs(self) -> OutputController | None: ...
    @property
    def inputs(self) -> InputWatcher | None: ...
    @property
    def commands(self) -> CommandHandler | None: ...
    @property
    def outbox(self) -> Outbox | None: ...
    @property
    def transport(self) -> Transport | None: ...
    @property
    def sampling_running(self) -> bool: ...
    @property
    def clock_synced(self) -> bool: ...
    @property
    def clock(self) -> ClockSource: ...
    @property
    def started_mono(self) -> float: ...
    @property
    def disconnected_mono(self) -> float | None: ...


def uptime_s(agent: AgentState) -> float:
    """Seconds since start, on the monotonic clock (a step of the wall clock at NTP sync
    does not make the agent four years old)."""
    return max(agent.clock.monotonic() - agent.started_mono, 0.0)


def offline_s(agent: AgentState) -> float:
    """Seconds since the last disconnect (or the start), on the monotonic clock."""
    since = agent.disconnected_mono
    return max(agent.clock.monotonic() - (since if since is not None else agent.started_mono), 0)


@dataclass
class Snapshot:
    """What the agent knows at scrape time."""

    device_id: str
    version: str
    uptime_s: float
    connected: bool
    connects: int
    reconnects: int
    queue_depth: int
    oldest_queued_age_s: float | None
    outbox: dict[str, int]
    events: int
    #: sensor -> readings taken
    readings: dict[str, int] = field(default_factory=dict)
    #: (sensor, error kind) -> failed reads
    read_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    sensors_failed: list[str] = field(default_factory=list)
    #: sensor -> unix time of the last reading
    last_reading_ts: dict[str, float] = field(default_factory=dict)
    #: (output, result) -> commands
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: output -> 1 on / 0 off
    outputs_on: dict[str, int] = field(default_factory=dict)
    latency_bounds: tuple[float, ...] = ()
    latency_counts: list[int] = field(default_factory=list)
    latency_count: int = 0
    latency_sum: float = 0.0
    #: The buffer's storage fault reason, or None while it is durable.
    storage_fault: str | None = None
    memory_depth: int = 0
    #: Whether the system clock is synchronised (CONTRACT 14).
    clock_synced: bool = True


def storage_state(agent: AgentState) -> dict[str, Any]:
    """``{"ok", "path", "reason", "since", "memory_depth", "memory_max_messages"}``."""
    outbox = agent.outbox
    if outbox is None:
        return {"ok": True}
    store = outbox.store
    fault = store.fault
    return {
        "ok": fault is None,
        "path": str(store.path),
        "reason": fault.reason if fault else None,
        "since": iso_ts(fault.since) if fault else None,
        "memory_depth": store.memory_depth(),
        "memory_max_messages": store.memory_max_messages,
    }


def health_payload(agent: AgentState) -> dict[str, Any]:
    """The ``<base>/health`` payload (CONTRACT section 4)."""
    now = time.time()
    outbox = agent.outbox
    oldest = outbox.oldest_queued_age_s() if outbox is not None else None
    return {
        "ts": iso_ts(now),
        "uptime_s": round(uptime_s(agent), 3),
        "connected_since": iso_ts(agent.connected_since) if agent.connected_since else None,
        "queue_depth": outbox.queue_depth() if outbox is not None else 0,
        "oldest_queued_age_s": round(max(oldest, 0.0), 3) if oldest is not None else None,
        "counters": {**agent.counters, **(outbox.counters if outbox is not None else {})},
        "sensors_failed": failed_sensors(agent),
        "storage": storage_state(agent),
        "clock_synced": agent.clock_synced,
        "last_error": agent.last_error,
    }


def failed_sensors(agent: AgentState) -> list[str]:
    return [s.name for s in agent.scheduler.slots if s.failed] if agent.scheduler else []


def healthz(agent: AgentState) -> tuple[bool, dict[str, Any]]:
    """``/healthz``: healthy while connected, or buffering within the limits.

    Unhealthy reasons: the broker unreachable for longer than ``health.max_offline``; the
    buffer over 90 % of ``buffer.max_messages``; the buffer's disk failing (``storage``:
    readings only in memory); the oldest buffered reading older than
    half of ``buffer.max_age`` (it would soon be dropped); a stopped sampling task or
    MQTT transport. The event loop answering at all is the first check.
    """
    config = agent.config
    reasons: list[str] = []
    connected = agent.transport is not None and agent.transport.connected
    if not connected:
        offline_for = offline_s(agent)
        if offline_for > config.health.max_offline:
            reasons.append(
                f"broker {config.mqtt.host}:{config.mqtt.effective_port} unreachable for "
                f"{offline_for:.0f} s (health.max_offline: {config.health.max_offline:g} s)"
            )
    outbox = agent.outbox
    depth = outbox.queue_depth() if outbox is not None else 0
    oldest = outbox.oldest_queued_age_s() if outbox is not None else None
    if depth > 0.9 * config.buffer.max_messages:
        reasons.append(f"buffer {depth} of {config.buffer.max_messages} readings: nearly full")
    if oldest is not None and oldest > 0.5 * config.buffer.max_age:
        reasons.append(
            f"oldest buffered reading is {oldest:.0f} s old "
            f"(buffer.max_age: {config.buffer.max_age:g} s)"
        )
    storage = storage_state(agent)
    if not storage["ok"]:
        reasons.append(
            f"storage: the buffer {storage['path']} cannot be written ({storage['reason']});"
            f" {storage['memory_depth']} of {storage['memory_max_messages']} readings in memory"
        )
    transport = agent.transport
    if transport is not None and transport.takeover.active:
        reasons.append(
            f"session taken over: another client connects as {transport.client_id} - two"
            " agents share a device_id or client_id (a cloned SD card?); backing off"
        )
    if not agent.sampling_running:
        reasons.append("sampling has stopped")
    if agent.transport is not None and not agent.transport.alive:
        reasons.append("the MQTT transport has stopped")
    body: dict[str, Any] = {
        "ok": not reasons,
        "reasons": reasons,
        "device_id": agent.device_id,
        "version": __version__,
        "broker": f"{config.mqtt.host}:{config.mqtt.effective_port}",
        "connected": connected,
        "connected_since": iso_ts(agent.connected_since) if agent.connected_since else None,
        "uptime_s": round(uptime_s(agent), 1),
        "queue_depth": depth,
        "oldest_queued_age_s": round(max(oldest, 0.0), 1) if oldest is not None else None,
        "sensors": sensor_states(agent),
        "outputs": output_states(agent),
        "inputs": {
            name: {"state": "on" if state.on else "off", "ts": iso_ts(state.ts)}
            for name, state in (agent.inputs.states.items() if agent.inputs else [])
        },
        "storage": storage,
        "session_taken_over": transport is not None and transport.takeover.active,
        "clock_synced": agent.clock_synced,
        "last_error": agent.last_error,
    }
    return not reasons, body


def sensor_states(agent: AgentState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wall, mono = agent.clock.wall(), agent.clock.monotonic()
    for slot in agent.scheduler.slots if agent.scheduler else []:
        if slot.last_mono is not None:
            age: float | None = mono - slot.last_mono
        else:
            age = wall - slot.last_ts if slot.last_ts else None
        out[slot.name] = {
            "ok": not slot.failed,
            "values": slot.last_values,
            "age_s": round(age, 1) if age is not None else None,
            "interval_s": slot.options.interval,
            "error": slot.last_error,
        }
    return out


def output_states(agent: AgentState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if agent.outputs is None:
        return out
    for name in agent.outputs.names:
        state = agent.outputs.state(name)
        out[name] = (
            {"state": None, "error": "could not be opened"}
            if state is None
            else {
                "state": "on" if state.on else "off",
                "reason": state.reason,
                "since": iso_ts(state.ts),
                "until": iso_ts(state.until) if state.until else None,
            }
        )
    return out


def snapshot(agent: AgentState) -> Snapshot:
    """Everything ``/metrics`` shows."""
    outbox = agent.outbox
    oldest = outbox.oldest_queued_age_s() if outbox is not None else None
    read_errors: Counter[tuple[str, str]] = Counter(agent.retired_read_errors)
    last_ts: dict[str, float] = {}
    for slot in agent.scheduler.slots if agent.scheduler else []:
        for kind, n in slot.error_kinds.items():
            read_errors[(slot.name, kind)] += n
        if slot.last_ts is not None:
            last_ts[slot.name] = slot.last_ts
    commands = agent.commands
    outputs_on: dict[str, int] = {}
    if agent.outputs is not None:
        for name in agent.outputs.names:
            state = agent.outputs.state(name)
            outputs_on[name] = int(state is not None and state.on)
    return Snapshot(
        device_id=agent.device_id,
        version=__version__,
        uptime_s=uptime_s(agent),
        connected=agent.transport is not None and agent.transport.connected,
        connects=agent.counters["connects"],
        reconnects=agent.counters["reconnects"],
        queue_depth=outbox.queue_depth() if outbox is not None else 0,
        oldest_queued_age_s=max(oldest, 0.0) if oldest is not None else None,
        outbox=dict(outbox.counters) if outbox is not None else {},
        events=agent.counters["events"],
        readings={**dict.fromkeys(agent.config.sensors, 0), **agent.readings},
        read_errors=read_errors,
        sensors_failed=failed_sensors(agent),
        last_reading_ts=last_ts,
        commands=commands.results if commands else Counter(),
        outputs_on=outputs_on,
        latency_bounds=commands.latency.BOUNDS if commands else (),
        latency_counts=list(commands.latency.counts) if commands else [],
        latency_count=commands.latency.count if commands else 0,
        latency_sum=commands.latency.sum if commands else 0.0,
        storage_fault=outbox.store.fault.reason if outbox and outbox.store.fault else None,
        memory_depth=outbox.store.memory_depth() if outbox is not None else 0,
        clock_synced=agent.clock_synced,
    )
