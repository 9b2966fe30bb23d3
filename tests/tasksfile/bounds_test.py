"""tasksfile.bounds: a finished task's record within its share of tasks.json; the rest
in the run folder, read back only from there."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import task, write_spec

from specexec.tasksfile import bounds, jsonio
from specexec.tasksfile.schema import load_spec
from specexec.tasksfile.store import DELETE, TasksStore


def _store(tmp_path: Path, budget: int) -> tuple[TasksStore, Path]:
    spec = write_spec(tmp_path / "s", [task("T1")])
    run_dir = spec / ".specexec" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    store = TasksStore(spec)
    store.record_budget = budget
    return store, run_dir


def test_a_record_that_fits_is_unchanged(tmp_path: Path) -> None:
    store, run_dir = _store(tmp_path, bounds.RECORD_MAX)
    fields = {"blocker": DELETE, "result": {"status": "pass", "data": [1, 2]}}
    assert bounds.bound_record(store, "T1", fields, run_dir) == fields
    assert not list(run_dir.iterdir())


def test_a_big_record_is_cut_to_its_share_and_kept_whole_in_the_run_folder(
    tmp_path: Path,
) -> None:
    least = bounds.min_record("s", "T1")
    store, run_dir = _store(tmp_path, least)
    files = [f"src/f{i}.py" for i in range(10_000)]
    fields = {
        "status": "fail",
        "blocker": "b" * 50_000,
        "files_changed": files,
        "scope_violations": files[:5000],
        "branch": DELETE,
        "result": {"status": "fail", "source": "file", "notes": "n" * 9000, "data": ["x"] * 9},
    }
    out = bounds.bound_record(store, "T1", fields, run_dir)
    shown = {k: v for k, v in out.items() if v is not DELETE}
    assert len(jsonio.encode(shown)) <= least
    assert out["branch"] is DELETE
    assert out["files_changed"] == files[: len(out["files_changed"])]
    res = out["result"]
    assert res["truncated"] is True and res["status"] == "fail"
    assert res["data"] == {"truncated": True, "file": res["file"]}
    assert res["omitted"]["files_changed"] == len(files) - len(out["files_changed"])
    record = json.loads((store.spec_dir / res["file"]).read_text())
    assert record["files_changed"] == files and len(record["blocker"]) == 50_000
    assert bounds.full_result(store.spec_dir, res) == fields["result"]


def test_full_result_reads_only_record_files_of_the_runs_folder(tmp_path: Path) -> None:
    """The pointer is in a file anyone may edit: one leading elsewhere (a key, another
    spec's secrets) is never read into a dependent task's prompt."""
    spec = tmp_path / "s"
    (spec / ".specexec" / "runs" / "r").mkdir(parents=True)
    secret = tmp_path / "secret.record.json"
    secret.write_text(json.dumps({"result": {"data": ["secret"]}}))
    (spec / ".specexec" / "runs" / "r" / "link.record.json").symlink_to(secret)
    for where in (str(secret), "../secret.record.json", ".specexec/runs/r/link.record.json"):
        pointer = {"status": "pass", "truncated": True, "file": where}
        assert bounds.full_result(spec, pointer) == pointer


def test_the_share_of_each_task_is_the_room_left(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s", [task(f"T{i}") for i in range(4)])
    store = TasksStore(spec)
    size = (spec / "tasks.json").stat().st_size
    assert bounds.plan_records(store, load_spec(spec)[0]) == bounds.RECORD_MAX
    doc = json.loads((spec / "tasks.json").read_text())
    doc["pad"] = "p" * (jsonio.MAX_BYTES - size - 400_000)
    (spec / "tasks.json").write_text(json.dumps(doc, indent=2))
    left = jsonio.MAX_BYTES - (spec / "tasks.json").stat().st_size
    assert bounds.plan_records(store, load_spec(spec)[0]) == left // 4
    assert bounds.room_problem(load_spec(spec)[0], 4) is None


def test_no_room_is_a_problem_naming_the_sizes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s", [task(f"T{i}") for i in range(100)])
    doc = json.loads((spec / "tasks.json").read_text())
    doc["pad"] = "p" * (jsonio.MAX_BYTES - 60_000)
    (spec / "tasks.json").write_text(json.dumps(doc, indent=2))
    problem = bounds.room_problem(load_spec(spec)[0], 4)
    assert problem is not None and "no room to record this run" in problem
    assert "(8,388,608 bytes) limit" in problem
