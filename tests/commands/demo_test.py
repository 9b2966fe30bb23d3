"""`specexec demo` ends with the summary, the integration branch and where the full
report is; the report itself stays in its file (issue 16, item 6)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli


def test_demo_ends_with_summary_branch_and_report(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    res = run_cli("demo", "--dir", str(dest))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.rstrip().splitlines()
    tail = "\n".join(lines[-10:])
    assert "10 passed, 0 failed, 0 blocked of 10 task(s)" in tail, tail
    assert "integration branch: specexec/textkit (" in tail, tail
    assert lines[-1] == f"full report: specexec report {dest / 'specs' / 'textkit'}", tail
    # Not the whole report nor the git graph: a progress line per task and a short end.
    assert "```mermaid" not in res.stdout and "<handoff>" not in res.stdout
    assert len(lines) <= 2 * 10 + 15, res.stdout
    report = run_cli("report", str(dest / "specs" / "textkit"))
    assert report.returncode == 0 and report.stdout.count("| pass |") == 10, report.stdout
