"""The config file's shape: typed, immutable, strict.

Each driver's own options live beside the driver (``drivers/*.py``); here they are joined
into tagged unions on ``driver:`` (:data:`DRIVER_UNIONS`) so the JSON Schema and validation
cover them all. The union's members are looked up by tag: validating a config imports the
modules of the drivers it names, not of every driver (see :func:`drivers.registry.spec`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

from agent.filters.config import with_processing
from drivers import registry
from drivers.base import (
    DURATION_JSON_SCHEMA,
    InputOptions,
    Options,
    OutputOptions,
    PositiveSeconds,
    Seconds,
    SensorOptions,
)

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=64)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
#: MQTT 5's Session Expiry Interval is a four-byte integer of seconds.
SessionExpirySeconds = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        le=4294967295,
        extra={"duration": True},
        extra_json_schema=DURATION_JSON_SCHEMA,
    ),
]


class DriverUnion:
    """The tagged union of one kind's driver options, its members found by tag.

    A sensor's member is the driver's options extended with the agent's per-sensor
    processing options (filters, derived, publish...; agent/filters/config.py), made once
    per driver so that equal configs have equal types.
    """

    def __init__(self, base: type[Options], kind: str) -> None:
        self.base = base
        self.kind = kind
        self._members: dict[str, type[Options]] = {}

    def member(self, tag: str) -> type[Options] | None:
        """The options struct of driver ``tag`` if it is a driver of this kind."""
        found = self._members.get(tag)
        if found is None:
            spec = registry.spec(tag)
            if spec is None or spec.kind != self.kind:
                return None
            options = spec.options
            if issubclass(options, SensorOptions):
                options = with_processing(options, spec.name)
            found = self._members[tag] = options
        return found

    def members(self) -> list[type[Options]]:
        """Every driver's options struct (imports every driver's module)."""
        kinds = {"sensor": registry.sensors, "output": registry.outputs, "input": registry.inputs}
        found = [self.member(spec.name) for spec in kinds[self.kind]()]
        return [m for m in found if m is not None] or [self.base]

    def union(self) -> object:
        """The ``Union`` of :meth:`members`, for the JSON Schema."""
        return Union[tuple(self.members())]  # noqa: UP007


# The declared types of Config.sensors/outputs/inputs are the bases; the config walker
# (agent/config/validate.py) resolves them through these, the schema uses their union().
SensorConfig = SensorOptions
OutputConfig = OutputOptions
InputConfig = InputOptions
DRIVER_UNIONS: dict[type[Options], DriverUnion] = {
    SensorOptions: DriverUnion(SensorOptions, "sensor"),
    OutputOptions: DriverUnion(OutputOptions, "output"),
    InputOptions: DriverUnion(InputOptions, "input"),
}


class TLSConfig(Options, frozen=True):
    """TLS to the broker. Present means TLS; there is never a plaintext fallback."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    #: Skip the hostname check. Never the default.
    insecure: bool = False


class ReconnectConfig(Options, frozen=True):
    """Exponential reconnect backoff with full jitter."""

    min_delay: PositiveSeconds = 1.0
    max_delay: PositiveSeconds = 60.0

    def __post_init__(self) -> None:
        if self.max_delay < self.min_delay:
            raise ValueError("max_delay must not be below min_delay")


class MQTTConfig(Options, frozen=True):
    """The broker connection."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "localhost"
    #: Default 1883, or 8883 with TLS.
    port: Port | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=65535)] = 30
    topic_prefix: Annotated[
        str, msgspec.Meta(pattern=r"^[^#+/\x00]+(/[^#+/\x00]+)*$", min_length=1)
    ] = "edge"
    session_expiry: SessionExpirySeconds = 3600.0
    tls: TLSConfig | None = None
    reconnect: ReconnectConfig = ReconnectConfig()

    def __post_init__(self) -> None:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")

    @property
    def effective_port(self) -> int:
        """The port to connect to, after the TLS-dependent default."""
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883


class BufferConfig(Options, frozen=True):
    """Store-and-forward of readings while the broker is unreachable."""

    path: str | None = None
    max_messages: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 100_000
    max_age: PositiveSeconds = 7 * 86400.0
    durability: Literal["offline", "always"] = "offline"
    #: Readings kept in memory while the disk cannot be written (full, read-only, ...).
    memory_max_messages: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000


ResponsePrefix = Annotated[
    str, msgspec.Meta(pattern=r"^[^#+/\x00$][^#+/\x00]*(/[^#+/\x00]+)*$", min_length=1)
]


KeyId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class AuthConfig(Options, frozen=True):
    """Signed commands (CONTRACT section 13)."""

    #: key id -> key file: an HMAC-SHA256 secret (0600/0640) or an Ed25519 public key (PEM).
    keys: dict[KeyId, Annotated[str, msgspec.Meta(min_length=1)]] = {}
    #: Unsigned commands are refused; an output's ``auth: false`` opts it out.
    required: bool = True


class CommandsConfig(Options, frozen=True):
    """How remote commands are judged."""

    #: Commands whose ``ts`` is older than this are refused (``stale``).
    max_age: PositiveSeconds = 30.0
    #: ... and so are those whose ``ts`` is further ahead than this (the sender's clock
    #: may be a little fast; a command dated far ahead could be replayed later).
    max_skew: Seconds = 5.0
    #: MQTT 5 response topics must be under this prefix; null: any topic outside
    #: ``<topic_prefix>/#``, the Home Assistant prefix and ``$`` topics.
    response_prefix: ResponsePrefix | None = None
    #: Signed commands; absent: no keys, nothing signed required.
    auth: AuthConfig | None = None
    #: Commands a second per output on average, in bursts of 5 s' worth (at least 50);
    #: beyond it: ``rate_limited``. Only commands whose signature holds (or to outputs
    #: that take unsigned ones) count, so forged commands cannot use it up.
    max_rate: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 10.0
    #: Commands waiting to be judged, at most; beyond it they are dropped and counted.
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100


class HomeAssistantConfig(Options, frozen=True):
    """Home Assistant MQTT discovery."""

    discovery: bool = False
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[^#+\x00]+$")] = "homeassistant"
    #: device: one retained message describes the device and all its entities (Home
    #: Assistant 2024.12 and later); components: one message per entity, for consumers that
    #: read only that form (openHAB's binding before device discovery, Domoticz, older HA).
    #: Switching migrates the entities in place (same unique ids).
    discovery_mode: Literal["device", "components"] = "device"


class HealthConfig(Options, frozen=True):
    """The local HTTP health endpoint."""

    #: "127.0.0.1:9108" serves /healthz and /metrics; null: no endpoint.
    listen: (
        Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}$")] | None
    ) = None
    #: How often <base>/health is published.
    publish_interval: PositiveSeconds = 60.0
    #: /healthz turns 503 when the broker has been unreachable this long.
    max_offline: PositiveSeconds = 300.0


class Config(Options, frozen=True):
    """The whole config file."""

    #: Default: the hostname, reduced to [A-Za-z0-9_-].
    device_id: Name | None = None
    simulate: bool = False
    state_dir: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    mqtt: MQTTConfig = MQTTConfig()
    buffer: BufferConfig = BufferConfig()
    commands: CommandsConfig = CommandsConfig()
    sensors: dict[Name, SensorConfig] = {}
    outputs: dict[Name, OutputConfig] = {}
    inputs: dict[Name, InputConfig] = {}
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    health: HealthConfig = HealthConfig()
