"""The Markdown table, the machine's description, and RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path

from agent.demo.broker import find_mosquitto
from tests.bench.harness import Series
from tests.bench.measures import Row

BEGIN = "<!-- bench:begin: written by tests/bench/run.py; edit outside these markers -->"
END = "<!-- bench:end -->"
COLUMNS = (("ours", "ours"), ("mqttio", "mqtt-io 2.7.0"), ("floor", "paho floor"))


def machine() -> list[str]:
    """One line each: CPU, kernel, Python and library versions."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = found.group(1).strip() if found else "?"
    except OSError:
        pass
    try:
        first = subprocess.run(
            [find_mosquitto(), "-h"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()[0]
        mosquitto = first.removeprefix("mosquitto version ").strip()
    except (OSError, IndexError, RuntimeError, subprocess.TimeoutExpired):
        mosquitto = "?"
    return [
        f"CPU: {cpu}, {os.cpu_count()} cores; kernel {platform.release()}",
        f"Python {platform.python_version()}, paho-mqtt {metadata.version('paho-mqtt')}, "
        f"mosquitto {mosquitto}",
    ]


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "?"
    return f"{value:.{digits}f}"


def _cell(cell: Series | str | None, digits: int, footnotes: list[str]) -> str:
    if cell is None:
        return ""
    if isinstance(cell, str):
        if cell not in footnotes:
            footnotes.append(cell)
        word = "error" if cell.startswith("error") else "n/a"
        return f"{word} [{footnotes.index(cell) + 1}]"
    if not cell.values:
        return "?"
    text = _fmt(cell.median, digits)
    if len(cell.values) > 1:
        text += f" ({_fmt(cell.low, digits)}–{_fmt(cell.high, digits)})"
    return text


def table(rows: list[Row]) -> str:
    """The Markdown table: medians (min–max over trials), ratios of medians, targets."""
    footnotes: list[str] = []
    head = ["id", "measure", *(title for _, title in COLUMNS)]
    head += ["ours ÷ mqtt-io", "ours ÷ floor", "target for ours", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        medians = {
            key: cell.median
            for key, cell in row.cells.items()
            if isinstance(cell, Series) and cell.values and not math.isnan(cell.median)
        }
        cells = [_cell(row.cells.get(key), row.digits, footnotes) for key, _ in COLUMNS]
        ratios = []
        for other in ("mqttio", "floor"):
            if "ours" in medians and other in medians and medians[other] != 0:
                ratios.append(f"{medians['ours'] / medians[other]:.2f}")
            else:
                ratios.append("")
        verdict = row.check(medians) if row.check is not None else None
        result = {True: "met", False: "**missed**", None: "—"}[verdict]
        lines.append(
            "| " + " | ".join([row.id, row.measure, *cells, *ratios, row.target, result]) + " |"
        )
    lines.append("")
    lines += [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
    return "\n".join(lines)


def section(
    rows: list[Row], *, quick: bool, elapsed_s: float, load: tuple[float, float], extra: list[str]
) -> str:
    """What goes between the markers of RESULTS.md."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    notes = list(dict.fromkeys(note for row in rows for note in row.notes))  # no repeats
    parts = [
        f"Run {when}, {'quick (BENCH_QUICK=1) ' if quick else ''}"
        f"`make bench`, {elapsed_s / 60:.1f} min.",
        "",
        *(f"- {line}" for line in [*machine(), *extra]),
        f"- Load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at the end "
        "(other sessions' tests share the 2 cores: a load above ~0.5 means a noisy run).",
        "",
        "Cells: median over trials (min–max); ratios are of medians.",
        "",
        table(rows),
    ]
    if notes:
        parts += ["", "Notes from this run:", "", *(f"- {note}" for note in notes)]
    return "\n".join(parts)


def write(path: Path, body: str) -> None:
    """Replace the text between the markers (or create the file), keeping the rest."""
    block = f"{BEGIN}\n{body}\n{END}"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            before, rest = text.split(BEGIN, 1)
            after = rest.split(END, 1)[1]
            path.write_text(before + block + after)
            return
    path.write_text(f"# Benchmark results\n\n{block}\n")
