"""Hardware drivers for pi-edge-agent.

This package never imports the agent or MQTT: a driver reads or switches hardware handed
to it by keyword (an SMBus-like bus, an IIO directory, a gpiozero pin factory, a sysfs
root), so every driver runs on a fake as well as on a Raspberry Pi.
"""

#: The public driver API's version (``drivers.base``, ``drivers.errors``, ``drivers.hardware``,
#: ``drivers.protocols``, ``drivers.sim``, ``drivers.testing``): the major number changes
#: when a driver written for it could break, the minor when something is added.
API_VERSION = (1, 1)
