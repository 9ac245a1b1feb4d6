"""The raw-paho publishing floor (B4, B5): readings as fast as an in-flight window allows.

MQTT 5, TCP_NODELAY, ``max_inflight`` 20 like the agent, and never more than ``--window``
messages unacknowledged (PUBACK for QoS 1; the socket write for QoS 0, as paho reports
it), so paho never queues in memory. Publishes ``online`` (retained) first.

``--duration D``: builds each payload as it goes (a reading of the agent's shape, with the
current time and the next ``seq``) for D seconds. ``--count N``: builds N replayed
readings first, then publishes them all and exits when all are acknowledged (B5's
"drain"). Every ``--report`` seconds it prints ``<monotonic time> <acknowledged>``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def iso(unix_s: float) -> str:
    moment = datetime.fromtimestamp(unix_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def reading(sensor: str, seq: int, values: dict[str, float], *, replayed: bool) -> bytes:
    body: dict[str, Any] = {"sensor": sensor, "ts": iso(time.time()), "seq": seq, "values": values}
    if replayed:
        body["replayed"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--sensor", default="s0")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--count", type=int)
    parser.add_argument("--report", type=float, default=1.0)
    parser.add_argument("--values", default='{"temperature": 21.53}')
    args = parser.parse_args()
    values: dict[str, float] = json.loads(args.values)
    topic = f"{args.base}/sensor/{args.sensor}"
    prebuilt = (
        [reading(args.sensor, i + 1, values, replayed=True) for i in range(args.count)]
        if args.count
        else []
    )

    window = threading.Semaphore(args.window)
    acked = 0
    connected = threading.Event()

    def on_socket_open(c: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_publish(c: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        nonlocal acked
        acked += 1
        window.release()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(20)
    client.on_socket_open = on_socket_open
    client.on_connect = lambda *a: connected.set()
    client.on_publish = on_publish
    client.connect("127.0.0.1", args.port, 30)
    client.loop_start()
    if not connected.wait(10):
        sys.exit("not connected")
    window.acquire()
    client.publish(f"{args.base}/status", b"online", qos=1, retain=True)

    def report() -> None:
        print(f"{time.monotonic():.6f} {acked}", flush=True)

    next_report = time.monotonic() + args.report
    if prebuilt:
        for payload in prebuilt:
            window.acquire()
            client.publish(topic, payload, qos=args.qos)
            if time.monotonic() >= next_report:
                report()
                next_report += args.report
        for _ in range(args.window):  # wait for the last acknowledgements
            window.acquire()
    else:
        end = time.monotonic() + (args.duration or 10.0)
        seq = 0
        while time.monotonic() < end:
            window.acquire()
            seq += 1
            client.publish(topic, reading(args.sensor, seq, values, replayed=False), qos=args.qos)
            if time.monotonic() >= next_report:
                report()
                next_report += args.report
    report()
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
