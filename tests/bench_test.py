"""Smoke tests of the benchmark scripts: each runs with --quick, as a user would, prints
its markdown table and hands over its figures. Not timed tests: no figure is judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

pytestmark = pytest.mark.slow

OURS = {
    "scheduler_overhead": "Scheduler overhead",
    "schedule_quality": "Schedule quality",
    "write_amplification": "tasks.json write amplification",
    "daemon_idle": "The daemon",
    "run_rss": "Peak RSS",
}


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("name", sorted(OURS))
def test_script_prints_its_table_and_figures(name: str, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = bench(str(BENCH / f"{name}.py"), "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"## {OURS[name]}" in proc.stdout
    assert "| metric | value | target | met | load |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["title"].startswith(OURS[name])
    assert data["targets"], "every script reports at least one figure"
    for t in data["targets"]:
        assert t["value"] and t["met"] in (True, False, None)
        assert t["load"], "every figure carries the load average"
    assert data["commands"], "the exact commands are recorded"


def test_schedule_quality_never_beats_the_lower_bound(tmp_path: Path) -> None:
    # A makespan below max(critical path, work / jobs) would mean the measurement is
    # wrong (the log lines or the bound), not that a scheduler is good.
    out = tmp_path / "q.json"
    proc = bench(str(BENCH / "schedule_quality.py"), "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    eager = next(t for t in json.loads(out.read_text())["targets"] if "lower bound" in t["metric"])
    assert float(eager["value"]) >= 0.97


def test_run_all_writes_results_with_machine_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    proc = bench(
        str(BENCH / "run_all.py"),
        "--quick",
        "--only",
        "plan_scale,write_amplification,git_cost",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Machine", "## Summary", "## tasks.json write amplification"):
        assert heading in text
    assert "| nproc |" in text and "| load average when written |" in text
    assert "python bench/write_amplification.py --quick" in text
    assert "## Summary" in proc.stdout, "the table is printed too"

    # Hand-written notes survive a rewrite, and so do the sections not run again.
    notes = "<!-- notes: kept by run_all -->\nhot spots, by hand\n<!-- /notes -->"
    out.write_text(text.replace("## Plan scale", notes + "\n\n## Plan scale", 1))
    again = bench(str(BENCH / "run_all.py"), "--rerender", "--output", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    kept = out.read_text()
    assert "hot spots, by hand" in kept
    assert "## tasks.json write amplification" in kept and "## Plan scale" in kept


def test_run_all_rejects_an_unknown_script() -> None:
    proc = bench(str(BENCH / "run_all.py"), "--quick", "--only", "no_such_bench")
    assert proc.returncode == 2
    assert "unknown script" in proc.stderr
