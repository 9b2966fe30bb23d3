"""A run killed at any moment (SIGKILL included) can simply be started again.

The SIGKILL-at-random-moments trials are in tests/reliability/chaos_test.py; here, the
windows they hit, set up deterministically."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
from conftest import PY, git, init_repo, read_tasks, task, write_spec

# Each task appends one unique line to its own file, so a change merged twice would show
# as a duplicated line, and as two commits for the task on the integration branch.
SHAPE = {
    "a": [],
    "b": [],
    "c": ["a"],
    "d": ["a", "b"],
    "e": ["c"],
    "f": ["d"],
    "g": ["e", "f"],
}


def chaos_spec(repo: Path, pidlog: Path) -> Path:
    def cmd(t: str) -> str:
        return f'echo "$$" >> {pidlog}; echo "change of {t}" >> out/{t}.txt'

    return write_spec(
        repo / "specs" / "k",
        [
            task(t, blocked_by=deps, files=[f"out/{t}.txt"], command=f"mkdir -p out && {cmd(t)}")
            for t, deps in SHAPE.items()
        ],
    )


def check_finished(repo: Path, spec: Path, pidlog: Path) -> None:
    tasks = read_tasks(spec)
    assert all(t["status"] == "pass" for t in tasks.values()), tasks
    subjects = git(repo, "log", "--no-merges", "--format=%s", "specexec/k").splitlines()
    for t in SHAPE:
        assert sum(s.startswith(f"{t}:") for s in subjects) == 1, (t, subjects)
        assert git(repo, "show", f"specexec/k:out/{t}.txt") == f"change of {t}"
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") <= 1 + 4  # main + pool
    assert "@" not in git(repo, "branch", "--list", "specexec/*")  # no task branch left
    for pid in map(int, pidlog.read_text().split()):
        if psutil.pid_exists(pid):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"worker {pid} survived"


def test_crash_between_merge_and_record_is_merged_once(tmp_path: Path) -> None:
    """The integration branch has the task's change but tasks.json still says
    in_progress (the runner died in between): the next run records pass, merges nothing."""
    repo = init_repo(tmp_path / "r")
    pidlog = tmp_path / "pids"
    spec = chaos_spec(repo, pidlog)
    assert (
        subprocess.run(
            [PY, "-m", "specexec", "run", str(spec)], capture_output=True, timeout=120
        ).returncode
        == 0
    )
    # Rewind tasks.json to what a crash right after g's merge would leave.
    doc = json.loads((spec / "tasks.json").read_text())
    g = next(t for t in doc["tasks"] if t["id"] == "g")
    g["status"] = "in_progress"
    (spec / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")
    # and the merged branch a dead run could not delete
    tip = git(repo, "log", "--format=%H", "--grep=^g:", "specexec/k")
    git(repo, "branch", "specexec/k@g", tip)
    git(repo, "update-ref", "refs/specexec/bases/k/g", git(repo, "rev-parse", f"{tip}^1"))
    git(repo, "update-ref", "refs/specexec/snapshots/k/g", tip)  # the snapshot it merged
    before = git(repo, "rev-parse", "specexec/k")
    done = subprocess.run(
        [PY, "-m", "specexec", "run", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "already merged" in done.stderr
    assert git(repo, "rev-parse", "specexec/k") == before
    check_finished(repo, spec, pidlog)
