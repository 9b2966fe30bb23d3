"""A run killed at any moment (SIGKILL included) can simply be started again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
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
        return (
            f'echo "$$" >> {pidlog}; sleep 0.{random.randint(1, 4)}; '
            f'echo "change of {t}" >> out/{t}.txt'
        )

    return write_spec(
        repo / "specs" / "k",
        [
            task(t, blocked_by=deps, files=[f"out/{t}.txt"], command=f"mkdir -p out && {cmd(t)}")
            for t, deps in SHAPE.items()
        ],
    )


class Parser(threading.Thread):
    """Parses tasks.json in a loop while runs are killed: it must always parse."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.reads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                json.loads(self.path.read_bytes())
                self.reads += 1
            except (ValueError, OSError) as e:
                self.errors.append(repr(e))


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


@pytest.mark.slow
def test_sigkill_at_random_moments_then_restart(tmp_path: Path) -> None:
    rng = random.Random(1234)
    trials = int(os.environ.get("SPECEXEC_CHAOS_TRIALS", "20"))
    for trial in range(trials):
        repo = init_repo(tmp_path / f"r{trial}")
        pidlog = tmp_path / f"pids{trial}"
        spec = chaos_spec(repo, pidlog)
        parser = Parser(spec / "tasks.json")
        parser.start()
        kill_after = rng.uniform(0.2, 2.5)
        proc = subprocess.Popen(
            [PY, "-m", "specexec", "run", str(spec), "--jobs", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for _ in range(5):  # restart until it finishes
            done = subprocess.run(
                [PY, "-m", "specexec", "run", str(spec), "--jobs", "2"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode == 0:
                break
        parser.stop.set()
        parser.join()
        assert done.returncode == 0, done.stdout + done.stderr
        assert not parser.errors, parser.errors[:3]
        check_finished(repo, spec, pidlog)
    print(f"{trials} SIGKILL trials: every task passed once, tasks.json always parsed")


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
    before = git(repo, "rev-parse", "specexec/k")
    done = subprocess.run(
        [PY, "-m", "specexec", "run", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "already merged" in done.stderr
    assert git(repo, "rev-parse", "specexec/k") == before
    check_finished(repo, spec, pidlog)
