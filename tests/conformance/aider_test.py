"""``specexec run`` with the ``aider`` preset exactly as shipped, against the scripted model.

The environment holds only what a user's setup would: the agents' bin folder on PATH, the
endpoint, key and model (``OPENAI_API_BASE``, ``OPENAI_API_KEY``, ``AIDER_MODEL``), and a
throwaway HOME with aider's model metadata (context window and prices of the scripted
model, so aider fetches no price list) and ``max_retries: 0`` for the openai client
(aider_cli_test.write_aider_home). The plugin's own environment defaults come from
specexec. The worktrees go to ``SPECEXEC_WORKTREE_DIR`` (set by run_specexec). Aider's
retries of 429/5xx take a minute or more whatever is set: not run here (see
aider_cli_test's slow test).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import proto_openai_chat
import pytest
from aider_cli_test import endpoint_env, write_aider_home
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

from specexec.workers.aider import AGENT

TIMEOUT = 120.0  # per specexec run; each aider run takes 3-15 s here
pytestmark = pytest.mark.timeout(TIMEOUT + 30)


aider = cli_fixture("aider")
server = server_fixture(proto_openai_chat.ROUTES)


def specexec_env(tmp_path: Path, server: ModelServer) -> dict[str, str]:
    home = tmp_path / "home"
    write_aider_home(home)
    # A git identity, as a developer's ~/.gitconfig has: without one aider writes
    # "Your Name" into the repository's shared .git/config, and aider processes starting
    # side by side race for its lock (FINDINGS_aider.md).
    (home / ".gitconfig").write_text("[user]\n\tname = t\n\temail = t@example.invalid\n")
    env = endpoint_env(server.url, home)
    assert not set(AGENT.env or {}) & set(env)  # the plugin's defaults come from specexec
    return env | GIT_IDENTITY  # specexec commits each task's change in its worktree


def run(
    tmp_path: Path, server: ModelServer, tasks: list[dict[str, object]], *args: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    repo = spec_repo(tmp_path, tasks, worker="aider")
    return repo, run_specexec(repo, specexec_env(tmp_path, server), *args, timeout=TIMEOUT)


def server_usage(server: ModelServer) -> list[dict[str, int]]:
    """The usage the scripted model reported for each of its replies."""
    usages = []
    for req in server.requests:
        messages = req.json().get("messages") or []
        usages.append(proto_openai_chat._usage(messages, proto_openai_chat.answer(messages)))
    return usages


def test_three_tasks_pass_and_merge(server: ModelServer, tmp_path: Path) -> None:
    repo, proc = run(tmp_path, server, three_tasks("aider"))
    # The whole format ends each file with a newline. Nothing of aider's on the branch
    # (.aider.chat.history.md, .aider.tags.cache.v4/, both staged or not) nor the result
    # file it `git add`ed.
    tasks = assert_three_tasks_merged(proc, repo, "aider", end="\n")
    # One model call per task, nothing else (no model list, no other host).
    assert [r.path for r in server.requests] == ["/v1/chat/completions"] * 3
    outputs = [u["completion_tokens"] for u in server_usage(server)]
    for task_id, task in tasks.items():
        result = result_of(task)
        assert result["source"] == "result_file", task
        assert result["files_created"] == [f"aider_{task_id.lower()}.txt"]
        tokens = result["tokens"]
        # --no-stream: the server's usage ("1.2k sent" is rounded; < 1000 is exact).
        assert set(tokens) == {"input", "output"} and tokens["input"] >= 1000, task_id
        assert tokens["output"] in outputs, task_id
        assert result["cost_usd"] > 0  # the prices in the HOME metadata file
        assert "denials" not in result
    assert "merge conflict" not in proc.stdout + proc.stderr  # (e) two parallel aider tasks
    assert_worktrees_outside(repo)


def test_model_reported_fail_blocks_the_dependent(server: ModelServer, tmp_path: Path) -> None:
    repo, proc = run(tmp_path, server, three_tasks_first_fails("aider"), "--retries", "0")
    got = assert_first_failed(proc, repo, "aider")
    assert result_of(got["A"])["blocker"] == "the spec is contradictory"
    assert result_of(got["A"])["source"] == "result_file"
    assert set(branch_files(repo)) == {"README.md", "specs/conf/tasks.json", "aider_b.txt"}
    assert_worktrees_outside(repo)


def test_http_401_fails_quickly(server: ModelServer, tmp_path: Path) -> None:
    server.fail_with = Reply(401, {"error": {"message": "invalid api key", "type": "auth"}})
    repo, proc = run(tmp_path, server, three_tasks("aider"), "--retries", "0")
    assert proc.returncode == 1, describe(proc, repo)
    got = tasks_by_id(repo)
    for task_id in ("A", "B"):
        assert got[task_id]["status"] == "fail"
        blocker = str(result_of(got[task_id]).get("blocker"))
        assert "litellm.AuthenticationError" in blocker and "invalid api key" in blocker
    assert got["C"]["status"] == "blocked"
    assert len(server.requests) == 2  # aider does not retry a 401
    assert_worktrees_outside(repo)


def test_rejected_and_refused_edits_fail(server: ModelServer, tmp_path: Path) -> None:
    tasks = [
        # A reply aider cannot parse, 3 times: nothing is written; exit 0.
        conf_task("M", ["aider_m.txt"], "[[malformed edit]]"),
        # .git is a file in specexec's worktrees: aider cannot create .git/evil.txt, skips
        # that edit, applies the rest (the result file says pass) and exits 0.
        conf_task("G", ["aider_g.txt"], "[[write .git/evil.txt: x]] [[write aider_g.txt: g]]"),
    ]
    repo, proc = run(tmp_path, server, tasks, "--retries", "0")
    assert proc.returncode == 1, describe(proc, repo)
    got = tasks_by_id(repo)
    assert got["M"]["status"] == "fail" and got["G"]["status"] == "fail"
    m = result_of(got["M"])
    assert "blocker" in m, describe(proc, repo)
    assert "aider stopped after 3 reflections" in m["blocker"]
    assert "did not conform to the edit format" in m["blocker"]
    g = result_of(got["G"])
    assert g["source"] == "result_file"  # the result file said pass
    assert "could not create .git/evil.txt" in g["blocker"]
    assert g["denials"] == ["edit .git/evil.txt"]
    assert not list((repo / ".git").rglob("evil.txt"))
    assert len(server.requests) == 5  # M: 1 + 3 reflections; G: 1
    assert_worktrees_outside(repo)
