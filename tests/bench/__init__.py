"""The benchmark (`make bench`): ours against mqtt-io and raw-paho floors (issue #8)."""
