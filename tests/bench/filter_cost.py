"""B9: CPU per reading of the filter stage, in-process (``Scheduler._success`` runs the
same ``SensorChain.process``): a BME280 with a 3-filter temperature chain (offset, median
of 5, calibrate_linear) and 3 derived quantities (dew_point, vpd, absolute_humidity),
against the same sensor with no processing (what every reading cost before: rounding to
resolution). Measured with the thread's own CPU clock, so the bench runner's other
threads do not count.

    .venv/bin/python -m tests.bench.filter_cost --readings 20000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from agent.config.load import parse_config
from agent.filters.chain import SensorChain
from agent.runtime.hardware_setup import spec_of

FILTERED = """\
sensors:
  air:
    driver: bme280
    interval: 1s
    filters:
      temperature:
        - offset: -1.2
        - median: {window_size: 5, send_every: 1}
        - calibrate_linear: [[0.0, 0.1], [40.0, 39.8]]
    derived: [dew_point, vpd, absolute_humidity]
"""
PLAIN = "sensors:\n  air:\n    driver: bme280\n    interval: 1s\n"


def chain(text: str) -> SensorChain:
    options = parse_config(text, file="bench.yaml", base_dir=Path("."), environ={}).sensors["air"]
    return SensorChain.for_sensor(spec_of(options), options)


def cpu_us_per_reading(text: str, readings: int, *, seed: int = 1) -> float:
    """Thread CPU per ``process`` call, in µs, over ``readings`` random-walk samples."""
    rng = random.Random(seed)
    samples = []
    t, h, p = 21.0, 45.0, 1013.0
    for _ in range(readings):
        t += rng.uniform(-0.05, 0.05)
        h += rng.uniform(-0.2, 0.2)
        p += rng.uniform(-0.05, 0.05)
        samples.append({"temperature": t, "humidity": h, "pressure": p})
    c = chain(text)
    start = time.thread_time()
    for i, sample in enumerate(samples):
        c.process(sample, float(i))
    return (time.thread_time() - start) / readings * 1e6


def measure(readings: int) -> dict[str, float]:
    cpu_us_per_reading(FILTERED, min(readings, 1000))  # warm up imports and caches
    return {
        "filtered_us": cpu_us_per_reading(FILTERED, readings),
        "plain_us": cpu_us_per_reading(PLAIN, readings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--readings", type=int, default=20_000)
    print(json.dumps(measure(parser.parse_args().readings)))


if __name__ == "__main__":
    main()
