"""`make bench`: ours against mqtt-io 2.7.0 and raw-paho floors, B1-B8 of issue #8, B9 of #16.

    .venv/bin/python -m tests.bench.run            # full run (~10 min), writes RESULTS.md
    BENCH_QUICK=1 .venv/bin/python -m tests.bench.run   # smoke run (~2 min)
    .venv/bin/python -m tests.bench.run --only B1,B3
    .venv/bin/python -m tests.bench.run --only PI   # B1 and B3 at 10 % of one core

A quick run (or one with ``--only``) writes ``tests/bench/_work/RESULTS-quick.md`` and leaves
RESULTS.md alone.
Set ``BENCH_NO_MQTTIO=1`` to leave mqtt-io out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from agent.demo.broker import BrokerUnavailable, PrivateBroker
from tests.bench import mqttio, report
from tests.bench.contenders import Contender, Floor, MqttIo, Ours
from tests.bench.harness import BENCH, WORK, Series, log_dir
from tests.bench.measures import (
    Context,
    Plan,
    Row,
    b1_startup,
    b2_b7_idle,
    b3_commands,
    b4_throughput,
    b5_drain,
    b6_lateness,
    b8_wakeups,
    b9_filter_cost,
    b10_flood,
    pi_class,
)

RESULTS = BENCH / "RESULTS.md"

MEASURES: list[tuple[str, str, Callable[[Context], list[Row]]]] = [
    ("B1", "start → retained `online`", b1_startup),
    ("B3", "command → retained state round trip", b3_commands),
    ("B4", "sustained readings/s", b4_throughput),
    ("B5", "drain of buffered readings", b5_drain),
    ("B6", "scheduling lateness", b6_lateness),
    ("B2", "idle RSS and CPU; B7 disk writes", b2_b7_idle),
    ("B8", "idle wake-ups", b8_wakeups),
    ("B9", "filter stage CPU per reading", b9_filter_cost),
    ("B10", "a command flood: probe, memory, readings", b10_flood),
    ("PI", "B1 and B3 at 10 % of one core", pi_class),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BENCH_QUICK")))
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. B1,B3")
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS.md")
    args = parser.parse_args(argv)
    only = {x.strip().upper() for x in args.only.split(",") if x.strip()}
    out: Path = args.out or (WORK / "RESULTS-quick.md" if args.quick or only else RESULTS)
    plan = Plan.make(args.quick)

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    python, why = mqttio.ensure()
    contenders: list[Contender] = [Ours()]
    unavailable: dict[str, str] = {}
    extra: list[str] = []
    if python is not None:
        contenders.append(MqttIo(python))
        extra.append(f"mqtt-io {mqttio.version_of(python)} in {mqttio.VENV.name}")
    else:
        unavailable["mqttio"] = why
        print(f"bench: mqtt-io left out: {why}", file=sys.stderr)
    contenders.append(Floor())

    brokers: dict[str, PrivateBroker] = {}
    nodelay: dict[str, PrivateBroker] = {}
    try:
        for c in contenders:
            brokers[c.key] = PrivateBroker(workdir=WORK / f"broker-{c.key}").start()
            nodelay[c.key] = PrivateBroker(
                workdir=WORK / f"broker-{c.key}-nodelay", extra_config="set_tcp_nodelay true"
            ).start()
    except BrokerUnavailable as e:
        print(f"bench: {e}", file=sys.stderr)
        for broker in [*brokers.values(), *nodelay.values()]:
            broker.close()
        return 1
    ctx = Context(plan, contenders, brokers, unavailable, nodelay_brokers=nodelay)
    rows: list[Row] = []
    try:
        for mid, title, measure in MEASURES:
            if only and mid not in only and not (mid == "B2" and "B7" in only):
                continue
            elapsed = time.monotonic() - started
            print(f"bench: [{elapsed:5.0f} s] {mid}: {title}", file=sys.stderr, flush=True)
            try:
                rows += measure(ctx)
            except Exception as e:
                traceback.print_exc()
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                cells: dict[str, Series | str] = {
                    c.key: f"error in {mid}: {first}" for c in contenders
                }
                rows.append(Row(mid, title, "—", cells))
    finally:
        for broker in [*brokers.values(), *nodelay.values()]:
            broker.close()
    rows.sort(key=lambda r: r.id)
    elapsed = time.monotonic() - started
    body = report.section(
        rows,
        quick=plan.quick,
        elapsed_s=elapsed,
        load=(load_start, os.getloadavg()[0]),
        extra=extra,
    )
    print(body)
    report.write(out, body)
    print(f"bench: wrote {out} in {elapsed / 60:.1f} min", file=sys.stderr)
    if any(
        isinstance(cell, str) and cell.startswith("error")
        for r in rows
        for cell in r.cells.values()
    ):
        print(f"bench: the logs of every process are in {log_dir()}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir(), ignore_errors=True)
    for child in WORK.iterdir():  # configs, state dirs, 50 000-reading buffers
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
