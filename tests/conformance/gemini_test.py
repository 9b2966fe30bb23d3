"""``specexec run`` with the ``gemini`` preset exactly as shipped, driving the real Gemini
CLI against the scripted Gemini API model on 127.0.0.1.

The worker environment holds only what a user sets up for their endpoint: the agents' bin
folder on PATH, ``GOOGLE_GEMINI_BASE_URL``, ``GEMINI_API_KEY`` and a throwaway HOME whose
``.gemini/settings.json`` selects the API-key auth type (required with a base URL, else
exit 41) and turns usage statistics off (no environment variable does; FINDINGS_gemini.md).
TMPDIR is per test (the CLI writes its error reports there). The 401 test also pins the
model (``GEMINI_MODEL``) and sets ``general.maxAttempts: 1`` so that no retry or router call
can stretch it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import proto_gemini
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

from specexec.workers.gemini import AGENT

TIMEOUT = 150.0  # per specexec run; each normally takes 10-30 s


gemini = cli_fixture("gemini")
server = server_fixture(proto_gemini.ROUTES)


def gemini_env(
    server: ModelServer, tmp_path: Path, general: dict[str, Any] | None = None, **extra: str
) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    settings: dict[str, Any] = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "privacy": {"usageStatisticsEnabled": False},
    }
    if general:
        settings["general"] = general
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    return {
        **base_env(home),
        "TMPDIR": str(home / "tmp"),
        "GOOGLE_GEMINI_BASE_URL": server.url,
        "GEMINI_API_KEY": "scripted-gemini-key",
        **extra,
    }


def run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    ran = run_specexec(repo, env, *args, timeout=TIMEOUT)
    assert_worktrees_outside(repo)
    return ran


def assert_only_model_calls(server: ModelServer) -> None:
    assert server.requests
    for req in server.requests:
        assert req.path.startswith("/v1beta/models/"), req.path
        assert req.headers.get("x-goog-api-key") == "scripted-gemini-key"


def test_three_tasks_pass_and_merge_with_jobs_2(server: ModelServer, tmp_path: Path) -> None:
    repo = spec_repo(tmp_path, three_tasks("gemini"), worker="gemini")
    ran = run(repo, gemini_env(server, tmp_path))
    tasks = assert_three_tasks_merged(ran, repo, "gemini")
    assert AGENT.leaves == ()  # the CLI writes only under $HOME/.gemini and $TMPDIR
    for task in tasks.values():
        res = result_of(task)
        tokens = res["tokens"]
        assert set(tokens) == {"input", "output", "thoughts", "cache_read"}, res
        assert tokens["input"] > tokens["cache_read"] > 0 and tokens["output"] > 0, res
        assert "cost_usd" not in res  # Gemini CLI reports none
    # A and B ran in parallel and merged without a conflict; C saw both.
    assert "conflict" not in (ran.stdout + ran.stderr).lower()
    assert_only_model_calls(server)


def test_model_reported_fail_fails_the_task_and_blocks_its_dependent(
    server: ModelServer, tmp_path: Path
) -> None:
    repo = spec_repo(tmp_path, failing_task_and_its_dependent(), worker="gemini")
    assert_failed_and_blocked(run(repo, gemini_env(server, tmp_path), "--retries", "0"), repo)


def test_http_401_fails_the_task_quickly(server: ModelServer, tmp_path: Path) -> None:
    server.fail_with = Reply(
        401, {"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}}
    )
    repo = spec_repo(tmp_path, [conf_task("A", ["a.txt"], "[[write a.txt: a]]")], worker="gemini")
    env = gemini_env(server, tmp_path, {"maxAttempts": 1}, GEMINI_MODEL="gemini-2.5-flash")
    ran = run(repo, env, "--retries", "0")
    assert ran.returncode == 1, describe(ran, repo)
    task = tasks_by_id(repo)["A"]
    assert task["status"] == "fail", task
    assert "gemini reported an error: API key not valid. (HTTP 401 UNAUTHENTICATED)" in (
        json.dumps(task)
    )
    assert len(server.requests) == 1  # no retry


def test_a_refused_write_fails_even_when_the_model_claims_pass(
    server: ModelServer, tmp_path: Path
) -> None:
    # Each task also writes a file it may write, and claims pass (in its answer, and for B
    # in the result file too): only the CLI's refusal, read by the plugin, fails it.
    result = '{"status": "pass", "files_created": ["b_ok.txt"]}'
    tasks = [
        conf_task(
            "A", ["a_ok.txt"], "[[write a_ok.txt: ok]] [[write ../outside.txt: x]] [[status pass]]"
        ),
        conf_task(
            "B",
            ["b_ok.txt"],
            f"[[write b_ok.txt: ok]] [[write .git/x: x]] [[write .specexec-result.json: {result}]]"
            " [[status pass]]",
        ),
    ]
    repo = spec_repo(tmp_path, tasks, worker="gemini")
    ran = run(repo, gemini_env(server, tmp_path), "--retries", "0")
    assert ran.returncode == 1, describe(ran, repo)
    by_id = tasks_by_id(repo)
    for task_id in "AB":
        task = by_id[task_id]
        assert task["status"] == "fail", task
        assert "gemini rejected an edit (write_file failed): Path not in workspace" in (
            json.dumps(task)
        ), task
        assert any(d.startswith("write_file /") for d in result_of(task)["denials"]), task
    # B claimed pass in its result file too: read, and overruled.
    assert result_of(by_id["B"])["source"] == "result_file"
    assert "outside.txt" in json.dumps(by_id["A"]) and ".git/x" in json.dumps(by_id["B"])
    files = branch_files(repo)
    assert "a_ok.txt" not in files and "b_ok.txt" not in files
    assert not list((tmp_path / "home").rglob("outside.txt"))
