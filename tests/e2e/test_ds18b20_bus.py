"""Eight DS18B20 probes on one emulated 1-Wire bus, through the real agent and mosquitto:
each publishes its own reading by ROM id; an unplugged probe is reported and retried while
the others go on."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector

pytestmark = pytest.mark.e2e

#: Eight ROM ids, and a temperature for each that only that probe reports.
PROBES = {f"28-0316a2795b{i:02x}": 10.0 + i * 1.5 for i in range(8)}
#: The config lists them in another order than the bus does: position must not matter.
CONFIG_ORDER = [*reversed(list(PROBES))]


def probe_name(rom: str) -> str:
    return f"probe_{rom[-2:]}"


def test_eight_probes_publish_by_rom_and_an_unplugged_one_is_reported_while_others_go_on(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    sensors = "".join(
        f"  {probe_name(rom)}:\n"
        "    driver: ds18b20\n"
        f"    rom: {rom}\n"
        "    resolution: 9\n"  # 94 ms per conversion: a round of eight in 0.75 s
        "    interval: 1.5s\n"
        f"    simulation: {{temperature: {PROBES[rom]}}}\n"
        for rom in CONFIG_ORDER
    )
    config = write_config(
        tmp_path / "c.yaml", port=broker.port, device_id=device_id, sensors=sensors
    )
    simtmp = tmp_path / "simtmp"
    simtmp.mkdir()
    unplugged = CONFIG_ORDER[3]
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(config, env={"TMPDIR": str(simtmp)})
        # Every probe publishes its own temperature on its own topic.
        for rom, celsius in PROBES.items():
            reading = c.topic(f"{base}/sensor/{probe_name(rom)}")[0]
            assert reading.json()["values"] == {"temperature": celsius}, rom
        # Unplug one probe: the kernel removes its directory.
        (device,) = simtmp.glob(f"edge-agent-sim-*/sys/bus/w1/devices/{unplugged}")
        shutil.rmtree(device)
        unplugged_at = time.time()
        error = c.wait_for(
            lambda m: (
                m.topic == f"{base}/event"
                and m.json().get("sensor") == probe_name(unplugged)
                and m.json().get("kind") == "read_error"
            )
        )[0].json()
        assert error["error"] == "DeviceGone" and unplugged in error["message"]
        failed = c.wait_for(
            lambda m: (
                m.topic == f"{base}/event"
                and m.json().get("sensor") == probe_name(unplugged)
                and m.json().get("kind") == "sensor_failed"
            ),
            timeout=15,
        )[0].json()
        assert "retrying every" in failed["message"]
        # The other seven went on meanwhile, each with its own value.
        after = [
            m
            for m in c.messages
            if m.topic.startswith(f"{base}/sensor/") and m.at > unplugged_at + 1.6
        ]
        seen = {m.topic.rsplit("/", 1)[1]: m.json()["values"]["temperature"] for m in after}
        assert seen == {probe_name(r): t for r, t in PROBES.items() if r != unplugged}
        agent.stop()
