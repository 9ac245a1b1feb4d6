"""pi-edge-agent: the daemon."""

__version__ = "0.1.0"
