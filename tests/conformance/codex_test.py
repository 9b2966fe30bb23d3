"""``specexec run`` with the ``codex`` preset exactly as shipped, against the scripted model.

The environment holds only what a user's setup would: the agents' bin folder on PATH, a
throwaway HOME whose ``$CODEX_HOME/config.toml`` points a custom provider at our server
(``codex_cli_test.codex_config``: Codex ignores ``OPENAI_BASE_URL``), and the key in
``CODEX_API_KEY``. The worktrees go to ``SPECEXEC_WORKTREE_DIR`` (set by run_specexec).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import proto_openai_responses
import pytest
from codex_cli_test import codex_config, codex_env
from modelserver import ModelServer, Reply
from support import (
    branch_files,
    conf_task,
    require_cli,
    run_specexec,
    spec_repo,
    tasks_by_id,
    three_tasks,
)

from specexec.workers.codex import AGENT

TIMEOUT = 120.0  # per specexec run; each is a few seconds here


@pytest.fixture
def codex() -> Path:
    return require_cli("codex")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(proto_openai_responses.ROUTES) as srv:
        yield srv


def specexec_env(tmp_path: Path, server: ModelServer) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(codex_config(server.url))
    env = codex_env(home)
    # specexec commits each task's change in its worktree.
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return env


def run(
    tmp_path: Path, server: ModelServer, tasks: list[dict[str, object]], *args: str
) -> tuple[Path, subprocess.CompletedProcess[str], float]:
    repo = spec_repo(tmp_path, tasks, worker="codex")
    start = time.monotonic()
    proc = run_specexec(repo, specexec_env(tmp_path, server), *args, timeout=TIMEOUT)
    return repo, proc, time.monotonic() - start


def assert_worktrees_outside(repo: Path) -> int:
    """No worktree of the run under the repository's .git/ or working tree: they are all in
    SPECEXEC_WORKTREE_DIR (run_specexec sets it to $HOME/worktrees). Returns how many."""
    out = subprocess.run(
        ["git", "worktree", "list", "--porcelain"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    paths = [
        Path(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("worktree ")
    ]
    assert paths[0] == repo
    base = repo.parent / "home" / "worktrees"
    for p in paths[1:]:
        assert repo not in p.parents, f"worktree {p} inside the repository"
        assert base in p.parents, p
    return len(paths) - 1


def describe(proc: subprocess.CompletedProcess[str], repo: Path) -> str:
    return (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
        + json.dumps(tasks_by_id(repo), indent=1)[-4000:]
    )


def test_three_tasks_pass_and_merge(codex: Path, server: ModelServer, tmp_path: Path) -> None:
    repo, proc, _ = run(tmp_path, server, three_tasks("codex"))
    assert proc.returncode == 0, describe(proc, repo)
    tasks = tasks_by_id(repo)
    assert {k: t["status"] for k, t in tasks.items()} == {"A": "pass", "B": "pass", "C": "pass"}
    files = branch_files(repo)
    for key, word in (("a", "alpha"), ("b", "beta"), ("c", "gamma")):
        # Codex's "*** Add File" lines end with a newline.
        assert files[f"codex_{key}.txt"] == f"{word} from codex\n"
    # Nothing of Codex's or specexec's own on the branch: the README, the spec, the 3 files.
    assert set(files) == {
        "README.md",
        "specs/conf/tasks.json",
        "codex_a.txt",
        "codex_b.txt",
        "codex_c.txt",
    }
    assert AGENT.leaves == ()  # Codex keeps its state in $CODEX_HOME, none in the worktree
    u = proto_openai_responses.USAGE
    for task_id, task in tasks.items():
        assert not task.get("scope_violations"), task
        result = cast(dict[str, Any], task["result"])
        assert result["status"] == "pass" and result["source"] == "output", task
        # turn.completed.usage: 2 model calls; cached/reasoning are parts, not added in.
        assert result["tokens"] == {
            "input": 2 * u["input_tokens"],
            "cached_input": 2 * u["input_tokens_details"]["cached_tokens"],
            "cache_write_input": 0,
            "output": 2 * u["output_tokens"],
            "reasoning_output": 2 * u["output_tokens_details"]["reasoning_tokens"],
        }, task_id
        assert "cost_usd" not in result  # Codex reports none
    # Two codex tasks side by side never conflict on files of Codex's own.
    assert "max concurrent 2" in proc.stdout
    assert "merge conflict" not in proc.stdout + proc.stderr
    # 3 tasks x 2 model calls, nothing else (no websocket GET, no model list).
    assert [r.method for r in server.requests] == ["POST"] * 6
    assert_worktrees_outside(repo)


def test_model_reported_fail_blocks_the_dependent(
    codex: Path, server: ModelServer, tmp_path: Path
) -> None:
    tasks = three_tasks("codex")
    tasks[0] = conf_task("A", ["codex_a.txt"], "[[status fail: the spec is contradictory]]")
    repo, proc, _ = run(tmp_path, server, tasks, "--retries", "0")
    assert proc.returncode == 1, describe(proc, repo)
    got = tasks_by_id(repo)
    assert got["A"]["status"] == "fail"
    assert "the spec is contradictory" in json.dumps(got["A"])
    assert got["B"]["status"] == "pass"
    assert got["C"]["status"] == "blocked"
    assert "codex_b.txt" in branch_files(repo)
    assert assert_worktrees_outside(repo) >= 1  # A's, kept for inspection


def test_http_401_fails_quickly(codex: Path, server: ModelServer, tmp_path: Path) -> None:
    server.fail_with = Reply(401, {"error": {"message": "invalid api key"}})
    tasks = [conf_task("A", ["codex_a.txt"], "[[write codex_a.txt: never]]")]
    repo, proc, _ = run(tmp_path, server, tasks, "--retries", "0")
    assert proc.returncode == 1, describe(proc, repo)
    task = tasks_by_id(repo)["A"]
    assert task["status"] == "fail"
    assert "codex reported an error: unexpected status 401 Unauthorized" in json.dumps(task)
    assert "codex_a.txt" not in branch_files(repo)
    # request_max_retries = stream_max_retries = 0 in the test's config: one call.
    assert sum(r.method == "POST" for r in server.requests) == 1
    assert assert_worktrees_outside(repo) >= 1


@pytest.mark.parametrize("target", ["../outside.txt", ".git/hooked"])
def test_rejected_edit_is_a_fail_even_when_the_model_says_pass(
    codex: Path, server: ModelServer, tmp_path: Path, target: str
) -> None:
    """Codex refuses the patch (exit 0, nothing in the JSONL), the scripted model still
    reports pass; expect_changes is off so only the plugin's reading of stderr can fail it."""
    task = conf_task("A", ["codex_a.txt"], f"[[write {target}: escaped]]")
    task["expect_changes"] = False
    repo, proc, _ = run(tmp_path, server, [task], "--retries", "0")
    assert proc.returncode == 1, describe(proc, repo)
    got = tasks_by_id(repo)["A"]
    assert got["status"] == "fail", got
    text = json.dumps(got)
    assert "codex rejected the agent's edit: patch rejected: writing outside of the project" in text
    assert set(branch_files(repo)) == {"README.md", "specs/conf/tasks.json"}
    assert not list(tmp_path.rglob("outside.txt"))
    assert assert_worktrees_outside(repo) >= 1
