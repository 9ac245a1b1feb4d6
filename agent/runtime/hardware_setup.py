"""Choosing real or simulated hardware and opening drivers on it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.config.model import Config
from drivers.base import Driver, DriverSpec, Options, Sensor
from drivers.errors import DriverError, PermanentError
from drivers.hardware import Hardware, SimulatedHardware
from drivers.registry import DRIVERS

log = logging.getLogger(__name__)


def make_hardware(config: Config, *, simulate: bool) -> Hardware:
    """Real hardware, or simulated hardware with an emulator for every configured device."""
    if not (simulate or config.simulate):
        return Hardware()
    hardware = SimulatedHardware()
    for options in [*config.sensors.values(), *config.outputs.values(), *config.inputs.values()]:
        spec_of(options).emulate(options, hardware)
    return hardware


def spec_of(options: Options) -> DriverSpec:
    """The registry entry of a config entry."""
    tag = options.__struct_config__.tag
    assert isinstance(tag, str)
    return DRIVERS[tag]


def sensor_opener(options: Options, hardware: Hardware) -> Callable[[], Sensor]:
    """A function that opens the sensor; errors that are not a driver's own are made
    permanent driver errors, so a broken driver is reported, never fatal."""
    spec = spec_of(options)

    def open_sensor() -> Sensor:
        driver = guarded_open(spec, options, hardware)
        assert isinstance(driver, Sensor)
        return driver

    return open_sensor


def guarded_open(spec: DriverSpec, options: Options, hardware: Hardware) -> Driver:
    try:
        return spec.open(options, hardware)
    except DriverError:
        raise
    except Exception as e:  # a driver's own bug must not take the daemon down
        log.debug("opening %s failed", spec.name, exc_info=True)
        raise PermanentError(f"{spec.name} could not be opened: {type(e).__name__}: {e}") from e
