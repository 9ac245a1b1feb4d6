"""The contenders, their equivalent configs, and how each is started.

- ``ours``: ``edge-agent run -c FILE --simulate`` (the real process, simulated hardware).
- ``mqttio``: mqtt-io 2.7.0 with its ``mock`` GPIO and sensor modules.
- ``floor``: small raw-paho scripts doing the same MQTT work with no agent
  (``floor_idle.py``, ``floor_publish.py``).

The "idle" workload of B1, B2, B3 and B7: 4 sensors at 1 s, 4 outputs, 2 inputs; B8's: one
sensor at 60 s. Every contender keeps its defaults otherwise (keepalive, QoS, logging):
ours publishes readings at QoS 1 (its default), mqtt-io at QoS 0 (its only choice), the
floor at QoS 1. mqtt-io's inputs use the mock module's software interrupts (no polling),
as ours uses gpiozero's edge callbacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.bench.harness import BENCH, PYTHON, CpuLimit, Proc

Workload = Literal["idle", "one"]


@dataclass(frozen=True)
class Workloads:
    sensors: int
    interval_s: int
    outputs: int
    inputs: int


WORKLOADS: dict[Workload, Workloads] = {
    "idle": Workloads(sensors=4, interval_s=1, outputs=4, inputs=2),
    "one": Workloads(sensors=1, interval_s=60, outputs=0, inputs=0),
}


def _bme280s(count: int, interval: str, *, buses: int | None = None) -> str:
    """``count`` simulated BME280s, two per bus (0x76 and 0x77, as on a real bus)."""
    lines = []
    for i in range(count):
        bus = 1 + i // 2 if buses is None else 1 + i % buses
        address = 0x76 + (i % 2 if buses is None else (i // buses) % 2)
        lines.append(
            f"  s{i}: {{driver: bme280, bus: {bus}, address: 0x{address:02x},"
            f" interval: {interval}}}\n"
        )
    return "".join(lines)


def ours_config(
    path: Path,
    *,
    port: int,
    device_id: str,
    sensors: str,
    outputs: int = 0,
    inputs: int = 0,
    extra: str = "",
) -> Path:
    """An agent config: its own state dir; everything else at its defaults."""
    body = (
        f"device_id: {device_id}\n"
        f"state_dir: {path.parent / 'state'}\n"
        "mqtt:\n  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "sensors:\n"
        f"{sensors}"
    )
    if outputs:
        body += "outputs:\n" + "".join(
            f"  o{i}: {{driver: relay, pin: {5 + i}}}\n" for i in range(outputs)
        )
    if inputs:
        body += "inputs:\n" + "".join(
            f"  i{i}: {{driver: gpio, pin: {20 + i}}}\n" for i in range(inputs)
        )
    path.write_text(body + extra)
    return path


def mqttio_config(path: Path, *, port: int, prefix: str, work: Workloads) -> Path:
    """The equivalent mqtt-io config on its mock modules."""
    config: dict[str, object] = {
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": prefix},
        "options": {"install_requirements": False},
        # mqtt-io refuses a GPIO module that no output or input uses.
        "gpio_modules": [{"name": "mock", "module": "mock"}] if work.outputs + work.inputs else [],
        "sensor_modules": [{"name": "mocks", "module": "mock"}],
        "sensor_inputs": [
            {"name": f"s{i}", "module": "mocks", "interval": work.interval_s}
            for i in range(work.sensors)
        ],
        "digital_outputs": [
            {"name": f"o{i}", "module": "mock", "pin": 5 + i, "retain": True}
            for i in range(work.outputs)
        ],
        "digital_inputs": [
            {"name": f"i{i}", "module": "mock", "pin": 20 + i, "interrupt": "both"}
            for i in range(work.inputs)
        ],
    }
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


class Contender:
    """One column of the table."""

    key = ""
    title = ""
    #: The payload of ``<base>/status`` once it is up.
    online = b"online"

    def start(
        self,
        workload: Workload,
        *,
        port: int,
        base: str,
        work: Path,
        limit: CpuLimit | None = None,
    ) -> Proc:
        """Run ``workload`` on the broker at ``port`` under topic ``base``."""
        raise NotImplementedError

    def command(self, base: str, output: str, on: bool) -> tuple[str, bytes]:
        """Topic and payload that switch ``output``."""
        return f"{base}/output/{output}/set", b"on" if on else b"off"

    def state_filter(self, base: str) -> str:
        return f"{base}/output/+/state"

    def parse_state(self, topic: str, payload: bytes) -> tuple[str, bool]:
        """Output name and state of a state message."""
        return topic.split("/")[-2], json.loads(payload)["state"] == "on"


class Ours(Contender):
    key = "ours"
    title = "ours"

    def start(
        self,
        workload: Workload,
        *,
        port: int,
        base: str,
        work: Path,
        limit: CpuLimit | None = None,
    ) -> Proc:
        w = WORKLOADS[workload]
        config = ours_config(
            work / "agent.yaml",
            port=port,
            device_id=base.split("/", 1)[1],
            sensors=_bme280s(w.sensors, f"{w.interval_s}s"),
            outputs=w.outputs,
            inputs=w.inputs,
            # B3 measures latency at up to ~25 commands a second per output, above the
            # default commands.max_rate (10 a second, bursts of 50): no flood, so no limit.
            extra="commands:\n  max_rate: 1000\n" if w.outputs else "",
        )
        return agent_process(config, name=f"ours-{workload}", limit=limit)


def agent_process(config: Path, *, name: str, limit: CpuLimit | None = None) -> Proc:
    argv = [PYTHON, "-m", "agent", "run", "-c", str(config), "--simulate"]
    return Proc(argv, name=name, limit=limit)


class MqttIo(Contender):
    key = "mqttio"
    title = "mqtt-io 2.7.0"
    online = b"running"

    def __init__(self, python: Path) -> None:
        self.python = python

    def start(
        self,
        workload: Workload,
        *,
        port: int,
        base: str,
        work: Path,
        limit: CpuLimit | None = None,
    ) -> Proc:
        config = mqttio_config(
            work / "mqtt-io.yml", port=port, prefix=base, work=WORKLOADS[workload]
        )
        argv = [str(self.python), "-m", "mqtt_io", str(config)]
        return Proc(argv, name=f"mqttio-{workload}", limit=limit)

    def command(self, base: str, output: str, on: bool) -> tuple[str, bytes]:
        return f"{base}/output/{output}/set", b"ON" if on else b"OFF"

    def state_filter(self, base: str) -> str:
        return f"{base}/output/+"

    def parse_state(self, topic: str, payload: bytes) -> tuple[str, bool]:
        return topic.rsplit("/", maxsplit=1)[-1], payload == b"ON"


class Floor(Contender):
    key = "floor"
    title = "paho floor"

    def start(
        self,
        workload: Workload,
        *,
        port: int,
        base: str,
        work: Path,
        limit: CpuLimit | None = None,
    ) -> Proc:
        w = WORKLOADS[workload]
        return Proc(
            [
                PYTHON,
                str(BENCH / "floor_idle.py"),
                f"--port={port}",
                f"--base={base}",
                f"--sensors={w.sensors}",
                f"--interval={w.interval_s}",
                f"--outputs={w.outputs}",
                f"--inputs={w.inputs}",
            ],
            name=f"floor-{workload}",
            limit=limit,
        )


def bme280s(count: int, interval: str, *, buses: int) -> str:
    """``count`` BME280s spread over ``buses`` buses (for B6)."""
    return _bme280s(count, interval, buses=buses)
