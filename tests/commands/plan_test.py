from __future__ import annotations

import json
from pathlib import Path

from conftest import read_tasks, run_cli, task, write_spec


def _spec(repo: Path) -> Path:
    return write_spec(
        repo / "specs" / "p",
        [
            task("A", files=["src/a.py"], estimated_minutes=10),
            task("B", files=["src/b.py"], estimated_minutes=5),
            task("C", blocked_by=["A"], files=["src/c.py"], estimated_minutes=10),
            task("D", blocked_by=["A"], files=["src/c.py"], estimated_minutes=2),
        ],
        custom_top={"keep": True},
    )


def test_table_shows_waves_critical_path_and_estimates(repo: Path) -> None:
    proc = run_cli("plan", str(_spec(repo)), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "3 waves" in out  # C and D share src/c.py: they cannot share a wave
    assert "critical path: A -> C" in out
    assert "A *" in out and "C *" in out
    assert "sequential 27m" in out
    assert "src/c.py" in out  # the rationale names the shared file


def test_json_mermaid_dot(repo: Path) -> None:
    d = _spec(repo)
    doc = json.loads(run_cli("plan", str(d), "--format", "json").stdout)
    strategy = doc["execution_strategy"]
    assert strategy["mode"] == "parallel_waves"
    assert [w["wave_id"] for w in strategy["waves"]] == [1, 2, 3]
    assert all(w["rationale"] for w in strategy["waves"])
    assert strategy["total_sequential_minutes"] == 27
    mermaid = run_cli("plan", str(d), "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR") and "t_A --> t_C" in mermaid
    dot = run_cli("plan", str(d), "--format", "dot").stdout
    assert dot.startswith('digraph "p"') and '"A" -> "C";' in dot


def test_write_stores_execution_strategy_and_keeps_the_rest(repo: Path) -> None:
    d = _spec(repo)
    proc = run_cli("plan", str(d), "--write")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((d / "tasks.json").read_text())
    assert doc["custom_top"] == {"keep": True}
    assert doc["execution_strategy"]["waves"][0]["tasks"] == ["A", "B"]
    assert set(read_tasks(d)) == {"A", "B", "C", "D"}
    assert "wrote execution_strategy" in proc.stderr
    # Without --write nothing changes; a second --write says it had nothing to change.
    before = (d / "tasks.json").read_bytes()
    run_cli("plan", str(d))
    again = run_cli("plan", str(d), "--write")
    assert "up to date" in again.stderr and "wrote" not in again.stderr
    assert (d / "tasks.json").read_bytes() == before


def test_independent_and_chain(repo: Path) -> None:
    d = write_spec(repo / "specs" / "i", [task(t, files=[f"{t}.txt"]) for t in "XYZ"])
    doc = json.loads(run_cli("plan", str(d), "--format", "json").stdout)
    assert doc["execution_strategy"]["mode"] == "fully_parallel"
    assert len(doc["execution_strategy"]["waves"]) == 1
    d = write_spec(
        repo / "specs" / "c",
        [task("X"), task("Y", blocked_by=["X"]), task("Z", blocked_by=["Y"])],
    )
    doc = json.loads(run_cli("plan", str(d), "--format", "json").stdout)
    assert doc["execution_strategy"]["mode"] == "sequential"
    assert len(doc["execution_strategy"]["waves"]) == 3


def test_unprintable_text_never_reaches_the_terminal(repo: Path) -> None:
    # Valid JSON strings that would clear the screen or reverse the text on display.
    d = write_spec(
        repo / "specs" / "u",
        [task("A", files=["a\x1b[2Jb.txt"], summary="fix \u202egnp.exe")],
    )
    for output in ("table", "mermaid", "dot"):
        proc = run_cli("plan", str(d), "--format", output)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout, (output, proc.stdout)
