"""``edge-agent``: the command line (CONTRACT section 2)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config.load import LoadedConfig

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus uses it
EXIT_NO_REPLY = 75  # EX_TEMPFAIL: the broker or the agent did not answer; try again later

log = logging.getLogger("agent")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edge-agent`` console script."""
    # Start-up allocates ~60 000 objects that live as long as the process (modules,
    # classes, the config): the cyclic collector would walk them again and again while
    # they are made (~5 % of the CPU to come online). `run` turns it back on once the
    # agent is set up (start_up_done); every other command before it runs.
    gc.disable()
    try:
        parser = _parser()
        args = parser.parse_args(argv)
    except BaseException:  # --help, --version, a usage error
        gc.enable()
        raise
    if args.command != "run":
        gc.enable()
    if args.command is None:
        parser.print_help()
        return 2
    handler = {
        "run": cmd_run,
        "check": cmd_check,
        "read": cmd_read,
        "drivers": cmd_drivers,
        "schema": cmd_schema,
        "demo": cmd_demo,
        "status": cmd_status,
        "scan": cmd_scan,
        "watch": cmd_watch,
        "send": cmd_send,
        "keygen": cmd_keygen,
    }[args.command]
    if args.command in _SEES_DRIVERS:
        _report_driver_problems()
    try:
        return handler(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `edge-agent drivers | head`
        sys.stderr.close()
        return EXIT_OK


#: Commands that load drivers, and so report broken driver packages (once, on stderr).
_SEES_DRIVERS = {"run", "check", "read", "drivers", "schema", "scan"}


def _report_driver_problems() -> None:
    from drivers.registry import problems

    for problem in problems():
        print(f"edge-agent: warning: {problem}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Sensor telemetry agent for the Raspberry Pi."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=None,
            help="config file (default: $EDGE_AGENT_CONFIG or /etc/edge-agent/config.yaml)",
        )

    run = sub.add_parser("run", help="run the daemon")
    config_arg(run)
    run.add_argument("--simulate", action="store_true", help="use emulated hardware")
    check = sub.add_parser("check", help="validate the config")
    config_arg(check)
    check.add_argument(
        "--hardware", action="store_true", help="also open every configured sensor and input once"
    )
    check.add_argument("--simulate", action="store_true", help="with --hardware: emulated")
    scan = sub.add_parser("scan", help="what is connected: I2C, 1-Wire, IIO, serial")
    config_arg(scan)
    scan.add_argument(
        "--simulate", action="store_true", help="scan the emulated hardware of the config"
    )
    read = sub.add_parser("read", help="read sensors once and print one JSON reading per line")
    config_arg(read)
    read.add_argument("--simulate", action="store_true", help="use emulated hardware")
    read.add_argument("sensors", nargs="*", metavar="SENSOR", help="default: every sensor")
    status = sub.add_parser("status", help="one screen: connection, sensors, outputs, buffer")
    config_arg(status)
    from agent.mqtt.client import add_target_arguments

    watch = sub.add_parser(
        "watch", help="live view of what a device publishes (any broker, any device)"
    )
    add_target_arguments(watch)
    watch.add_argument(
        "device",
        nargs="?",
        metavar="DEVICE",
        help="device id (default: the config's; with --host: every device)",
    )
    send = sub.add_parser("send", help="send a command to an output and print its reply")
    add_target_arguments(send)
    send.add_argument("output", metavar="OUTPUT")
    send.add_argument("state", metavar="STATE", help="on, off or toggle")
    send.add_argument("--duration", type=float, default=None, help="seconds, then switch back")
    send.add_argument("--level", type=float, default=None, help="a level (outputs that take one)")
    send.add_argument("--device", default=None, help="device id (default: the config's)")
    send.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the reply (10)"
    )
    send.add_argument(
        "--key",
        type=Path,
        default=None,
        help="sign the command with this key file: an HMAC secret or an Ed25519 private key",
    )
    send.add_argument("--kid", default=None, help="the key's id on the agent (commands.auth.keys)")
    keygen = sub.add_parser(
        "keygen", help="make a key for signed commands: an HMAC secret or an Ed25519 pair"
    )
    keygen.add_argument("file", type=Path, help="where to write the key (0600)")
    keygen.add_argument(
        "--ed25519",
        action="store_true",
        help="an Ed25519 pair: FILE is the private key (the sender's), FILE.pub the public "
        "one (the agent's); default: an HMAC-SHA256 secret both sides keep",
    )
    sub.add_parser("drivers", help="list drivers, their quantities and options")
    sub.add_parser("schema", help="print the JSON Schema of the config")
    demo = sub.add_parser("demo", help="private broker + simulated agent + live view")
    demo.add_argument("-c", "--config", type=Path, default=None, help="default: config/demo.yaml")
    demo.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def _load(path: Path | None) -> LoadedConfig:
    from agent.config.load import default_config_path, load_config

    return load_config(path or default_config_path())


