"""Smoke tests of the benchmark scripts: each of bench/ runs exactly once in the suite,
with --quick, as a user would, and must print its markdown table and hand over figures
that match it. Not timed tests: no figure is judged against its target here (that is
bench/RESULTS.md's job); a figure that cannot be true (a makespan below its lower
bound) fails."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

pytestmark = pytest.mark.slow

# The scripts that hand their figures over with --json; plan_scale and git_cost print
# theirs and run once, through run_all.
OURS = {
    "scheduler_overhead": "Scheduler overhead",
    "schedule_quality": "Schedule quality",
    "write_amplification": "tasks.json write amplification",
    "daemon_idle": "The daemon",
    "run_rss": "Peak RSS",
    "startup": "Start-up and scale",
    "fleet": "Simulated fleet",
}
VERDICT = {True: "yes", False: "**no**", None: "-"}  # common.verdict


def bench(*args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_every_script_is_smoke_run() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"common", "run_all"}
    assert scripts == {*OURS, "plan_scale", "git_cost", "gitpython"}, (
        "a new script needs its smoke run"
    )


def test_gitpython_comparison_runs() -> None:
    proc = bench(str(BENCH / "gitpython.py"), "-n", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "git CLI" in proc.stdout and "GitPython" in proc.stdout, proc.stdout


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
        assert isinstance(t["value"], str) and t["value"].strip(), t
        assert t["met"] is True or t["met"] is False or t["met"] is None, t
        assert t["load"], "every figure carries the load average"
        # The figure handed over is the one printed, with its verdict.
        row = (
            f"| {t['metric']} | {t['value']} | {t['target']} | {VERDICT[t['met']]} | {t['load']} |"
        )
        assert row in proc.stdout, (row, proc.stdout[-2000:])
    assert data["commands"], "the exact commands are recorded"
    if name == "schedule_quality":
        # A makespan below max(critical path, work / jobs) would mean the measurement is
        # wrong (the log lines or the bound), not that a scheduler is good.
        eager = next(t for t in data["targets"] if "lower bound" in t["metric"])
        assert float(eager["value"]) >= 0.97


def test_run_all_writes_results_with_machine_and_summary(tmp_path: Path) -> None:
    # plan_scale and git_cost (the scripts without --json) are smoke-run here, once.
    out = tmp_path / "RESULTS.md"
    proc = bench(
        str(BENCH / "run_all.py"), "--quick", "--only", "plan_scale,git_cost", "--output", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Machine", "## Summary", "## Plan scale", "## Per-task git cost"):
        assert heading in text, heading
    assert "failed (exit" not in text, text[-3000:]
    assert "| nproc |" in text and "| load average when written |" in text
    assert "python bench/plan_scale.py --quick" in text
    assert "| specexec pooled worktree (default) |" in text
    # git_cost judges its targets: each line carries a verdict and the measured ratio.
    assert re.search(r"- pooled <= [\d.]+x fresh: (ok|MISSED) \(\d+\.\d+x\)", text), text
    assert re.search(r"- fresh <= [\d.]+x hand-written: (ok|MISSED) ", text), text
    assert "## Summary" in proc.stdout, "the table is printed too"

    # Hand-written notes survive a rewrite, and so do the sections not run again.
    notes = "<!-- notes: kept by run_all -->\nhot spots, by hand\n<!-- /notes -->"
    out.write_text(text.replace("## Plan scale", notes + "\n\n## Plan scale", 1))
    again = bench(str(BENCH / "run_all.py"), "--rerender", "--output", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    kept = out.read_text()
    assert "hot spots, by hand" in kept
    assert "## Per-task git cost" in kept and "## Plan scale" in kept


def test_run_all_rejects_an_unknown_script() -> None:
    proc = bench(str(BENCH / "run_all.py"), "--quick", "--only", "no_such_bench")
    assert proc.returncode == 2
    assert "unknown script" in proc.stderr
