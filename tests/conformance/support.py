"""Shared helpers for the real-CLI conformance tests (``*_cli_test.py``).

Each run gets a throwaway HOME and an environment built from scratch (nothing inherited
but PATH basics), so no real credentials, config or vendor endpoint can leak into a run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import install_agents
import pytest

# Shaped like specexec's worker prompt: the directives sit in the task description.
PROMPT = """# Task Worker: Execute Task 1.1

You are a task worker agent executing a single task of the spec `demo`.

## Task Details
- **ID**: 1.1
- **Description**: {directives}

## Expected Output

When done, output your result as:

```json
{{"status": "pass|fail|blocked", "files_created": [], "blocker": null}}
```

Then state: **TASK COMPLETE**
"""

JSON_BLOCK_RE = re.compile(r"```json\s*\n(?P<body>.*?)\n```\s*$", re.S)


def require_cli(name: str) -> Path:
    """The installed executable ``name``; skip when missing (fail under ``CI=true``)."""
    exe = install_agents.bin_dir() / name
    if exe.exists() and install_agents.installed():
        return exe
    message = f"{name} CLI not installed; run: {install_agents.install_command()}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def git_repo(path: Path) -> Path:
    """A fresh git repository (one commit) at ``path``: what a specexec worktree looks like."""
    path.mkdir(parents=True, exist_ok=True)
    env = {**base_env(path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=env)
    (path / "README.md").write_text("scratch\n")
    subprocess.run(["git", "add", "README.md"], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=path, check=True, env=env)
    return path


def base_env(home: Path) -> dict[str, str]:
    """A minimal environment: the agents' bin folder first on PATH, HOME and XDG dirs in
    ``home``, no proxies, no inherited API keys."""
    node_dir = str(Path(shutil.which("node") or "/usr/bin/node").parent)
    path = os.pathsep.join(
        [str(install_agents.bin_dir()), node_dir, "/usr/local/bin", "/usr/bin", "/bin"]
    )
    return {
        "PATH": path,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


@dataclass(frozen=True)
class Ran:
    argv: list[str]
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float


def run_cli(
    argv: list[str], *, cwd: Path, env: dict[str, str], stdin: str | None, timeout: float
) -> Ran:
    """Run ``argv`` with a hard timeout; the whole process group is killed at the timeout."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        code: int | None = proc.returncode
        _kill_group(proc.pid)  # helpers the CLI left running in its session
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        code = None
    return Ran(argv, code, out, err, time.monotonic() - start)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, 9)


def porcelain(repo: Path) -> list[str]:
    """``git status --porcelain --ignored -uall`` lines: every file a run left behind."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "-uall"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


# --------------------------------------------------------------------------- through specexec


def spec_repo(tmp_path: Path, tasks: list[dict[str, object]], *, worker: str) -> Path:
    """A git repository with ``specs/conf/tasks.json`` (spec ``conf``) committed, whose
    tasks run under the ``worker`` preset exactly as shipped. Returns the repository."""
    import json

    repo = git_repo(tmp_path / "repo")
    spec = repo / "specs" / "conf"
    spec.mkdir(parents=True)
    doc = {"version": 1, "spec": "conf", "worker": worker, "tasks": tasks}
    (spec / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")
    env = base_env(tmp_path)
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "spec"], cwd=repo, check=True, env=env)
    return repo


def conf_task(
    task_id: str, files: list[str], directives: str, blocked_by: tuple[str, ...] = ()
) -> dict[str, object]:
    """One task whose summary carries the scripted model's directives (modelserver)."""
    return {
        "id": task_id,
        "summary": f"Task {task_id}. {directives}",
        "relevant_files": files,
        "parallelization": {"blocked_by": list(blocked_by)},
    }


def three_tasks(agent: str) -> list[dict[str, object]]:
    """Two independent tasks and one blocked by both: each writes its own file."""
    return [
        conf_task("A", [f"{agent}_a.txt"], f"[[write {agent}_a.txt: alpha from {agent}]]"),
        conf_task("B", [f"{agent}_b.txt"], f"[[write {agent}_b.txt: beta from {agent}]]"),
        conf_task(
            "C", [f"{agent}_c.txt"], f"[[write {agent}_c.txt: gamma from {agent}]]", ("A", "B")
        ),
    ]


def run_specexec(
    repo: Path, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``specexec run specs/conf --jobs 2 ARGS`` as a real subprocess in ``repo``, with the
    agent's environment (its bin folder on PATH, its throwaway HOME, endpoint and key)."""
    import sys

    # specexec's own worktrees go under the throwaway HOME's cache, never the real one.
    full = {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    full.setdefault("SPECEXEC_WORKTREE_DIR", str(Path(env["HOME"]) / "worktrees"))
    # Parallel test runs keep the CPU busy: the resource guard would serialise the tasks.
    full.setdefault("SPECEXEC_MAX_CPU_PERCENT", "100")
    return subprocess.run(
        [sys.executable, "-m", "specexec", "run", "specs/conf", "--jobs", "2", *args],
        cwd=repo,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tasks_by_id(repo: Path) -> dict[str, dict[str, object]]:
    import json

    doc = json.loads((repo / "specs" / "conf" / "tasks.json").read_text())
    return {t["id"]: t for t in doc["tasks"]}


def branch_files(repo: Path, branch: str = "specexec/conf") -> dict[str, str]:
    """Every file on ``branch`` with its content."""
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", "-z", branch],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return {
        n: subprocess.run(
            ["git", "show", f"{branch}:{n}"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
        for n in names
        if n
    }
