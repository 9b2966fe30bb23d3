from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import task, write_spec

from specexec.errors import InvalidInput, UnsafePath
from specexec.tasksfile.schema import id_problem, json_schema, load_spec


def _problems(spec_dir: Path) -> list[str]:
    with pytest.raises(InvalidInput) as ei:
        load_spec(spec_dir)
    return list(ei.value.problems)


def test_minimal_spec_defaults(repo: Path) -> None:
    d = write_spec(repo / "specs" / "s", [{"id": "T1", "summary": "x"}])
    spec, warnings = load_spec(d)
    (t,) = spec.tasks
    assert spec.name == "s"
    assert (t.status, t.max_retries, t.timeout_minutes, t.relevant_files) == (
        "pending",
        1,
        30.0,
        (),
    )
    assert any("relevant_files" in w and '"T1"' in w for w in warnings)


def test_every_problem_reported_at_once(repo: Path) -> None:
    (repo / "outside").mkdir()
    os.symlink("/etc", repo / "etc-link")
    d = write_spec(
        repo / "specs" / "bad",
        [
            task("T1", blocked_by=["T3"], files=["a.py"]),
            task("T1", files=["b.py"]),  # duplicate
            task("t2", files=["c.py"]),
            task("T2", files=["/abs/path.py"]),  # case collision + absolute
            task("T3", blocked_by=["T1"], files=["../up.py"]),
            task("T4", blocked_by=["T4", "nope"], files=["C:/win.py"]),
            task("bad id!", files=["x\u0000y"]),
            task("T5", files=["etc-link/passwd"]),
            {"id": "T6", "summary": "s", "relevant_files": "not-a-list", "estimated_minutes": "5"},
        ],
    )
    problems = "\n".join(_problems(d))
    for needle in (
        'task "T1": field id: duplicate id "T1"',
        'task "T2": field id: "T2" differs from "t2" only in letter case',
        "task \"T2\": field relevant_files[0]: '/abs/path.py'",
        "task \"T3\": field relevant_files[0]: '../up.py'",
        'task "T4": field parallelization.blocked_by: a task cannot be blocked by itself',
        'task "T4": field parallelization.blocked_by: unknown task "nope"',
        "'C:/win.py'",
        'task "bad id!": field id:',
        "NUL",
        "escapes the repository through a symlink",
        'task "T6": field relevant_files:',
        'task "T6": field estimated_minutes:',
    ):
        assert needle in problems, f"missing {needle!r} in:\n{problems}"
    assert str(d / "tasks.json") in problems


def test_cycle_is_named_as_a_path(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "cyc",
        [task("T1", blocked_by=["T3"]), task("T2"), task("T3", blocked_by=["T1"])],
    )
    problems = "\n".join(_problems(d))
    assert "T1 -> T3 -> T1" in problems or "T3 -> T1 -> T3" in problems


def test_existing_directory_is_a_directory_pattern(repo: Path) -> None:
    (repo / "src" / "pkg").mkdir(parents=True)
    d = write_spec(repo / "specs" / "s", [task("T1", files=["src/pkg", "src/x.py"])])
    spec, _ = load_spec(d)
    assert spec.tasks[0].relevant_files == ("src/pkg/", "src/x.py")


def test_symlinked_spec_folder_leading_out_is_refused(repo: Path, tmp_path: Path) -> None:
    real = write_spec(tmp_path / "elsewhere" / "s", [task("T1")])
    (repo / "specs").mkdir()
    os.symlink(real, repo / "specs" / "s")
    with pytest.raises(UnsafePath):
        load_spec(repo / "specs" / "s")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("T1", True),
        ("a.b_c-1", True),
        ("-x", False),
        ("a..b", False),
        ("x.lock", False),
        ("x.", False),
        ("x" * 64, True),
        ("x" * 65, False),
        ("é", False),
        ("", False),
    ],
)
def test_id_rules(value: str, ok: bool) -> None:
    assert (id_problem(value) is None) is ok


def test_schema_describes_required_fields() -> None:
    schema = json_schema()
    task_def = schema["$defs"]["TaskModel"]
    assert set(task_def["required"]) == {"id", "summary"}
    json.dumps(schema)  # serialisable


def test_round_trip_with_unknown_fields_at_every_level_is_byte_identical(repo: Path) -> None:
    from specexec.tasksfile.store import TasksStore

    text = """{
  "x-top": {"kept": [1, 2.5, "é", null]},
  "version": 1,
  "spec": "rt",
  "defaults": {
    "timeout_minutes": 10,
    "x-defaults": true
  },
  "tasks": [
    {
      "x-first": "before id",
      "id": "T1",
      "summary": "s",
      "parallelization": {
        "blocked_by": [],
        "x-par": {
          "deep": {
            "deeper": [
              {}
            ]
          }
        }
      },
      "result": {
        "status": "pass",
        "x-res": 1
      },
      "x-last": "after"
    }
  ],
  "x-bottom": "end"
}
"""
    from specexec.tasksfile import jsonio

    canonical = jsonio.dumps(jsonio.loads(text, source="t"))
    d = repo / "specs" / "rt"
    d.mkdir(parents=True)
    (d / "tasks.json").write_text(canonical)
    load_spec(d)
    store = TasksStore(d)
    store.update(tasks={"T1": {"summary": "s"}})  # no change: no write
    assert (d / "tasks.json").read_text() == canonical
    store.update(tasks={"T1": {"status": "pass"}})
    store.update(tasks={"T1": {"status": "pending"}})
    after = (d / "tasks.json").read_text()
    # A new field goes at the end of its object; everything else stays where it was.
    assert after == canonical.replace(
        '"x-last": "after"\n', '"x-last": "after",\n      "status": "pending"\n'
    )
    assert jsonio.dumps(jsonio.loads(after, source="t")) == after
