"""A live terminal view of everything a device publishes: the latest value of each topic.

``edge-agent demo`` shows it; ``edge-agent watch`` shows it against any broker and device,
and, when its output is not a terminal, prints one line per message instead
(:meth:`LiveView.lines`).
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

import paho.mqtt.client as paho

from agent.mqtt.client import BrokerTarget, connect


def summarize(text: str) -> str:
    """A reading as ``#seq  temperature=21.53  humidity=40.2``; anything else as it is."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict) and isinstance(body.get("values"), dict):
        values = "  ".join(f"{k}={v}" for k, v in body["values"].items())
        replayed = " (replayed)" if body.get("replayed") else ""
        return f"#{body.get('seq')}{replayed}  {values}"
    return text


class LiveView:
    """Subscribes to ``topic_filter`` and keeps the latest payload of every topic."""

    def __init__(self, target: BrokerTarget, *, topic_filter: str) -> None:
        self.target = target
        self.topic_filter = topic_filter
        self.latest: dict[str, tuple[str, float, bool]] = {}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._client = target.client()
        self._subscribed = threading.Event()
        self._messages: queue.SimpleQueue[tuple[str, str, bool]] = queue.SimpleQueue()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        text = summarize(msg.payload.decode("utf-8", errors="replace"))
        with self._lock:
            self.latest[msg.topic] = (text, time.time(), bool(msg.retain))
            self.counts[msg.topic] = self.counts.get(msg.topic, 0) + 1
        self._messages.put((msg.topic, text, bool(msg.retain)))

    def start(self, timeout: float = 5.0) -> bool:
        """Connect and wait (up to ``timeout``) until the subscription is in place; False
        when it was not in time (paho keeps trying).

        Raises:
            OSError: the broker cannot be reached.
        """
        connect(self._client, self.target)
        self._client.loop_start()
        return self._subscribed.wait(timeout)

    def lines(self, stop: threading.Event) -> Iterator[str]:
        """``topic payload`` for each message as it arrives (``(retained)`` after a retained
        one), until ``stop`` is set."""
        while not stop.is_set():
            try:
                topic, text, retained = self._messages.get(timeout=0.2)
            except queue.Empty:
                continue
            yield f"{topic} {text}" + ("  (retained)" if retained else "")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def render(self, header: str) -> str:
        """One screen: a header, then topic, message count, age and payload per line."""
        width = shutil.get_terminal_size((120, 40)).columns
        now = time.time()
        lines = [
            header,
            "",
            f"{'topic':<44} {'msgs':>5} {'age':>6}  payload",
            "-" * min(width, 120),
        ]
        with self._lock:
            for topic in sorted(self.latest):
                text, at, retained = self.latest[topic]
                age = f"{now - at:5.1f}s"
                flag = "R" if retained else " "
                line = f"{topic:<44} {self.counts[topic]:>5} {age:>6} {flag}{text}"
                lines.append(line[:width])
        if len(lines) == 4:
            lines.append("(waiting for messages...)")
        return "\n".join(lines)

    def draw(self, header: str, out: TextIO = sys.stdout) -> None:
        clear = "\x1b[H\x1b[2J" if out.isatty() else ""
        out.write(clear + self.render(header) + "\n")
        out.flush()
