"""The raw-paho floor of an idle agent, and the B3 echo: the same MQTT work, no agent.

Connects with MQTT 5 and a Last Will (``offline``, retained), sets TCP_NODELAY, publishes
``online``, every output's and input's state (retained, QoS 1), subscribes to
``<base>/output/+/set`` and answers each command with a retained state (the echo), and
publishes a reading of the agent's shape per sensor every ``--interval`` s. Only paho and
the standard library: what any hand-written script would cost.

    python tests/bench/floor_idle.py --port P --base edge/dev --sensors 4 --interval 1
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def iso_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--sensors", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--outputs", type=int, default=0)
    parser.add_argument("--inputs", type=int, default=0)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--keepalive", type=int, default=30)
    args = parser.parse_args()
    base: str = args.base
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.will_set(f"{base}/status", b"offline", qos=1, retain=True)
    client.max_inflight_messages_set(20)

    def on_socket_open(c: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def state(on: bool, reason: str) -> bytes:
        body = {"state": "on" if on else "off", "ts": iso_now(), "reason": reason, "until": None}
        return json.dumps(body, separators=(",", ":")).encode()

    def on_connect(c: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        c.publish(f"{base}/status", b"online", qos=1, retain=True)
        for i in range(args.outputs):
            c.publish(f"{base}/output/o{i}/state", state(False, "boot"), qos=1, retain=True)
        for i in range(args.inputs):
            body = json.dumps({"state": "off", "ts": iso_now()}).encode()
            c.publish(f"{base}/input/i{i}", body, qos=1, retain=True)
        if args.outputs:
            c.subscribe(f"{base}/output/+/set", qos=1)

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        name = msg.topic.split("/")[-2]
        on = msg.payload.strip().lower() in (b"on", b"1", b"true")
        c.publish(f"{base}/output/{name}/state", state(on, "command"), qos=1, retain=True)

    client.on_socket_open = on_socket_open
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, args.keepalive)
    client.loop_start()

    seq = [0] * args.sensors
    t0 = time.monotonic()
    k = 0
    while args.sensors and not stop.is_set():
        for i in range(args.sensors):
            seq[i] += 1
            reading = {
                "sensor": f"s{i}",
                "ts": iso_now(),
                "seq": seq[i],
                "values": {"temperature": 21.53, "humidity": 40.213, "pressure": 1013.249},
            }
            client.publish(
                f"{base}/sensor/s{i}",
                json.dumps(reading, separators=(",", ":")).encode(),
                qos=args.qos,
            )
        k += 1
        stop.wait(max(0.0, t0 + k * args.interval - time.monotonic()))
    stop.wait()
    client.publish(f"{base}/status", b"offline", qos=1, retain=True).wait_for_publish(2)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
