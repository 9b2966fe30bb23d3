"""Run metrics and the summary (issue 16, items 2-4): counts after Ctrl-C, the failure
lines, durations in one unit system."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import read_tasks, task, wait_for, write_spec

from specexec import fmt
from specexec.run.excerpt import telling_lines
from specexec.run.report import TaskRecord, run_metrics, summary_lines


def _started(spec: Path) -> set[str]:
    path = spec / ".specexec" / "events.jsonl"
    if not path.is_file():
        return set()
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["task"] for e in events if e["kind"] == "transition" and e["to"] == "in_progress"}


def test_ctrl_c_mid_run_counts_what_ran_as_interrupted(repo: Path) -> None:
    spec = write_spec(
        repo / "specs" / "s",
        [
            task("a", files=["a"], command="sleep 60"),
            task("b", files=["b"], command="sleep 60"),
            task("c", files=["c"], command="true", blocked_by=["a", "b"]),
        ],
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "specexec", "run", str(spec), "--jobs", "2"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _started(spec) == {"a", "b"}, 60, "both tasks to start")
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "0 passed, 0 failed, 0 blocked, 2 interrupted, 1 not run of 3 task(s)" in out, out
    assert "max concurrent 2" in out, out
    (run_dir,) = (spec / ".specexec" / "runs").iterdir()
    m = json.loads((run_dir / "run.json").read_text())
    assert m["tasks"] == {"pass": 0, "fail": 0, "blocked": 0, "pending": 3, "interrupted": 2}
    assert m["tasks_total"] == 3 and m["max_concurrent"] == 2
    assert m["task_seconds_sum"] > 0
    assert {t: r["status"] for t, r in read_tasks(spec).items()} == dict.fromkeys("abc", "pending")


def _rec(
    task: str, status: str, start: float | None, end: float | None, **kw: object
) -> TaskRecord:
    return TaskRecord(spec="s", task=task, status=status, start=start, end=end, **kw)  # type: ignore[arg-type]


def test_summary_names_each_failure_its_cause_and_its_log() -> None:
    m = run_metrics(
        run_id="r1",
        specs=["s"],
        jobs=2,
        schedule="eager",
        started=0.0,
        finished=10.0,
        records=[
            _rec("ok", "pass", 0.0, 2.0),
            _rec(
                "lint",
                "fail",
                0.0,
                0.4,
                blocker="the worker exited with code 2",
                log="/abs/specs/s/.specexec/runs/r1/lint.log",
                excerpt=("error: unrecognized subcommand 'chek'",),
            ),
            _rec("late", "pending", None, None, blocker="not started: the run was interrupted"),
        ],
        critical_path=[],
        waves=[],
        integration_branches=["specexec/s"],
    )
    lines = summary_lines(m)
    assert lines[0] == "1 passed, 1 failed, 0 blocked, 1 not run of 3 task(s)"
    assert lines[1].startswith("wall 10s · task time 2.4s")
    assert (
        "fail s/lint: error: unrecognized subcommand 'chek' "
        "(log: /abs/specs/s/.specexec/runs/r1/lint.log)"
    ) in lines
    assert m["success_rate"] == 0.5 and m["max_concurrent"] == 2


def test_one_duration_format() -> None:
    shown = [fmt.duration(s) for s in (0.0, 0.85, 5.7, 12.4, 250, 3725)]
    assert shown == ["0ms", "850ms", "5.7s", "12s", "4m10s", "1h02m"]
    assert fmt.seconds is fmt.duration


def test_telling_lines_pick_the_cause_not_the_last_line() -> None:
    ruff = (
        "error: unrecognized subcommand 'chek'\n\n  tip: a similar subcommand exists: 'check'\n\n"
        "Usage: ruff [OPTIONS] <COMMAND>\n\nFor more information, try '--help'.\n"
    )
    assert telling_lines(ruff) == ["error: unrecognized subcommand 'chek'"]
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\n    f()\nValueError: bad\n'
    assert telling_lines(tb) == ["ValueError: bad"]
    pytest_out = (
        "tests/t.py F.\n>       assert 1 == 2\nE       assert 1 == 2\ntests/t.py:3: AssertionError\n"
        "FAILED tests/t.py::test_x - assert 1 == 2\n===== 1 failed, 1 passed in 0.05s =====\n"
    )
    picked = telling_lines(pytest_out)
    assert picked[-1] == "FAILED tests/t.py::test_x - assert 1 == 2" and len(picked) == 3
    assert telling_lines("building\ndone: 3 of 4\n") == ["done: 3 of 4"]
    assert telling_lines("error: \x1b[31mred\n") == ["error: \\x1b[31mred"]
