"""specexec reset: tasks back to pending, run fields cleared, everything else kept."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, read_tasks, task, write_spec

from specexec.commands.reset import reset
from specexec.errors import Busy, InvalidInput
from specexec.tasksfile.events import read_events
from specexec.tasksfile.reset import RUN_FIELDS

RUN: dict[str, Any] = {
    "started_at": "2025-01-01T00:00:00Z",
    "completed_at": "2025-01-01T00:05:00Z",
    "duration_minutes": 5.0,
    "attempts": 2,
    "branch": "specexec/s/T",
    "commit": "0123abc",
    "files_changed": ["a.py"],
    "scope_violations": [],
    "result": {"status": "fail"},
}


def _spec(tmp_path: Path) -> Path:
    return write_spec(
        tmp_path / "spec",
        [
            task("T1", status="pass", files=["a.py"], **RUN, **{"x-owner": "ann"}),
            task("T2", status="fail", blocker="tests failed", **RUN),
            task("T3", status="blocked", blocked_by=["T2"], blocker="T2 failed"),
            task("T4", status="in_progress", **RUN),
            task("T5"),
        ],
        **{"x-top": {"keep": True}},
    )


def test_reset_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    assert reset(str(spec)) == 0
    tasks = read_tasks(spec)
    assert all(t["status"] == "pending" for t in tasks.values())
    for t in tasks.values():
        assert not set(RUN_FIELDS) & set(t), t
    # Everything specexec does not write during a run stays.
    assert tasks["T1"]["x-owner"] == "ann" and tasks["T1"]["relevant_files"] == ["a.py"]
    assert tasks["T3"]["parallelization"] == {"blocked_by": ["T2"]}
    assert list(tasks["T1"]) == [
        "id",
        "summary",
        "status",
        "relevant_files",
        "parallelization",
        "x-owner",
    ]
    assert (spec / "tasks.json").read_text().count('"x-top"') == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "T1: pass -> pending",
        "T2: fail -> pending",
        "T3: blocked -> pending",
        "T4: in_progress -> pending",
    ]
    events = [e for e in read_events(spec) if e["kind"] == "reset"]
    assert [(e["task"], e["from"], e["to"]) for e in events] == [
        ("T1", "pass", "pending"),
        ("T2", "fail", "pending"),
        ("T3", "blocked", "pending"),
        ("T4", "in_progress", "pending"),
    ]


def test_reset_failed_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    assert reset(str(spec), failed=True) == 0
    tasks = read_tasks(spec)
    assert [tasks[t]["status"] for t in ("T1", "T2", "T3", "T4", "T5")] == [
        "pass",
        "pending",
        "pending",
        "in_progress",
        "pending",
    ]
    assert "blocker" not in tasks["T2"] and "commit" not in tasks["T2"]
    assert tasks["T1"]["commit"] == "0123abc"  # a passed task keeps its record
    assert capsys.readouterr().out.splitlines() == ["T2: fail -> pending", "T3: blocked -> pending"]


def test_reset_named_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    assert reset(str(spec), ["T1", "T4", "T1"]) == 0
    tasks = read_tasks(spec)
    assert [tasks[t]["status"] for t in ("T1", "T2", "T3", "T4")] == [
        "pending",
        "fail",
        "blocked",
        "pending",
    ]
    assert capsys.readouterr().out.splitlines() == [
        "T1: pass -> pending",
        "T4: in_progress -> pending",
    ]


def test_unknown_id_changes_nothing(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    before = (spec / "tasks.json").read_bytes()
    with pytest.raises(InvalidInput) as info:
        reset(str(spec), ["T1", "NOPE", "ALSO"])
    assert (
        str(info.value) == f"{spec / 'tasks.json'}: no task with id NOPE, ALSO; nothing was reset"
    )
    assert info.value.exit_code == 2
    assert (spec / "tasks.json").read_bytes() == before


def test_nothing_to_reset_does_not_rewrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path / "spec", [task("T1"), task("T2", status="pass")])
    before = (spec / "tasks.json").stat().st_mtime_ns
    assert reset(str(spec), failed=True) == 0
    assert capsys.readouterr().out == "nothing to reset\n"
    assert (spec / "tasks.json").stat().st_mtime_ns == before


def test_reset_is_refused_while_a_run_holds_the_spec(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    before = (spec / "tasks.json").read_bytes()
    runner = subprocess.Popen(
        [
            PY,
            "-c",
            textwrap.dedent(
                """
                import sys
                from specexec.tasksfile.runlock import RunLock
                with RunLock(sys.argv[1]):
                    print("running", flush=True)
                    sys.stdin.readline()
                """
            ),
            str(spec),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "running\n"
        with pytest.raises(Busy, match=f"is being run by pid {runner.pid}"):
            reset(str(spec))
        assert (spec / "tasks.json").read_bytes() == before
    finally:
        runner.communicate("done\n", timeout=30)
    assert reset(str(spec)) == 0  # and works once the run is over


def test_missing_tasks_json(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"no tasks\.json in this folder"):
        reset(str(tmp_path / "empty"))
    assert not (tmp_path / "empty" / ".specexec").exists()
