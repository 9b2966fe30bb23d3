"""`specexec report` covers the whole spec across runs, `--run` one run; failures name
their cause and their log in the run output, `status` and the report (issue 16, 2 and 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_cli, task, write_spec

# A verify that fails like pytest until the flag file exists.
VERIFY = (
    "test -f {flag} || {{ echo collected 2 items; "
    "echo 'FAILED tests/t.py::test_dash - assert 1 == 2'; echo '1 failed, 1 passed'; exit 1; }}"
)


def test_report_after_a_failed_and_a_resumed_run_shows_every_task(
    repo: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    flaky = (
        f"test -f {flag} || {{ echo 'error: the flag is missing' >&2; echo 'try --help'; exit 2; }}"
    )
    spec = write_spec(
        repo / "specs" / "s",
        [
            task("a", files=["a"], command="true"),
            task("b", files=["b"], command=flaky, max_retries=0),
            task("c", files=["c"], command="true", blocked_by=["b"]),
            task(
                "v",
                files=["v"],
                command="echo worker-output-line",
                verify=VERIFY.format(flag=flag),
                max_retries=0,
            ),
        ],
    )
    first = run_cli("run", str(spec), cwd=repo)
    assert first.returncode == 1, first.stdout + first.stderr
    (run1,) = (spec / ".specexec" / "runs").iterdir()
    log_b = run1.relative_to(repo) / "b.log"
    # The fail line: the cause in the worker's words and the log.
    line_b = next(x for x in first.stdout.splitlines() if re.match(r"\S+ fail   s/b ", x))
    assert "error: the flag is missing" in line_b and line_b.endswith(f"log: {log_b}"), line_b
    assert "try --help" not in line_b, line_b
    # A failing verify quotes its own failing output, not the worker's.
    line_v = next(x for x in first.stdout.splitlines() if "fail   s/v " in x)
    assert "FAILED tests/t.py::test_dash - assert 1 == 2" in line_v, line_v
    assert "worker-output-line" not in line_v, line_v
    # `status` names the log of each failed task.
    status = run_cli("status", str(spec), cwd=repo)
    assert f"fail b: error: the flag is missing (log: {log_b})" in status.stdout, status.stdout
    assert re.search(r"^a\s+pass\s+1\s+\d+(ms|\.\ds)\b", status.stdout, re.M), status.stdout

    flag.write_text("")  # b and the verify of v pass now
    second = run_cli("run", str(spec), "--retry-failed", cwd=repo)
    assert second.returncode == 0, second.stdout + second.stderr
    run2 = max((spec / ".specexec" / "runs").iterdir())

    whole = run_cli("report", str(spec), cwd=repo)
    assert whole.returncode == 0, whole.stderr
    out = whole.stdout
    assert "# specexec report: spec s" in out and "2 run(s)" in out, out
    rows = {
        m[1]: m for m in re.finditer(r"^\| (\w) \| (\w+) \| (\d+) \| \S+ \| (\S+) \|", out, re.M)
    }
    assert {t: (m[2], m[4]) for t, m in rows.items()} == {
        "a": ("pass", run1.name),
        "b": ("pass", run2.name),
        "c": ("pass", run2.name),
        "v": ("pass", run2.name),
    }, out
    assert (spec / ".specexec" / "report.md").read_text() in out + "\n"
    # Readable times in the Gantt chart, never epoch milliseconds.
    assert "dateFormat YYYY-MM-DD HH:mm:ss" in out and not re.search(r"\b\d{13}\b", out), out

    one = run_cli("report", str(spec), "--run", run1.name, cwd=repo)
    assert one.returncode == 0, one.stderr
    assert f"# specexec run {run1.name}" in one.stdout
    assert "| s | b | fail |" in one.stdout and "| s | a | pass |" in one.stdout
    doc = json.loads(run_cli("report", str(spec), "--format", "json", cwd=repo).stdout)
    assert [t["id"] for t in doc["tasks"]] == ["a", "b", "c", "v"] and len(doc["runs"]) == 2


def test_report_before_any_run_lists_the_tasks(repo: Path) -> None:
    spec = write_spec(repo / "specs" / "s", [task("a", files=["a"], command="true")])
    res = run_cli("report", str(spec), cwd=repo)
    assert res.returncode == 0, res.stderr
    assert "| a | pending | 0 | - | - |" in res.stdout and "0 run(s)" in res.stdout
    bad = run_cli("report", str(spec), "--run", "nope", cwd=repo)
    assert bad.returncode == 2 and "no run 'nope'" in bad.stderr
