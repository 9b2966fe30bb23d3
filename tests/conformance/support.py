"""Shared helpers for the real-CLI conformance tests: the CLI run directly
(``*_cli_test.py``) and through ``specexec run`` (``<agent>_test.py``, fleet tests), with
the scenarios and checks those share.

Each run gets a throwaway HOME and an environment built from scratch (nothing inherited
but PATH basics), so no real credentials, config or vendor endpoint can leak into a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import install_agents
import pytest
from modelserver import Handler, ModelServer

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

# The git identity of a commit made in a run (a developer's ~/.gitconfig has one).
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def require_cli(name: str) -> Path:
    """The installed executable ``name``; skip when missing (fail under ``CI=true``)."""
    exe = install_agents.bin_dir() / name
    if exe.exists() and install_agents.installed():
        return exe
    message = f"{name} CLI not installed; run: {install_agents.install_command()}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def cli_fixture(name: str) -> Any:
    """An autouse fixture for a test module, to be bound to the name ``name``
    (``claude = cli_fixture("claude")``): the installed CLI, else every test skips."""

    @pytest.fixture(name=name, autouse=True)
    def cli() -> Path:
        """The installed CLI (require_cli)."""
        return require_cli(name)

    return cli


def server_fixture(routes: dict[str, Handler]) -> Any:
    """The ``server`` fixture for a test module (``server = server_fixture(ROUTES)``): a
    scripted model serving ``routes`` on 127.0.0.1 for the test's length."""

    @pytest.fixture(name="server")
    def server() -> Iterator[ModelServer]:
        """The scripted model on 127.0.0.1."""
        with ModelServer(routes) as srv:
            yield srv

    return server


def git_repo(path: Path) -> Path:
    """A fresh git repository (one commit) at ``path``: what a specexec worktree looks like."""
    path.mkdir(parents=True, exist_ok=True)
    env = base_env(path) | GIT_IDENTITY
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
    repo = git_repo(tmp_path / "repo")
    spec = repo / "specs" / "conf"
    spec.mkdir(parents=True)
    doc = {"version": 1, "spec": "conf", "worker": worker, "tasks": tasks}
    (spec / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")
    env = base_env(tmp_path) | GIT_IDENTITY
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


def describe(proc: subprocess.CompletedProcess[str], repo: Path) -> str:
    """What a failed assertion on a run shows: its exit code, output tails and tasks."""
    return (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
        + json.dumps(tasks_by_id(repo), indent=1)[-4000:]
    )


def result_of(task: dict[str, Any]) -> dict[str, Any]:
    """The worker result specexec recorded on ``task`` (there must be one)."""
    res = task.get("result")
    assert isinstance(res, dict), task
    return res


def assert_worktrees_outside(repo: Path, under: Path | None = None) -> list[Path]:
    """No worktree of the repository lives under its ``.git/`` or inside its work tree
    (and with ``under``, every linked one lives below that folder); returns the linked
    worktrees."""
    out = subprocess.run(
        ["git", "worktree", "list", "--porcelain"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    paths = [
        Path(ln.removeprefix("worktree ")) for ln in out.splitlines() if ln.startswith("worktree ")
    ]
    assert paths and paths[0] == repo.resolve(), out
    for path in paths[1:]:
        assert not path.resolve().is_relative_to(repo.resolve()), out
        assert under is None or under in path.parents, (path, under)
    return paths[1:]


def assert_three_tasks_merged(
    proc: subprocess.CompletedProcess[str], repo: Path, agent: str, *, end: str = ""
) -> dict[str, dict[str, Any]]:
    """The run of ``three_tasks(agent)`` exited 0; every task passed, with a result that
    says pass and no denial or scope violation; the branch holds the three files (each its
    words, then ``end``), the README and the spec: nothing the agent or specexec wrote for
    itself. Returns the tasks by id."""
    assert proc.returncode == 0, describe(proc, repo)
    tasks = tasks_by_id(repo)
    assert {k: t["status"] for k, t in tasks.items()} == dict.fromkeys("ABC", "pass"), tasks
    for task in tasks.values():
        assert not task.get("scope_violations"), task
        res = result_of(task)
        assert res["status"] == "pass" and not res.get("denials"), res
    files = branch_files(repo)
    for key, word in (("a", "alpha"), ("b", "beta"), ("c", "gamma")):
        assert files[f"{agent}_{key}.txt"] == f"{word} from {agent}{end}", files
    assert set(files) == {
        "README.md",
        "specs/conf/tasks.json",
        *(f"{agent}_{x}.txt" for x in "abc"),
    }
    return tasks


def failing_task_and_its_dependent() -> list[dict[str, object]]:
    """A writes ``a.txt`` and then reports fail ("tests do not pass"); B is blocked by A."""
    return [
        conf_task("A", ["a.txt"], "[[write a.txt: a]] [[status fail: tests do not pass]]"),
        conf_task("B", ["b.txt"], "[[write b.txt: b]]", ("A",)),
    ]


def assert_failed_and_blocked(
    proc: subprocess.CompletedProcess[str], repo: Path
) -> dict[str, dict[str, Any]]:
    """The run of ``failing_task_and_its_dependent()`` exited 1: A failed with the model's
    reason, B is blocked and A's file is not on the branch. Returns the tasks by id."""
    assert proc.returncode == 1, describe(proc, repo)
    by_id = tasks_by_id(repo)
    assert by_id["A"]["status"] == "fail", by_id
    assert "tests do not pass" in json.dumps(by_id["A"])
    assert by_id["B"]["status"] == "blocked", by_id
    assert "a.txt" not in branch_files(repo)
    return by_id


def three_tasks_first_fails(agent: str) -> list[dict[str, object]]:
    """``three_tasks(agent)`` where A writes nothing and reports fail ("the spec is
    contradictory"): B, independent, still runs; C, blocked by both, does not."""
    tasks = three_tasks(agent)
    tasks[0] = conf_task("A", [f"{agent}_a.txt"], "[[status fail: the spec is contradictory]]")
    return tasks


def assert_first_failed(
    proc: subprocess.CompletedProcess[str], repo: Path, agent: str
) -> dict[str, dict[str, Any]]:
    """The run of ``three_tasks_first_fails(agent)`` exited 1: A failed with the model's
    reason, B passed and merged, C is blocked. Returns the tasks by id."""
    assert proc.returncode == 1, describe(proc, repo)
    got = tasks_by_id(repo)
    assert got["A"]["status"] == "fail"
    assert "the spec is contradictory" in json.dumps(got["A"])
    assert got["B"]["status"] == "pass"
    assert got["C"]["status"] == "blocked"
    assert f"{agent}_b.txt" in branch_files(repo)
    return got