def setup_logging(level: str = "info", *, secrets: Iterable[str] = ()) -> None:
    """journald (with structured fields) under systemd, else stderr; ``secrets`` are
    redacted from every line (see ``agent.runtime.logging_setup``)."""
    from agent.runtime import logging_setup

    logging_setup.setup_logging(level, secrets=secrets)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        gc.enable()  # on every way out; start_up_done has done it on the way in


def start_up_done() -> None:
    """The collector back on, the objects made so far left out of its walks for good
    (``gc.freeze``: the few hundred garbage cycles start-up leaves stay, a few KiB)."""
    gc.freeze()
    gc.enable()


def _run(args: argparse.Namespace) -> int:
    import asyncio

    # Every file the agent makes is its own (0600, directories 0700), under systemd
    # (UMask=0077 in the unit) or not.
    os.umask(0o077)
    loaded = _load(args.config)
    from agent.runtime.logging_setup import config_secrets

    setup_logging(loaded.config.log_level, secrets=config_secrets(loaded.config))
    from agent.runtime.daemon import Agent
    from agent.runtime.systemd import Notifier

    agent = Agent(loaded, simulate=args.simulate, notifier=Notifier())

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
        # Runs once agent.run first waits: outputs, buffer, inputs, sampling and the
        # connection attempt are set up by then.
        loop.call_soon(start_up_done)
        await agent.run(stop)

    try:
        asyncio.run(run())
    except Exception:
        log.exception("edge-agent stopped on an unexpected error")
        return EXIT_FAILURE
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    c = loaded.config
    print(
        f"{loaded.path}: OK: device {c.device_id}, {len(c.sensors)} sensors, "
        f"{len(c.outputs)} outputs, {len(c.inputs)} inputs, broker "
        f"{c.mqtt.host}:{c.mqtt.effective_port} (MQTT {c.mqtt.protocol}"
        f"{', TLS' if c.mqtt.tls else ''})"
    )
    if args.hardware:
        from agent.runtime.hardware_check import check_hardware
        from agent.runtime.hardware_setup import make_hardware

        problems = check_hardware(loaded, make_hardware(c, simulate=args.simulate))
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE if problems else EXIT_OK
    return EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from agent.runtime.hardware_setup import make_hardware
    from drivers.hardware import Hardware
    from drivers.registry import DRIVERS
    from drivers.scan import render, scan

    if args.simulate:
        hardware = make_hardware(_load(args.config).config, simulate=True)
    else:
        hardware = Hardware()
    try:
        print(render(scan(hardware), DRIVERS.values()))
    finally:
        hardware.close()
    return EXIT_OK


