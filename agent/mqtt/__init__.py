"""MQTT: topic names, payload codecs, and the one module that owns the paho client."""
