"""The running daemon: wiring config, hardware, sampling and MQTT together."""
