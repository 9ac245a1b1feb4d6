"""Test helpers: a message collector on a real broker, and the real agent process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Received:
    """A message as the collector saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """Subscribes to a topic filter and lets tests wait for messages with timeouts.

    Args:
        port: the broker's port on 127.0.0.1.
        topic_filter: what to subscribe to (QoS 1).
        protocol: MQTT 5 (default) or 3.1.1.
        retain_as_published: (MQTT 5) see each message's real retain flag, not 0.
        persistent_id: (MQTT 5) a client id with a persistent session: QoS 1 messages
            published while the broker restarts are queued for it and arrive after paho
            reconnects, so the collector misses nothing across restarts.
    """

    def __init__(
        self,
        port: int,
        topic_filter: str,
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        retain_as_published: bool = False,
        persistent_id: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=persistent_id or "", protocol=protocol
        )
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        if v5:
            options = SubscribeOptions(qos=1, retainAsPublished=retain_as_published)
            self.client.on_connect = lambda c, *a: c.subscribe(topic_filter, options=options)
        else:
            self.client.on_connect = lambda c, *a: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        if persistent_id is not None and v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 300
            self.client.reconnect_delay_set(1, 2)
            self.client.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
        else:
            self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError("collector did not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.time())
            )
            self._cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[Received], bool],
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[Received]:
        """The first ``count`` messages matching ``predicate``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = sorted({m.topic for m in self.messages})
                    raise TimeoutError(
                        f"{len(found)}/{count} matching messages after {timeout}s; seen: {topics}"
                    )
                self._cond.wait(left)

    def topic(self, topic: str, *, count: int = 1, timeout: float = 10.0) -> list[Received]:
        return self.wait_for(lambda m: m.topic == topic, count=count, timeout=timeout)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def retained(port: int, topic: str, timeout: float = 3.0) -> Received | None:
    """The retained message on ``topic``, as a fresh subscriber sees it."""
    with Collector(port, topic) as c:
        try:
            return c.topic(topic, timeout=timeout)[0]
        except TimeoutError:
            return None


def agent_command(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "agent", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``edge-agent ARGS`` to completion."""
    return subprocess.run(
        agent_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


class AgentProcess:
    """The real ``edge-agent run`` in a subprocess."""

    def __init__(
        self,
        config: Path,
        *,
        simulate: bool = True,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.python = python
        self.args = ["run", "-c", str(config)] + (["--simulate"] if simulate else [])
        self.env = {**os.environ, **(env or {})}
        self.log_path = config.parent / f"agent-{int(time.time() * 1000)}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            agent_command(*self.args, python=self.python),
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        """The exit status; fails the test with the agent's log if it does not exit."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running after {timeout}s:\n{self.log()}") from None

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> int | None:
        """SIGTERM (or SIGKILL) and wait; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        self._log.close()
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_started(self, timeout: float = 30.0) -> None:
        """Until the agent logs that it started (config read, sampling about to begin):
        a test that times an outage from here does not count the interpreter's start-up,
        which on a loaded machine takes seconds."""
        deadline = time.monotonic() + timeout
        while " started: device " not in self.log():
            assert self.process is not None and self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"not started in {timeout} s:\n{self.log()}"
            time.sleep(0.02)
