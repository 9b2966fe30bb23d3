"""The tests' one helpers module: real temporary git repositories, a spec-folder factory,
the CLI as a subprocess, the one bounded wait, and the fixtures several modules share.

Every test works in its own ``tmp_path`` (the suite runs under pytest-xdist): no fixed
path, port or shared cache. ``SPECEXEC_CHAOS_TRIALS`` and ``SPECEXEC_STRESS_WRITERS``
raise the sizes of the chaos and store stress tests above their defaults."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from specexec.git.workspace import Workspace
from specexec.tasksfile.types import Task

# Tests must not inherit a developer's git identity or hooks, nor leak GIT_* from a hook.
for _var in list(os.environ):
    if _var.startswith("GIT_"):
        del os.environ[_var]

PY = sys.executable
# The integration spec of the ``ws`` fixture.
SPEC = "feat"

T = TypeVar("T")


def env_int(name: str, default: int) -> int:
    """A size a test reads from the environment (to run it bigger than by default)."""
    return int(os.environ.get(name) or default)


def skip_unless_nobody_can_run_specexec() -> None:
    """Skip a test that runs specexec as uid 65534 (root reads everything, so only another
    user meets a read-only file) where that cannot work: not root, no setpriv, or a
    checkout below a directory others may not enter (a clone in ``mktemp -d``, mode 0700),
    where nobody could not import specexec or these tests."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to become another user) and setpriv")
    checkout = Path(__file__).resolve().parent.parent
    for d in (checkout, *checkout.parents):
        if not os.stat(d).st_mode & stat.S_IXOTH:
            pytest.skip(
                f"{d} is mode {stat.S_IMODE(os.stat(d).st_mode):o}: uid 65534 cannot reach the checkout"
            )


def wait_until(pred: Callable[[], T], timeout: float, interval: float = 0.02) -> T | None:
    """Poll ``pred`` until it returns a true value (returned) or ``timeout`` seconds pass
    (None): a bounded wait on a condition, never a sleep as synchronisation."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def wait_for(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """``wait_until``, failing the test with ``what`` on timeout."""
    value = wait_until(pred, timeout, interval)
    if value is None:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
    return value


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: a container's PID 1 may never reap it)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """Run git in ``cwd`` and return its stdout (stripped)."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def init_repo(path: Path, files: Mapping[str, str] | None = None) -> Path:
    """A real git repository with one commit on ``main``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "user.name", "Test")
    git(path, "config", "commit.gpgsign", "false")
    for rel, text in (files or {"README.md": "hello\n"}).items():
        f = path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def task(
    task_id: str,
    *,
    blocked_by: Sequence[str] = (),
    files: Sequence[str] = (),
    command: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One task object for a tasks.json."""
    t: dict[str, Any] = {
        "id": task_id,
        "summary": extra.pop("summary", f"Task {task_id}"),
        "status": extra.pop("status", "pending"),
        "relevant_files": list(files),
        "parallelization": {"blocked_by": list(blocked_by)},
    }
    if command is not None:
        t["command"] = command
    t.update(extra)
    return t


def write_spec(
    spec_dir: Path,
    tasks: Sequence[Mapping[str, Any]],
    **top: Any,
) -> Path:
    """Write ``spec_dir/tasks.json`` (2-space JSON, trailing newline) and return spec_dir."""
    spec_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"version": 1, "spec": top.pop("spec", spec_dir.name)}
    doc.update(top)
    doc["tasks"] = [dict(t) for t in tasks]
    (spec_dir / "tasks.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return spec_dir


def read_tasks(spec_dir: Path) -> dict[str, dict[str, Any]]:
    """The tasks of a spec folder by id, as currently on disk."""
    doc = json.loads((spec_dir / "tasks.json").read_text())
    return {t["id"]: t for t in doc["tasks"]}


def task_obj(
    task_id: str,
    *files: str,
    after: Sequence[str] = (),
    minutes: float | None = None,
    status: str = "pending",
) -> Task:
    """One in-memory ``Task``, as the planner and the schedule take it: ``files`` are its
    relevant files, ``after`` its blocked_by."""
    return Task(
        task_id,
        f"Task {task_id}",
        status=status,  # type: ignore[arg-type]
        relevant_files=files,
        blocked_by=tuple(after),
        estimated_minutes=minutes,
    )


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m specexec ARGS`` as a real subprocess."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [PY, "-m", "specexec", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )


@pytest.fixture(autouse=True)
def _worktree_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test's worktrees go to its own temporary directory, never to ~/.cache."""
    path = tmp_path_factory.mktemp("worktrees")
    monkeypatch.setenv("SPECEXEC_WORKTREE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _no_resource_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite keeps the machine busy: the resource guard's defaults would serialise the
    runs whose timing tests measure. Its own tests pass the thresholds as flags."""
    monkeypatch.setenv("SPECEXEC_MAX_CPU_PERCENT", "100")
    monkeypatch.setenv("SPECEXEC_MAX_MEMORY_PERCENT", "100")


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """A fresh git repository at ``tmp_path/repo``."""
    yield init_repo(tmp_path / "repo")


@pytest.fixture
def ws(repo: Path) -> Workspace:
    """The ``repo`` fixture's Workspace, with the integration branch of ``SPEC``."""
    w = Workspace(repo)
    w.ensure_integration_branch(SPEC, None)
    return w
