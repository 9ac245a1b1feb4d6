"""The drivers' own error tree.

Drivers know nothing of the agent, so they have their own root. Every failure is either
*transient* (worth retrying: a bus NACK, EIO, a checksum error, a conversion that did not
finish in time) or *permanent* (retrying cannot help: wrong chip id, missing device, bad
option). Leaves also subclass the builtin that best describes them, as gpiozero does.
"""

from __future__ import annotations


class DriverError(Exception):
    """Root of every error raised by a driver."""


class TransientError(DriverError):
    """A failure that may not recur: the scheduler retries it."""


class PermanentError(DriverError):
    """A failure that retrying cannot fix until the hardware or config changes."""


class BusError(TransientError, OSError):
    """The bus did not complete a transaction (I2C NACK, EIO, ETIMEDOUT)."""


class ChecksumError(TransientError, ValueError):
    """The device answered, but the data failed its integrity check."""


class MeasurementTimeout(TransientError, TimeoutError):
    """A conversion did not finish within its time budget."""


class ImplausibleReading(TransientError, ValueError):
    """The device returned a value outside its range or a physically impossible jump."""


class DeviceNotFound(PermanentError, FileNotFoundError):
    """The bus, device node or sysfs entry does not exist."""


class WrongDevice(PermanentError, ValueError):
    """Something answered at the address, but it is not the chip the driver expects."""


class HardwareConfigError(PermanentError, ValueError):
    """An option the hardware cannot honour (e.g. a pin already in use)."""
