"""Where a command-line client (``edge-agent watch``, ``send``) finds the broker and device.

Either from an agent config (``-c FILE``, else ``$EDGE_AGENT_CONFIG`` or
``/etc/edge-agent/config.yaml``): its broker, port, protocol, credentials and TLS, its
topic prefix and device id; or from ``--host``/``--port`` (anonymous, plain MQTT 5, topic
prefix ``edge``), for any broker and any device.
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.load import default_config_path, load_config
from agent.config.model import TLSConfig
from agent.mqtt.transport import tls_context

DEFAULT_PREFIX = "edge"


@dataclass(frozen=True)
class BrokerTarget:
    """A broker to connect to and the device to talk to there."""

    host: str = "localhost"
    port: int = 1883
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
    tls: TLSConfig | None = None
    topic_prefix: str = DEFAULT_PREFIX
    #: None: every device (``+``), where a command allows it.
    device_id: str | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    def client(self, client_id: str = "") -> paho.Client:
        """A paho client for this broker (not yet connected)."""
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls is not None:
            client.tls_set_context(tls_context(self.tls))
        return client

    def base(self, device_id: str | None = None) -> str:
        """``<prefix>/<device>``; ``+`` for every device when none is known."""
        return f"{self.topic_prefix}/{device_id or self.device_id or '+'}"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``-c FILE`` or ``--host H [--port P]``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="take broker, credentials and device from this agent config "
        "(default: $EDGE_AGENT_CONFIG or /etc/edge-agent/config.yaml)",
    )
    where.add_argument("--host", default=None, help="this broker instead (anonymous, MQTT 5)")
    parser.add_argument("--port", type=int, default=None, help="with --host (default 1883)")


class NoTarget(ValueError):
    """Neither a config nor ``--host``: the message says what to pass."""


def target_from_args(args: argparse.Namespace) -> BrokerTarget:
    """The broker and device the arguments name.

    Raises:
        ConfigError: the config file is invalid.
        NoTarget: no ``--host`` and no config file to read.
    """
    if args.host is not None:
        return BrokerTarget(host=args.host, port=args.port or 1883)
    if args.port is not None:
        raise NoTarget("--port needs --host (with -c, the config names the port)")
    path = args.config or default_config_path()
    if args.config is None and not path.exists():
        raise NoTarget(f"no config at {path}: pass -c FILE, or --host HOST [--port PORT]")
    mqtt_config = load_config(path).config
    mqtt = mqtt_config.mqtt
    host = mqtt.host
    return BrokerTarget(
        host=host,
        port=mqtt.effective_port,
        protocol=mqtt.protocol,
        username=mqtt.username,
        password=mqtt.password,
        tls=mqtt.tls,
        topic_prefix=mqtt.topic_prefix,
        device_id=mqtt_config.device_id,
    )


def connect(client: paho.Client, target: BrokerTarget, keepalive: int = 30) -> None:
    """Connect (blocking, so that an unreachable broker is an :class:`OSError` here)."""
    try:
        client.connect(target.host, target.port, keepalive)
    except (OSError, socket.gaierror) as e:
        raise OSError(f"cannot reach the broker at {target.where}: {e}") from e
