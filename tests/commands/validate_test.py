from __future__ import annotations

from pathlib import Path

from conftest import run_cli, task, write_spec

from specexec.resources import data_dir


def test_validate_reports_all_errors_exit_2_no_traceback(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "bad",
        [task("T1", blocked_by=["T9"]), task("T1"), task("T2", files=["../x"])],
    )
    before = (d / "tasks.json").read_bytes()
    proc = run_cli("validate", str(d))
    assert proc.returncode == 2
    assert 'unknown task "T9"' in proc.stderr
    assert 'duplicate id "T1"' in proc.stderr
    assert "'../x'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (d / "tasks.json").read_bytes() == before


def test_malformed_json_has_line_and_column(repo: Path) -> None:
    d = repo / "specs" / "broken"
    d.mkdir(parents=True)
    (d / "tasks.json").write_text('{\n  "version": 1,\n  "tasks": [\n    {"id": "T1",,}\n  ]\n}\n')
    proc = run_cli("validate", str(d))
    assert proc.returncode == 2
    assert "tasks.json:4:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shipped_templates_and_examples_validate() -> None:
    dirs = [p for p in data_dir("specs").iterdir() if (p / "tasks.json").exists()]
    assert dirs, "no example spec folders shipped"
    proc = run_cli("validate", *map(str, dirs))
    assert proc.returncode == 0, proc.stderr
    for t in (p for p in data_dir("templates").iterdir() if p.is_dir()):
        proc = run_cli("validate", str(t))
        assert proc.returncode == 0, proc.stderr


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("validate", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "no such spec folder" in proc.stderr