def cmd_read(args: argparse.Namespace) -> int:
    import msgspec

    from agent.filters.chain import SensorChain
    from agent.mqtt.payloads import Reading, encode_json
    from agent.runtime.hardware_setup import guarded_open, make_hardware, spec_of
    from drivers.base import Sensor
    from drivers.errors import DriverError

    loaded = _load(args.config)
    config = loaded.config
    unknown = [name for name in args.sensors if name not in config.sensors]
    if unknown:
        print(f"no such sensor: {', '.join(unknown)}", file=sys.stderr)
        return EXIT_FAILURE
    names = args.sensors or list(config.sensors)
    hardware = make_hardware(config, simulate=args.simulate)
    failed = 0
    try:
        for name in names:
            options = config.sensors[name]
            spec = spec_of(options)
            ts = time.time()
            try:
                driver = guarded_open(spec, options, hardware)
                assert isinstance(driver, Sensor)
                with driver:
                    raw = driver.read()
            except (DriverError, OSError) as e:
                failed += 1
                print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            chain = SensorChain.for_sensor(spec, options)
            sample = chain.process(raw, time.monotonic())
            # seq counts per sensor: this is each one's first (and only) reading here; the
            # daemon's counters in the state dir are not touched.
            reading = Reading(sensor=name, ts=ts, seq=1, values=sample.filtered)
            if chain.processing.filters or chain.processing.derived_names:
                # filtered and raw side by side; one JSON object per line all the same
                body = {**msgspec.json.decode(reading.encode()), "raw": sample.raw}
                print(encode_json(body).decode())
            else:
                print(reading.encode().decode())
    finally:
        hardware.close()
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """From the agent's /healthz when health.listen is set, else from the broker."""
    from agent.observability.status import from_broker, from_healthz, render

    config = _load(args.config).config
    try:
        if config.health.listen is not None:
            view = from_healthz(config.health.listen)
        else:
            view = from_broker(config)
    except OSError as e:
        where = config.health.listen or f"{config.mqtt.host}:{config.mqtt.effective_port}"
        print(f"edge-agent status: cannot reach {where}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(render(view))
    healthy = view.healthy if view.healthy is not None else bool(view.online)
    return EXIT_OK if healthy else EXIT_FAILURE


def cmd_watch(args: argparse.Namespace) -> int:
    """The live view until Ctrl-C; one line per message when stdout is not a terminal."""
    import threading

    from agent.demo.liveview import LiveView
    from agent.mqtt.client import NoTarget, target_from_args

    try:
        target = target_from_args(args)
    except NoTarget as e:
        print(f"edge-agent watch: {e}", file=sys.stderr)
        return EXIT_FAILURE
    base = target.base(args.device)
    view = LiveView(target, topic_filter=f"{base}/#")
    try:
        subscribed = view.start()
    except OSError as e:
        print(f"edge-agent watch: {e}", file=sys.stderr)
        return EXIT_NO_REPLY
    if not subscribed:
        print(f"edge-agent watch: {target.where} did not answer", file=sys.stderr)
        view.stop()
        return EXIT_NO_REPLY
    stop = threading.Event()
    # Ctrl-C sets the event, as SIGTERM does, rather than raising KeyboardInterrupt at
    # whatever the main thread is doing: the stop is then always the same path.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    header = f"edge-agent watch - {base}/# on {target.where}. Ctrl-C stops."
    try:
        if sys.stdout.isatty():
            while not stop.is_set():
                view.draw(header)
                stop.wait(1.0)
        else:
            print(header, flush=True)
            for line in view.lines(stop):
                print(line, flush=True)
    finally:
        view.stop()
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    """Publish one command, print its reply; 0 only when the reply says ok."""
    from agent.commands.send import build_command, command_payload, new_command_id, send_command
    from agent.mqtt.client import NoTarget, target_from_args
    from agent.mqtt.topics import Topics

    try:
        target = target_from_args(args)
    except NoTarget as e:
        print(f"edge-agent send: {e}", file=sys.stderr)
        return EXIT_FAILURE
    device = args.device or target.device_id
    if device is None:
        print("edge-agent send: --device ID is needed with --host", file=sys.stderr)
        return EXIT_FAILURE
    command_id = new_command_id()
    command = build_command(
        args.state,
        command_id=command_id,
        ts=time.time(),
        duration=args.duration,
        level=args.level,
    )
    topics = Topics.for_device(target.topic_prefix, device)
    payload = command_payload(command)
    if args.key is not None:
        from agent.commands.auth import KeyFileError, new_nonce, parse_key, sign_command

        if not args.kid:
            print("edge-agent send: --key needs --kid (the key's id on the agent)", file=sys.stderr)
            return EXIT_FAILURE
        try:
            key = parse_key(args.key.read_bytes())
        except (OSError, KeyFileError) as e:
            print(f"edge-agent send: {args.key}: {e}", file=sys.stderr)
            return EXIT_FAILURE
        command["nonce"] = new_nonce()
        payload = sign_command(
            topics.output_set(args.output), command_payload(command).decode(), key, args.kid
        )
    try:
        reply = send_command(
            target,
            topics,
            args.output,
            payload,
            command_id=command_id,
            timeout=args.timeout,
        )
    except OSError as e:
        print(f"edge-agent send: {e}", file=sys.stderr)
        return EXIT_NO_REPLY
    if reply is None:
        print(
            f"edge-agent send: no reply from {topics.base} on {target.where} in "
            f"{args.timeout:g} s (is the agent running? edge-agent watch shows it)",
            file=sys.stderr,
        )
        return EXIT_NO_REPLY
    print(json.dumps(reply, ensure_ascii=False))
    return EXIT_OK if reply.get("ok") is True else EXIT_FAILURE


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key; never overwrites one."""
    from agent.commands import auth

    files: list[tuple[Path, bytes]]
    if args.ed25519:
        try:
            private, public = auth.new_ed25519_pair()
        except ImportError:
            print(
                "edge-agent keygen: Ed25519 needs the cryptography package: pip install "
                "'pi-edge-agent[ed25519]' (Raspberry Pi OS: apt install python3-cryptography)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        public_path = args.file.with_name(args.file.name + ".pub")
        files = [(args.file, private), (public_path, public)]
    else:
        files = [(args.file, auth.new_hmac_secret().encode())]
    for path, _ in files:
        if path.exists():
            print(f"edge-agent keygen: {path} exists; not overwriting it", file=sys.stderr)
            return EXIT_FAILURE
    for path, data in files:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        print(f"wrote {path} (0600)")
    return EXIT_OK


def cmd_drivers(args: argparse.Namespace) -> int:
    import msgspec

    from agent.filters.derived import DERIVED
    from drivers.registry import BROKEN, DRIVERS, ORIGINS

    for spec in DRIVERS.values():
        print(f"{spec.name} ({spec.kind}, {ORIGINS[spec.name]}): {spec.summary}")
        if spec.i2c_addresses:
            print("  i2c addresses: " + ", ".join(f"0x{a:02X}" for a in spec.i2c_addresses))
        if spec.quantities:
            print("  quantities:")
            for name, q in spec.quantities.items():
                unit = f" [{q.unit}]" if q.unit else ""
                print(f"    {name}{unit}, resolution {q.resolution:g}: {q.description}")
            derivable = [d for d in DERIVED.values() if set(d.inputs) <= set(spec.quantities)]
            if derivable:
                print("  derived quantities (`derived:`; sea_level_pressure with `altitude:`):")
                for d in derivable:
                    q = d.quantity
                    print(f"    {d.name} [{q.unit}], resolution {q.resolution:g}: {q.description}")
        print("  options (default):")
        for f in msgspec.structs.fields(spec.options):
            default = "required" if f.required else json.dumps(_default(f))
            print(f"    {f.encode_name}: {default}")
        if spec.sample:
            print("  sample:")
            print(textwrap.indent(spec.sample.rstrip(), "    "))
        print()
    for broken in BROKEN.values():
        print(f"{broken.name} (unusable): {broken}")
    return EXIT_OK


def _default(field: object) -> object:
    import msgspec

    f = field
    assert isinstance(f, msgspec.structs.FieldInfo)
    value = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
    return msgspec.to_builtins(value)


def cmd_schema(args: argparse.Namespace) -> int:
    from agent.config.schema import config_schema

    print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(config=args.config, duration=args.duration)
