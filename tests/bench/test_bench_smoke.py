"""The benchmark's pieces work: B1 for ours and the paho floor, one trial, and the report.

No timing is asserted here (timing belongs in `make bench`): only that a measure comes out.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.demo.broker import PrivateBroker
from tests.bench import harness, report
from tests.bench.contenders import Floor, Ours
from tests.bench.harness import Series
from tests.bench.measures import Context, Plan, b1_startup

pytestmark = pytest.mark.e2e


def test_b1_for_ours_and_the_floor_gives_a_number_each(
    broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "WORK", tmp_path / "work")
    monkeypatch.setattr(harness, "LOGS", tmp_path / "logs")
    plan = Plan.make(quick=True)
    ctx = Context(plan, [Ours(), Floor()], {"ours": broker, "floor": broker}, {})

    (row,) = b1_startup(ctx)

    for key in ("ours", "floor"):
        cell = row.cells[key]
        assert isinstance(cell, Series)
        assert len(cell.values) == plan.b1_trials
        assert all(v > 0 and math.isfinite(v) for v in cell.values)
    row.cells["mqttio"] = "n/a: left out"
    text = report.table([row])
    assert "| B1 |" in text and "n/a [1]" in text and "[1] n/a: left out" in text


def test_results_file_keeps_what_is_written_outside_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    report.write(path, "first")
    path.write_text(path.read_text() + "\n## Findings\nkept\n")

    report.write(path, "second")

    text = path.read_text()
    assert "second" in text and "first" not in text and "## Findings\nkept" in text


def test_b9_filter_cost_gives_a_number_per_row() -> None:
    from tests.bench.measures import b9_filter_cost

    ctx = Context(Plan.make(quick=True), [Ours(), Floor()], {}, {"mqttio": "n/a: left out"})
    rows = b9_filter_cost(ctx)
    assert [r.id for r in rows] == ["B9", "B9"]
    for row in rows:
        cell = row.cells["ours"]
        assert isinstance(cell, Series) and all(v > 0 for v in cell.values)
        assert row.cells["floor"] == "n/a: no readings"


def test_b10_flood_gives_a_number_per_row(
    broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.bench.measures import b10_flood

    monkeypatch.setattr(harness, "WORK", tmp_path / "work")
    monkeypatch.setattr(harness, "LOGS", tmp_path / "logs")
    ctx = Context(Plan.make(quick=True), [Ours(), Floor()], {"ours": broker, "floor": broker}, {})
    rows = b10_flood(ctx)
    assert [r.id for r in rows] == ["B10"] * 3
    for row in rows:
        cell = row.cells["ours"]
        assert isinstance(cell, Series) and len(cell.values) == 1
        assert all(math.isfinite(v) for v in cell.values)
        floor = row.cells["floor"]
        assert isinstance(floor, str) and floor.startswith("n/a")
