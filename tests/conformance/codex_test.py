"""``specexec run`` with the ``codex`` preset exactly as shipped, against the scripted model.

The environment holds only what a user's setup would: the agents' bin folder on PATH, a
throwaway HOME whose ``$CODEX_HOME/config.toml`` points a custom provider at our server
(``codex_cli_test.codex_config``: Codex ignores ``OPENAI_BASE_URL``), and the key in
``CODEX_API_KEY``. The worktrees go to ``SPECEXEC_WORKTREE_DIR`` (set by run_specexec).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import proto_openai_responses
import pytest
from codex_cli_test import codex_config, codex_env
from modelserver import ModelServer, Reply
from support import (
    GIT_IDENTITY,
    assert_first_failed,
    assert_three_tasks_merged,
    assert_worktrees_outside,
    branch_files,
    cli_fixture,
    conf_task,
    describe,
    result_of,
    run_specexec,
    server_fixture,
    spec_repo,
    tasks_by_id,
    three_tasks,
    three_tasks_first_fails,
)

from specexec.workers.codex import AGENT

TIMEOUT = 120.0  # per specexec run; each is a few seconds here


codex = cli_fixture("codex")
server = server_fixture(proto_openai_responses.ROUTES)


def specexec_env(tmp_path: Path, server: ModelServer) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(codex_config(server.url))
    return codex_env(home) | GIT_IDENTITY  # specexec commits each task's change


def run(
    tmp_path: Path, server: ModelServer, tasks: list[dict[str, object]], *args: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    repo = spec_repo(tmp_path, tasks, worker="codex")
    return repo, run_specexec(repo, specexec_env(tmp_path, server), *args, timeout=TIMEOUT)


def worktrees_outside(repo: Path) -> int:
    """No worktree of the run under the repository's .git/ or working tree: they are all in
    SPECEXEC_WORKTREE_DIR (run_specexec sets it to $HOME/worktrees). Returns how many."""
    return len(assert_worktrees_outside(repo, under=repo.parent / "home" / "worktrees"))


def test_three_tasks_pass_and_merge(server: ModelServer, tmp_path: Path) -> None:
    repo, proc = run(tmp_path, server, three_tasks("codex"))
    # Codex's "*** Add File" lines end with a newline.
    tasks = assert_three_tasks_merged(proc, repo, "codex", end="\n")
    assert AGENT.leaves == ()  # Codex keeps its state in $CODEX_HOME, none in the worktree
    u = proto_openai_responses.USAGE
    for task_id, task in tasks.items():
        result = result_of(task)
        assert result["source"] == "output", task
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
    worktrees_outside(repo)


def test_model_reported_fail_blocks_the_dependent(server: ModelServer, tmp_path: Path) -> None:
    repo, proc = run(tmp_path, server, three_tasks_first_fails("codex"), "--retries", "0")
    assert_first_failed(proc, repo, "codex")
    assert worktrees_outside(repo) >= 1  # A's, kept for inspection


def test_http_401_fails_quickly(server: ModelServer, tmp_path: Path) -> None:
    server.fail_with = Reply(401, {"error": {"message": "invalid api key"}})
    tasks = [conf_task("A", ["codex_a.txt"], "[[write codex_a.txt: never]]")]
    repo, proc = run(tmp_path, server, tasks, "--retries", "0")
    assert proc.returncode == 1, describe(proc, repo)
    task = tasks_by_id(repo)["A"]
    assert task["status"] == "fail"
    assert "codex reported an error: unexpected status 401 Unauthorized" in json.dumps(task)
    assert "codex_a.txt" not in branch_files(repo)
    # request_max_retries = stream_max_retries = 0 in the test's config: one call.
    assert sum(r.method == "POST" for r in server.requests) == 1
    assert worktrees_outside(repo) >= 1


@pytest.mark.parametrize("target", ["../outside.txt", ".git/hooked"])
def test_rejected_edit_is_a_fail_even_when_the_model_says_pass(
    server: ModelServer, tmp_path: Path, target: str
) -> None:
    """Codex refuses the patch (exit 0, nothing in the JSONL), the scripted model still
    reports pass; expect_changes is off so only the plugin's reading of stderr can fail it."""
    task = conf_task("A", ["codex_a.txt"], f"[[write {target}: escaped]]")
    task["expect_changes"] = False
    repo, proc = run(tmp_path, server, [task], "--retries", "0")
    assert proc.returncode == 1, describe(proc, repo)
    got = tasks_by_id(repo)["A"]
    assert got["status"] == "fail", got
    text = json.dumps(got)
    assert "codex rejected the agent's edit: patch rejected: writing outside of the project" in text
    assert set(branch_files(repo)) == {"README.md", "specs/conf/tasks.json"}
    assert not list(tmp_path.rglob("outside.txt"))
    assert worktrees_outside(repo) >= 1
