"""Every driver the agent knows, by name. Adding a driver adds one line here."""

from __future__ import annotations

from drivers import bme280, dht, gpio, sht3x, system
from drivers.base import DriverSpec

DRIVERS: dict[str, DriverSpec] = {
    spec.name: spec
    for spec in (
        system.SPEC,
        bme280.SPEC,
        bme280.BMP280_SPEC,
        dht.DHT22_SPEC,
        dht.DHT11_SPEC,
        sht3x.SPEC,
        gpio.RELAY_SPEC,
        gpio.GPIO_SPEC,
    )
}


def sensors() -> list[DriverSpec]:
    return [s for s in DRIVERS.values() if s.kind == "sensor"]


def outputs() -> list[DriverSpec]:
    return [s for s in DRIVERS.values() if s.kind == "output"]


def inputs() -> list[DriverSpec]:
    return [s for s in DRIVERS.values() if s.kind == "input"]
