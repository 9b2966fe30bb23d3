from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli, task, write_spec


def test_status_rows_and_totals(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "s",
        [
            task("T1", status="pass", attempts=1, duration_minutes=2.5),
            task("T2", status="fail", attempts=2, blocker="exit code 1"),
            task("T3", blocked_by=["T2"], status="blocked", blocker="blocked by T2 (fail)"),
            task("T4"),
        ],
    )
    proc = run_cli("status", str(d))
    assert proc.returncode == 0, proc.stderr
    assert "T2    fail" in proc.stdout and "exit code 1" in proc.stdout
    assert "4 tasks: 1 pending, 1 pass, 1 fail, 1 blocked" in proc.stdout
    doc = json.loads(run_cli("status", str(d), "--json").stdout)
    assert doc["totals"] == {
        "pending": 1,
        "in_progress": 0,
        "pass": 1,
        "fail": 1,
        "blocked": 1,
        "total": 4,
    }
    assert doc["tasks"][2]["blocker"] == "blocked by T2 (fail)"


def test_schema_command_prints_json_schema() -> None:
    proc = run_cli("schema")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["title"] == "specexec tasks.json"
