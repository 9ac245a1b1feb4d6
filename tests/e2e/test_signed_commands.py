"""Signed commands end to end (CONTRACT section 13): the real agent, a real mosquitto, keys
made by ``edge-agent keygen``: valid, tampered, wrong topic, wrong key, replay, replay
after a restart, stale, Ed25519, and an output that opted out."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.auth import new_hmac_secret, parse_key, sign_command
from agent.demo.broker import PrivateBroker
from agent.mqtt.payloads import iso_ts
from tests.e2e.test_commands import Commander, ready
from tests.support.configs import write_config
from tests.support.mqtt import AgentProcess, Collector, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def commander(broker: PrivateBroker) -> Iterator[Commander]:
    c = Commander(broker.port)
    yield c
    c.close()


def command(state: str, command_id: str, *, ts: float | None = None) -> str:
    body = {"state": state, "id": command_id, "ts": iso_ts(ts or time.time())}
    return json.dumps({**body, "nonce": uuid.uuid4().hex})


def test_signed_commands_end_to_end(
    tmp_path: Path,
    broker: PrivateBroker,
    device_id: str,
    agents: Callable[..., AgentProcess],
    commander: Commander,
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for args in (["keygen", str(keys / "ops.key")], ["keygen", "--ed25519", str(keys / "ctl")]):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    assert (keys / "ops.key").stat().st_mode & 0o777 == 0o600
    ops = parse_key((keys / "ops.key").read_bytes())
    ctl = parse_key((keys / "ctl").read_bytes())
    stranger = parse_key(new_hmac_secret().encode())
    extra = f"""\
commands:
  auth:
    keys:
      ops: {keys / "ops.key"}
      ctl: {keys / "ctl.pub"}
outputs:
  pump:
    driver: relay
    pin: 17
  heater:
    driver: relay
    pin: 18
    auth: false
"""
    config = write_config(
        tmp_path / "c.yaml", port=broker.port, device_id=device_id, interval="5s", extra=extra
    )
    base = f"edge/{device_id}"
    pump, heater = f"{base}/output/pump/set", f"{base}/output/heater/set"
    with Collector(broker.port, f"{base}/#") as c:
        agent = agents(config)
        ready(c, base)

        def send(topic: str, payload: bytes | str) -> Any:
            count = len(c.on(f"{base}/reply")) + 1
            commander.send(topic, payload)
            return c.wait_for(lambda m: m.topic == f"{base}/reply", count=count)[-1].json()

        valid = sign_command(pump, command("on", "v"), ops, "ops")
        assert send(pump, valid)["ok"] is True
        envelope = json.loads(sign_command(pump, command("off", "t"), ops, "ops"))
        tampered = {**envelope, "signed": envelope["signed"].replace('"off"', '"on"')}
        verdicts = {
            "tampered": send(pump, json.dumps(tampered)),
            "wrong topic": send(heater, sign_command(pump, command("on", "w"), ops, "ops")),
            "wrong key": send(pump, sign_command(pump, command("off", "k"), stranger, "ops")),
            "unsigned": send(pump, "off"),
            "replay": send(pump, valid),
            "stale": send(
                pump, sign_command(pump, command("off", "s", ts=time.time() - 60), ops, "ops")
            ),
        }
        assert {k: v["error"] for k, v in verdicts.items()} == {
            "tampered": "unauthenticated",
            "wrong topic": "unauthenticated",
            "wrong key": "unauthenticated",
            "unsigned": "unauthenticated",
            "replay": "replayed",
            "stale": "stale",
        }
        # The output that opted out takes plain commands.
        assert send(heater, "off")["ok"] is True
        assert send(pump, sign_command(pump, command("off", "e"), ctl, "ctl"))["ok"] is True
        # edge-agent send signs with --key/--kid, and waits for the reply.
        for key_file, kid, expected in (
            (keys / "ops.key", "ops", 0),
            (keys / "ctl", "ctl", 0),
            (keys / "ctl", "ops", 1),  # the Ed25519 key under the HMAC key's id
        ):
            result = run_cli(
                "send", "-c", str(config), "pump", "on", "--key", str(key_file), "--kid", kid
            )
            assert result.returncode == expected, (kid, result.stdout, result.stderr)
        assert json.loads(result.stdout)["error"] == "unauthenticated"
        plain = run_cli("send", "-c", str(config), "pump", "off")
        assert plain.returncode == 1 and json.loads(plain.stdout)["error"] == "unauthenticated"
        # A restart: the nonce of the first command is still remembered.
        agent.stop()
        agents(config)
        c.wait_for(lambda m: m.topic == f"{base}/status" and m.text == "online", count=2)
        assert send(pump, valid)["error"] == "replayed"
        events = [m.json() for m in c.on(f"{base}/event") if "command_rejected" in m.text]
        pump_states = [m.json() for m in c.on(f"{base}/output/pump/state")]
    assert {e["reason"] for e in events} >= {"unauthenticated", "replayed", "stale"}
    assert all(e.get("kid") in (None, "ops") for e in events)
    # Only the accepted commands touched the pump: v, e, and the two signed sends.
    commanded = [s["state"] for s in pump_states if s["reason"] == "command"]
    assert commanded == ["on", "off", "on", "on"]
    for secret in (keys / "ops.key").read_text().split():
        assert secret not in "".join(json.dumps(e) for e in events)
