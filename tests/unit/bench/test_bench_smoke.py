"""The fleet scale benchmark's quick mode runs end to end on the real parts (dev server, `python worker.py`,
the hosts' real workflows and placement activity) and prints its figures: a benchmark that broke would otherwise
only be noticed when someone needs the numbers. The figures are checked for presence and consistency
(every placement answered with a host), never for speed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.fleet_scale import COLUMNS, QUICK_PLACEMENTS, QUICK_POINTS
from tests.support.processes import ROOT


@pytest.mark.slow
def test_fleet_scale_quick_mode_prints_every_figure_of_every_point() -> None:
    # Far beyond what the quick mode takes on a loaded 2-core machine (~30 s quiet): only stops a hang.
    run = subprocess.run(
        [sys.executable, "bench/fleet_scale.py", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == COLUMNS[:3])
    table = [line.split() for line in lines[header + 1 :]]
    rows = [dict(zip(COLUMNS, values, strict=True)) for values in table if values and values[0].isdigit()]
    points = [tuple(int(v) for v in p.split("x")) for p in QUICK_POINTS.split(",")]
    assert [(int(r["hosts"]), int(r["games"])) for r in rows] == points, run.stdout
    for r in rows:
        # Every placement was answered, each with a host (the stand-in hosts have room for all of them).
        assert (int(r["placed"]), int(r["cut"]), int(r["unplaced"])) == (QUICK_PLACEMENTS, 0, 0), r
        for figure in ("p50 ms", "p99 ms", "max task ms", "max event KiB", "max payload KiB", "events"):
            assert float(r[figure]) > 0, (figure, r)
        assert int(r["known"]) == int(r["hosts"]), r
        assert int(r["runs"]) >= 1 and int(r["CAN"]) >= 0, r
    text = run.stdout
    assert f"p50 {points[-1][0]} hosts / {points[0][0]} hosts:" in text
    assert f"p99 {points[-1][0]} hosts / {points[0][0]} hosts:" in text
    assert "largest workflow task:" in text
    assert "largest history event or payload:" in text
    assert "largest state carried across continue-as-new:" in text
