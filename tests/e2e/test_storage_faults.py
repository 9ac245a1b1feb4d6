"""Storage faults under the real agent (issue 20, rows 1-5): a full disk, an SD card the
kernel turned read-only, a state directory that cannot be used at start, a corrupt
buffer. The agent keeps running, keeps readings in memory, says why on MQTT, in its log
and on /healthz, counts what it drops, and recovers by itself."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.demo.broker import PrivateBroker, free_port
from tests.support.configs import write_config
from tests.support.faultproxy import FaultProxy
from tests.support.metrics import metric
from tests.support.mounts import emergency_read_only, fill, loop_ext4, tmpfs
from tests.support.mqtt import AgentProcess, Collector, Received

pytestmark = pytest.mark.e2e


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def events(c: Collector, base: str, kind: str) -> list[dict[str, Any]]:
    return [m.json() for m in c.on(f"{base}/event") if m.json()["kind"] == kind]


def sensor_seqs(c: Collector, base: str) -> list[int]:
    return [m.json()["seq"] for m in c.on(f"{base}/sensor/pi")]


def storage_config(
    tmp_path: Path, port: int, device_id: str, *, state: Path, health: int, extra: str = ""
) -> Path:
    config = write_config(
        tmp_path / "c.yaml",
        port=port,
        device_id=device_id,
        interval="100ms",
        extra=(
            f'health:\n  listen: "127.0.0.1:{health}"\n  max_offline: 1h\n'
            "buffer:\n  memory_max_messages: 30\n" + extra
        ),
    )
    config.write_text(config.read_text().replace(str(tmp_path / "state"), str(state)))
    return config


def assert_delivered_or_counted(c: Collector, base: str, reason: str) -> None:
    """Every seq up to the highest seen arrived, or a buffer_dropping event for
    ``reason`` counted it: nothing lost silently."""
    seen = set(sensor_seqs(c, base))
    missing = set(range(1, max(seen) + 1)) - seen
    counted = sum(e["dropped"] for e in events(c, base, "buffer_dropping") if e["reason"] == reason)
    assert len(missing) <= counted, (sorted(missing), counted)
    assert counted > 0, "the memory queue (30) should have overflowed"


def test_disk_full_while_buffering_keeps_running_counts_drops_and_recovers(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base, health = f"edge/{device_id}", free_port()
    with (
        tmpfs(tmp_path / "small", size="2m") as small,
        FaultProxy(broker.port) as proxy,
        Collector(broker.port, f"{base}/#") as c,
    ):
        agent = agents(storage_config(tmp_path, proxy.port, device_id, state=small, health=health))
        c.topic(f"{base}/sensor/pi", count=3)
        proxy.refuse()
        proxy.cut()
        filler = fill(small)
        wait_until(lambda: "storage_failed" in agent.log(), "a storage_failed log line")
        status, body = healthz(health)
        assert status == 503 and any(r.startswith("storage:") for r in body["reasons"]), body
        assert body["storage"]["reason"] == "disk full"
        # Beyond the memory queue's 30 (4 s at 10 Hz; longer on a busy machine).
        wait_until(
            lambda: metric(health, "edge_agent_dropped_total") >= 5,
            "the memory queue overflowing",
            timeout=30,
        )
        filler.unlink()
        proxy.heal()
        c.wait_for(lambda m: m.topic == f"{base}/event" and "storage_recovered" in m.text)
        wait_until(lambda: healthz(health)[0] == 200, "healthy again")
        time.sleep(1)
        assert agent.process is not None and agent.process.poll() is None
    (failed,) = events(c, base, "storage_failed")
    assert failed["reason"] == "disk full" and str(small) in failed["message"]
    assert_delivered_or_counted(c, base, "disk full")


def test_a_card_turned_read_only_keeps_running_on_memory(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base, health = f"edge/{device_id}", free_port()
    with (
        loop_ext4(tmp_path / "card") as card,
        FaultProxy(broker.port) as proxy,
        Collector(broker.port, f"{base}/#") as c,
    ):
        agent = agents(
            storage_config(tmp_path, proxy.port, device_id, state=card / "state", health=health)
        )
        c.topic(f"{base}/sensor/pi", count=3)
        proxy.refuse()
        proxy.cut()
        time.sleep(0.5)
        emergency_read_only(card)
        wait_until(lambda: "storage_failed" in agent.log(), "a storage_failed log line")
        assert healthz(health)[1]["storage"]["reason"] == "read-only"
        wait_until(
            lambda: metric(health, "edge_agent_dropped_total") >= 5,
            "the memory queue overflowing",
            timeout=30,
        )
        proxy.heal()
        wait_until(lambda: len(events(c, base, "buffer_dropping")) > 0, "buffer_dropping")
        count = len(sensor_seqs(c, base))
        wait_until(lambda: len(sensor_seqs(c, base)) > count + 5, "live readings")
        status, body = healthz(health)
        assert status == 503 and any(r.startswith("storage:") for r in body["reasons"])
        assert agent.process is not None and agent.process.poll() is None
        agent.stop()
    assert_delivered_or_counted(c, base, "read-only")


@pytest.mark.parametrize("blocker", ["state dir is a file", "buffer.path is a directory"])
def test_an_unusable_state_dir_at_start_is_one_clear_line_and_the_agent_runs(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    blocker: str,
) -> None:
    base, health = f"edge/{device_id}", free_port()
    state = tmp_path / "st"
    extra = ""
    if blocker == "state dir is a file":
        state.write_text("not a directory")
        named, reason = state, "not a directory"
    else:
        named = tmp_path / "db-dir"
        named.mkdir()
        extra = f"  path: {named}\n"
        reason = "is a directory"
    config = storage_config(tmp_path, broker.port, device_id, state=state, health=health)
    if extra:
        config.write_text(config.read_text().replace("buffer:\n", "buffer:\n" + extra))
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(config)
        c.topic(f"{base}/sensor/pi", count=5)
        failed = c.wait_for(lambda m: m.topic == f"{base}/event" and "storage_failed" in m.text)
        assert failed[0].json()["reason"] == reason
        status, body = healthz(health)
        assert status == 503 and body["storage"]["reason"] == reason
    lines = [x for x in agent.log().splitlines() if "running WITHOUT durability" in x]
    assert len(lines) == 1 and str(named) in lines[0], agent.log()
    assert "Traceback" not in agent.log()


def test_a_corrupt_buffer_is_an_event_and_a_new_epoch(
    tmp_path: Path, broker: PrivateBroker, device_id: str, agents: Callable[..., AgentProcess]
) -> None:
    base = f"edge/{device_id}"
    config = write_config(tmp_path / "c.yaml", port=broker.port, device_id=device_id)
    with Collector(broker.port, f"{base}/#") as c:
        first = agents(config)
        (before,) = c.topic(f"{base}/sensor/pi", count=1)
        first.stop()
        (tmp_path / "state" / "buffer.db").write_bytes(b"garbage" * 4096)
        agents(config)
        (event,) = c.wait_for(lambda m: m.topic == f"{base}/event" and "buffer_recovered" in m.text)
        c.wait_for(lambda m: m.topic == f"{base}/sensor/pi" and m.json()["epoch"] != epoch(before))
    body = event.json()
    assert body["reason"] == "corrupt" and "buffer.db.corrupt-" in body["moved_to"]
    after = [m.json() for m in c.on(f"{base}/sensor/pi") if m.json()["epoch"] == body["epoch"]]
    assert after[0]["seq"] == 1
    keys = [(m.json()["epoch"], m.json()["seq"]) for m in c.on(f"{base}/sensor/pi")]
    assert len(keys) == len(set(keys)), "an (epoch, seq) published twice"


def epoch(m: Received) -> int:
    value: int = m.json()["epoch"]
    return value
