"""``specexec run`` with the ``claude`` preset exactly as shipped, driving the real Claude
Code CLI against the scripted Anthropic model on 127.0.0.1.

The worker environment holds only what a user would set for their endpoint: the agents'
bin folder on PATH, a throwaway HOME, ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY``; the
plugin's own env defaults (no non-essential traffic, ...) come from specexec. The 401 test
also sets ``CLAUDE_CODE_MAX_RETRIES=0``: the CLI's default retries a 401 ten times (about
three minutes, FINDINGS_claude.md).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import proto_anthropic
import pytest
from modelserver import ModelServer, Reply
from support import (
    assert_failed_and_blocked,
    assert_three_tasks_merged,
    assert_worktrees_outside,
    base_env,
    branch_files,
    cli_fixture,
    conf_task,
    describe,
    failing_task_and_its_dependent,
    result_of,
    run_specexec,
    server_fixture,
    spec_repo,
    tasks_by_id,
    three_tasks,
)

from specexec.workers.claude import AGENT

TIMEOUT = 120.0  # per specexec run; each normally takes 3-8 s
pytestmark = pytest.mark.timeout(180)


claude = cli_fixture("claude")
server = server_fixture(proto_anthropic.ROUTES)


def claude_env(server: ModelServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        **base_env(home),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "sk-ant-scripted-0000",
        **extra,
    }


def run(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    ran = run_specexec(repo, env, timeout=TIMEOUT)
    assert_worktrees_outside(repo)
    return ran


def write_tasks(repo: Path, tasks: list[dict[str, object]]) -> None:
    """Replace the spec's tasks (when they must name the repository's own path)."""
    path = repo / "specs" / "conf" / "tasks.json"
    doc = json.loads(path.read_text())
    doc["tasks"] = tasks
    path.write_text(json.dumps(doc, indent=2) + "\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "commit", "-qam", "tasks"], cwd=repo, check=True)


def blocker_of(task: dict[str, Any]) -> str:
    blocker = task.get("blocker")
    assert isinstance(blocker, str), task
    return blocker


def assert_only_model_calls(server: ModelServer) -> None:
    """Every request was a main-loop model call: with the plugin's
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC default there is no tool-less title call."""
    assert server.requests
    for req in server.requests:
        assert req.path == "/v1/messages?beta=true", req.path
        assert req.json().get("tools"), "a side call reached the server"


def test_three_tasks_pass_and_merge_with_jobs_2(server: ModelServer, tmp_path: Path) -> None:
    spec = three_tasks("claude")
    # C also writes specexec's result file, as the prompt asks: never on the branch.
    result = '{"status": "pass", "files_created": ["claude_c.txt"]}'
    spec[2]["summary"] = f"{spec[2]['summary']} [[write .specexec-result.json: {result}]]"
    repo = spec_repo(tmp_path, spec, worker="claude")
    ran = run(repo, claude_env(server, tmp_path))
    tasks = assert_three_tasks_merged(ran, repo, "claude")
    assert AGENT.leaves == ()  # the CLI writes only under $HOME
    for task in tasks.values():
        res = result_of(task)
        assert res["tokens"]["input"] > 0 and res["tokens"]["output"] > 0, res
        assert res["cost_usd"] > 0, res
        assert task.get("commit"), task  # merged (a conflict would fail the task)
    assert result_of(tasks["C"])["source"] == "result_file"
    # A and B ran at the same time (two claude processes, one HOME) and merged cleanly.
    run_json = json.loads(next((repo / "specs/conf/.specexec/runs").glob("*/run.json")).read_text())
    assert run_json["max_concurrent"] == 2, run_json["max_concurrent"]
    assert "conflict" not in (ran.stdout + ran.stderr).lower()
    assert_only_model_calls(server)
    # The pool's worktrees are in SPECEXEC_WORKTREE_DIR (run_specexec: $HOME/worktrees).
    assert assert_worktrees_outside(repo, under=tmp_path / "home" / "worktrees")


def test_model_reported_fail_fails_the_task_and_blocks_its_dependent(
    server: ModelServer, tmp_path: Path
) -> None:
    repo = spec_repo(tmp_path, failing_task_and_its_dependent(), worker="claude")
    by_id = assert_failed_and_blocked(run(repo, claude_env(server, tmp_path)), repo)
    assert "tests do not pass" in blocker_of(by_id["A"])


def test_http_401_fails_the_task_quickly(server: ModelServer, tmp_path: Path) -> None:
    server.fail_with = Reply(401, {"error": {"message": "invalid x-api-key"}})
    repo = spec_repo(tmp_path, [conf_task("A", ["a.txt"], "[[write a.txt: a]]")], worker="claude")
    ran = run(repo, claude_env(server, tmp_path, CLAUDE_CODE_MAX_RETRIES="0"))
    assert ran.returncode == 1, describe(ran, repo)
    assert 1 <= len(server.requests) <= 4  # one call per attempt: no retries by the CLI
    task = tasks_by_id(repo)["A"]
    assert task["status"] == "fail", task
    assert "API status 401" in blocker_of(task) and "Invalid API key" in blocker_of(task)
    assert "a.txt" not in branch_files(repo)


@pytest.mark.parametrize("where", ["repo_git_dir", "outside"])
def test_a_denied_edit_is_a_fail_even_when_other_files_changed(
    server: ModelServer, tmp_path: Path, where: str
) -> None:
    # The agent writes its own file (accepted) and one it is denied: into the repository's
    # git folder (a sensitive file, outside the worktree) or elsewhere outside the worktree.
    # The scripted model still says pass, and the real CLI exits 0 with is_error false.
    repo = spec_repo(tmp_path, [], worker="claude")
    target = repo / ".git" / "x" if where == "repo_git_dir" else tmp_path / "outside.txt"
    tasks = [conf_task("A", ["a.txt"], f"[[write a.txt: a]] [[write {target}: secret]]")]
    write_tasks(repo, tasks)
    ran = run(repo, claude_env(server, tmp_path))
    assert ran.returncode == 1, describe(ran, repo)
    task = tasks_by_id(repo)["A"]
    assert task["status"] == "fail", task
    assert f"claude was denied an edit: Write {target}" in blocker_of(task)
    assert result_of(task)["denials"] == [f"Write {target}"]
    assert "a.txt" not in branch_files(repo)
    assert not target.exists()


def test_a_denied_edit_is_a_fail_even_with_a_pass_result_file(
    server: ModelServer, tmp_path: Path
) -> None:
    # The agent also writes specexec's result file saying pass, as the prompt asks.
    repo = spec_repo(tmp_path, [], worker="claude")
    target = repo / ".git" / "x"
    result = '{"status": "pass", "files_created": ["a.txt"]}'
    directives = (
        f"[[write a.txt: a]] [[write {target}: secret]] [[write .specexec-result.json: {result}]]"
    )
    write_tasks(repo, [conf_task("A", ["a.txt"], directives)])
    ran = run(repo, claude_env(server, tmp_path))
    assert ran.returncode == 1, describe(ran, repo)
    task = tasks_by_id(repo)["A"]
    assert task["status"] == "fail", task
    assert result_of(task)["source"] == "result_file"
    assert "claude was denied an edit" in blocker_of(task)
    assert not target.exists()
    assert ".specexec-result.json" not in branch_files(repo)
