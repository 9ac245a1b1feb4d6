"""``edge-agent check --hardware``: open every configured sensor and input once.

Outputs are not opened: opening one drives its pin to the initial level, which must never
happen behind a running agent's back; a hardware PWM output's channel is only looked up.
"""

from __future__ import annotations

from agent.config.load import LoadedConfig
from agent.config.yamlsource import parse
from drivers.base import Options
from drivers.errors import BusError, DriverError
from drivers.hardware import Hardware
from drivers.pwm import channel_problem
from drivers.registry import guarded_open, spec_of
from drivers.scan import scan_i2c_bus


def check_hardware(loaded: LoadedConfig, hardware: Hardware) -> list[str]:
    """One ``FILE:LINE: sensors.NAME: problem`` per configured device that cannot be
    opened on ``hardware`` (which this closes); empty when all of them answer."""
    config = loaded.config
    source = parse(loaded.path.read_text(encoding="utf-8"), file=str(loaded.path))
    problems: list[str] = []
    try:
        devices: list[tuple[str, str, Options]] = [
            *(("sensors", n, o) for n, o in config.sensors.items()),
            *(("inputs", n, o) for n, o in config.inputs.items()),
        ]
        for section, name, options in devices:
            problem = _open_once(options, hardware)
            if problem is not None:
                line = source.line_of((section, name))
                problems.append(f"{loaded.path}:{line or '?'}: {section}.{name}: {problem}")
        for name, output in config.outputs.items():
            problem = _pwm_channel_missing(output, hardware)
            if problem is not None:
                line = source.line_of(("outputs", name, "hardware_pwm"))
                problems.append(
                    f"{loaded.path}:{line or '?'}: outputs.{name}.hardware_pwm: {problem}"
                )
    finally:
        hardware.close()
    return problems


def _open_once(options: Options, hardware: Hardware) -> str | None:
    spec = spec_of(options)
    try:
        driver = guarded_open(spec, options, hardware)
    except BusError as e:
        bus, address = getattr(options, "bus", None), getattr(options, "address", None)
        if isinstance(bus, int) and isinstance(address, int):
            found = scan_i2c_bus(hardware.i2c_bus(bus))
            listed = ", ".join(f"0x{a:02X}" for a in found) or "nothing"
            return f"nothing answers at 0x{address:02X} on /dev/i2c-{bus} (found: {listed})"
        return str(e)
    except DriverError as e:
        return str(e)
    driver.close()
    return None


def _pwm_channel_missing(options: Options, hardware: Hardware) -> str | None:
    """Whether a ``hardware_pwm`` output's channel exists, looked up without opening it."""
    selected = getattr(options, "hardware_pwm", None)
    if selected is None:
        return None
    return channel_problem(hardware, selected.chip, selected.channel)
