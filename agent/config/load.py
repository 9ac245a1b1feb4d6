"""Reading a config file: YAML -> validated, immutable :class:`Config`, or every problem."""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from agent.commands.auth import Key, KeyFileError, parse_key
from agent.config.model import Config
from agent.config.validate import INVALID, Problems, convert, format_path
from agent.config.yamlsource import KeyPath, Source, YAMLSyntaxError, parse
from agent.errors import ConfigError, ConfigProblem
from agent.filters.config import check_processing, processing_of
from drivers.registry import spec_of

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/config.yaml")
#: The largest config file read. A real one is a few kilobytes; parsing is not free
#: (a 27 MB file took 144 s and 2.7 GB) and the agent parses it on every reload.
MAX_CONFIG_BYTES = 1024 * 1024
#: The largest secret file (``password_file``) read.
MAX_SECRET_BYTES = 64 * 1024
#: Kernel file systems whose "files" are not files a config may live in.
_PSEUDO_FS_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


class FileRefused(Exception):
    """A file that is not read: not a regular file, too large, unreadable."""


def read_bounded(path: Path, *, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    A FIFO, a device (``/dev/zero``, ``/dev/urandom``) or a file under ``/proc``, ``/sys``
    or ``/dev`` is refused without reading from it (a FIFO would block forever); so is a
    file larger than ``limit``. The file is opened non-blocking, then checked by
    ``fstat``: what is checked is what is read.

    Raises:
        FileRefused: with a message fit for the user.
    """
    resolved = path.resolve()
    if any(resolved.is_relative_to(root) for root in _PSEUDO_FS_ROOTS):
        raise FileRefused(f"{resolved} is not a regular file (a kernel file system)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FileRefused(f"cannot read: {e.strerror}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(mode)
                else "a directory"
                if stat.S_ISDIR(mode)
                else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "not a file"
            )
            raise FileRefused(f"not a regular file ({kind})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise FileRefused(f"cannot read: {e.strerror}") from e
    finally:
        os.close(fd)
    if size > limit:
        raise FileRefused(f"larger than {limit // 1024} KiB: refusing to read it")
    return b"".join(chunks)


def decode_utf8(raw: bytes) -> str:
    """``raw`` as UTF-8 text.

    Raises:
        FileRefused: saying on which line the first undecodable byte is.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise FileRefused(f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from e


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from. (Its fingerprint for ``info`` is
    ``agent.config.digest``: a hash of the file would be a hash of its password.)"""

    config: Config
    path: Path


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$EDGE_AGENT_CONFIG``, else ``/etc/edge-agent/config.yaml``."""
    env = os.environ if environ is None else environ
    return Path(env.get("EDGE_AGENT_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate ``path``.

    Raises:
        ConfigError: listing every problem as ``FILE:LINE: key.path: message``.
    """
    file = str(path)
    try:
        raw = read_bounded(path, limit=MAX_CONFIG_BYTES)
    except FileRefused as e:
        raise ConfigError([ConfigProblem(file, None, "", str(e))]) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        message = f"not UTF-8 text (byte 0x{raw[e.start]:02x})"
        raise ConfigError([ConfigProblem(file, line, "", message)]) from e
    config = parse_config(text, file=file, base_dir=path.parent, environ=environ)
    return LoadedConfig(config=config, path=path)


def parse_config(
    text: str, *, file: str, base_dir: Path, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate config ``text``; relative file paths in it are taken from ``base_dir``."""
    try:
        source = parse(text, file=file, environ=environ)
    except YAMLSyntaxError as e:
        raise ConfigError([ConfigProblem(file, e.line, "", f"invalid YAML: {e}")]) from e
    # A value holding a substituted one (a list, a mapping) is as secret as what it holds.
    problems = Problems(
        secret_paths={path[:n] for path in source.substituted for n in range(1, len(path) + 1)}
    )
    for path, _line, message in source.problems:
        problems.add(path, message)
    if source.data is None or source.data == {}:
        source.data = {}
    config = convert(source.data, Config, (), problems)
    if config is not INVALID and not problems.items:
        _check_references(config, problems)
        config = _resolve(config, base_dir, problems)
    if problems.items:
        raise ConfigError(_located(source, problems))
    assert isinstance(config, Config)
    return config


#: Room left in a topic for ``/<device_id>/output/<name>/state`` and the like (names are
#: at most 64 characters): a prefix longer than MQTT's 65535 bytes minus this cannot work.
TOPIC_SUFFIX_ROOM = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_mqtt_string(value: str | None, where: KeyPath, problems: Problems) -> None:
    """No NUL or control character: MQTT forbids U+0000 and brokers drop the rest."""
    if value is not None and (match := _CONTROL.search(value)):
        problems.add(where, f"must not contain control characters, found {match.group()!r}")


def _check_topic_base(value: str, where: KeyPath, problems: Problems) -> None:
    """A prefix every topic starts with: no ``$`` level, no control characters, and short
    enough that the longest topic stays within MQTT's 65535 bytes."""
    _check_mqtt_string(value, where, problems)
    if value.startswith("$"):
        problems.add(
            where, "must not start with `$`: such topics are the broker's ($SYS), not for clients"
        )
    size = len(value.encode("utf-8"))
    if size > 65535 - TOPIC_SUFFIX_ROOM:
        problems.add(
            where,
            f"is {size} bytes long: with the device id and a topic's suffix it would pass"
            f" MQTT's limit of 65535 bytes (at most {65535 - TOPIC_SUFFIX_ROOM})",
        )


def _check_limits(config: Config, problems: Problems) -> None:
    """What the types allow but MQTT or the runtime do not."""
    mqtt = config.mqtt
    _check_topic_base(mqtt.topic_prefix, ("mqtt", "topic_prefix"), problems)
    _check_topic_base(config.homeassistant.prefix, ("homeassistant", "prefix"), problems)
    _check_mqtt_string(mqtt.client_id, ("mqtt", "client_id"), problems)
    _check_mqtt_string(mqtt.username, ("mqtt", "username"), problems)
    _check_mqtt_string(mqtt.host, ("mqtt", "host"), problems)
    listen = config.health.listen
    if listen is not None:
        port = int(listen.rpartition(":")[2])
        if not 1 <= port <= 65535:
            problems.add(("health", "listen"), f"port {port} is not from 1 to 65535")


def _check_references(config: Config, problems: Problems) -> None:
    response_prefix = config.commands.response_prefix
    if response_prefix is not None:
        for reserved in (config.mqtt.topic_prefix, config.homeassistant.prefix):
            if response_prefix == reserved or response_prefix.startswith(reserved + "/"):
                problems.add(
                    ("commands", "response_prefix"),
                    f"must not be under {reserved}/#: replies there could pass for a "
                    "device's own state or a discovery message",
                )
    _check_limits(config, problems)
    for name, output in config.outputs.items():
        for i, other in enumerate(output.interlock):
            if other == name:
                problems.add(("outputs", name, "interlock", i), "an output cannot interlock itself")
            elif other not in config.outputs:
                problems.add(("outputs", name, "interlock", i), f"no output named {other!r}")
    for name, sensor in config.sensors.items():
        spec = spec_of(sensor)
        if sensor.interval < spec.min_interval_s:
            problems.add(
                ("sensors", name, "interval"),
                f"{spec.name} cannot be read more often than every {spec.min_interval_s:g}s",
            )
        if sensor.interval <= 0:
            problems.add(("sensors", name, "interval"), "must be greater than 0")
        for key, value in sensor.simulation_spec.items():
            where = ("sensors", name, "simulation", key)
            if key == "fail_rate":
                if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                    problems.add(where, f"must be a number from 0.0 to 1.0, got {value!r}")
            elif key not in (quantities := spec.quantities_of(sensor)):
                problems.add(
                    where,
                    f"{spec.name} has no quantity {key!r}; it has "
                    f"{', '.join(quantities)} (and fail_rate)",
                )
        for option, quantity in spec.links.items():
            linked = getattr(sensor, option, None)
            link_key: KeyPath = ("sensors", name, option)
            if linked is None:
                continue
            if linked == name:
                problems.add(link_key, "a sensor cannot take its own reading")
            elif (source := config.sensors.get(linked)) is None:
                problems.add(link_key, f"no sensor named {linked!r}")
            else:
                source_spec = spec_of(source)
                if quantity not in source_spec.quantities_of(source):
                    problems.add(
                        link_key, f"sensor {linked!r} ({source_spec.name}) reports no {quantity}"
                    )
        check_processing(
            ("sensors", name),
            spec,
            processing_of(sensor),
            problems.add,
            spec.quantities_of(sensor),
        )


def _resolve(config: Config, base_dir: Path, problems: Problems) -> Config:
    """Fill defaults that depend on the machine, and read referenced files."""
    mqtt = config.mqtt
    if mqtt.password_file is not None:
        where = ("mqtt", "password_file")
        data = read_secret_file(base_dir / mqtt.password_file, where, problems)
        try:
            password = data.decode("utf-8").rstrip("\r\n") if data is not None else None
        except UnicodeDecodeError:
            problems.add(where, f"{base_dir / mqtt.password_file} is not UTF-8 text")
            password = None
        if password is not None:
            mqtt = msgspec.structs.replace(mqtt, password=password, password_file=None)
    if mqtt.tls is not None:
        for key in ("ca_certs", "certfile", "keyfile"):
            value = getattr(mqtt.tls, key)
            if value is not None and not (base_dir / value).is_file():
                problems.add(("mqtt", "tls", key), f"no such file: {base_dir / value}")
            elif value is not None and key == "keyfile":
                problem = loose_permissions(base_dir / value)
                if problem is not None:
                    problems.add(("mqtt", "tls", key), problem)
        if (mqtt.tls.certfile is None) != (mqtt.tls.keyfile is None):
            problems.add(("mqtt", "tls"), "certfile and keyfile go together")
    commands = config.commands
    if commands.auth is not None:
        keys = {kid: str(base_dir / file) for kid, file in commands.auth.keys.items()}
        for kid, file in keys.items():
            load_key(Path(file), ("commands", "auth", "keys", kid), problems)
        if commands.auth.required and not keys:
            problems.add(("commands", "auth", "keys"), "required: true needs at least one key")
        auth = msgspec.structs.replace(commands.auth, keys=keys)
        commands = msgspec.structs.replace(commands, auth=auth)
    for name, output in config.outputs.items():
        if output.auth and (commands.auth is None or not commands.auth.keys):
            problems.add(("outputs", name, "auth"), "needs keys in commands.auth.keys")
    device_id = config.device_id or default_device_id()
    return msgspec.structs.replace(config, mqtt=mqtt, commands=commands, device_id=device_id)


def load_key(path: Path, where: KeyPath, problems: Problems) -> Key | None:
    """The key in ``path``, or None with the problem recorded. Every key file must be
    private as a secret is (an Ed25519 public key is not secret, but one that others may
    replace lets them sign)."""
    data = read_secret_file(path, where, problems)
    if data is None:
        return None
    try:
        return parse_key(data)
    except KeyFileError as e:
        problems.add(where, f"{path}: {e}")
        return None


def load_keys(config: Config) -> dict[str, Key]:
    """The keys of ``commands.auth`` of a loaded config (paths already absolute).

    Raises:
        ConfigError: a key file changed since the config was checked.
    """
    auth = config.commands.auth
    if auth is None:
        return {}
    problems = Problems()
    keys = {}
    for kid, file in auth.keys.items():
        key = load_key(Path(file), ("commands", "auth", "keys", kid), problems)
        if key is not None:
            keys[kid] = key
    if problems.items:
        raise ConfigError(
            [ConfigProblem(file, None, format_path(path), m) for path, m in problems.items]
        )
    return keys


def loose_permissions(path: Path) -> str | None:
    """Why a file holding a secret is too open, or None. As OpenSSH treats private keys:
    nothing for others, and no writing by the group (a group read is how the service user
    gets a root-owned 0640 file)."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if mode & 0o027:
        return (
            f"{path} is mode {stat.S_IMODE(mode):04o}: a secret must not be readable or "
            "writable by others; chmod 0600 (or 0640 with the group edge-agent)"
        )
    return None


def read_secret_file(path: Path, where: KeyPath, problems: Problems) -> bytes | None:
    """The bytes of a file holding a secret, or None with the problem recorded (which
    never quotes the file's content)."""
    try:
        data = read_bounded(path, limit=MAX_SECRET_BYTES)
    except FileRefused as e:
        problems.add(where, f"cannot use {path}: {e}")
        return None
    problem = loose_permissions(path)
    if problem is not None:
        problems.add(where, problem)
        return None
    if not data.strip():
        problems.add(where, f"{path} is empty")
        return None
    return data


def default_device_id() -> str:
    """The hostname, reduced to the characters a topic level may safely hold."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "edge-agent"


def _located(source: Source, problems: Problems) -> list[ConfigProblem]:
    out = []
    for path, message in problems.items:
        line = source.line_of(path)
        out.append(ConfigProblem(source.file, line, format_path(path), message))
    out.sort(key=lambda p: p.line or 0)
    return out


__all__ = ["ConfigError", "KeyPath", "LoadedConfig", "default_config_path", "load_config"]
