"""Choosing real or simulated hardware for a config, and the openers the scheduler uses."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.config.model import Config
from drivers.base import Options, Sensor
from drivers.hardware import Hardware, SimulatedHardware
from drivers.registry import guarded_open, spec_of

log = logging.getLogger(__name__)


def make_hardware(config: Config, *, simulate: bool) -> Hardware:
    """Real hardware, or simulated hardware with an emulator for every configured device."""
    if not (simulate or config.simulate):
        return Hardware()
    hardware = SimulatedHardware()
    for options in [*config.sensors.values(), *config.outputs.values(), *config.inputs.values()]:
        spec_of(options).emulate(options, hardware)
    return hardware


def sensor_opener(options: Options, hardware: Hardware) -> Callable[[], Sensor]:
    """A function that opens the sensor; errors that are not a driver's own are made
    permanent driver errors, so a broken driver is reported, never fatal."""
    spec = spec_of(options)

    def open_sensor() -> Sensor:
        driver = guarded_open(spec, options, hardware)
        assert isinstance(driver, Sensor)
        return driver

    return open_sensor


__all__ = ["guarded_open", "make_hardware", "sensor_opener", "spec_of"]
