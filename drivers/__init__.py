"""Hardware drivers for pi-edge-agent.

This package never imports the agent or MQTT: a driver reads or switches hardware handed
to it by keyword (an SMBus-like bus, an IIO directory, a gpiozero pin factory, a sysfs
root), so every driver runs on a fake as well as on a Raspberry Pi.
"""
