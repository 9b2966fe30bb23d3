"""The real Claude Code CLI (pinned in install_agents) against the scripted Anthropic model.

Runs ``claude`` the way the specexec preset does (``AGENT.head`` / ``AGENT.tail`` and the
plugin's env defaults, imported from specexec.workers.claude, so what ships is tested):
prompt on stdin, cwd = a fresh git repository that is NOT under any ``.git/`` folder, a
throwaway HOME, and only 127.0.0.1 reachable through ANTHROPIC_BASE_URL. The plugin's
``unwrap`` reads every output here. See FINDINGS_claude.md for what each assertion documents;
claude_test.py drives the same CLI through ``specexec run``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import proto_anthropic
import pytest
from modelserver import ModelServer, Reply
from support import JSON_BLOCK_RE, PROMPT, Ran, base_env, git_repo, porcelain, require_cli, run_cli

from specexec.workers.agent import Envelope
from specexec.workers.claude import AGENT, unwrap

# The preset's argv without the executable (the test runs the installed one by path).
PRESET = [*AGENT.head[1:], *AGENT.tail]
TIMEOUT = 90.0


def claude_env(url: str, home: Path) -> dict[str, str]:
    """Endpoint + key, and the plugin's env defaults (CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC
    is the one that keeps the CLI off api.anthropic.com: no session-title call, no DNS)."""
    return {
        **base_env(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-ant-scripted-0000",
        **(AGENT.env or {}),
        # Default is 10 retries with exponential backoff (401 included): minutes per error.
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }


@pytest.fixture
def claude() -> Path:
    return require_cli("claude")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(proto_anthropic.ROUTES) as srv:
        yield srv


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return git_repo(tmp_path / "worktree")


def run_claude(
    claude: Path,
    server: ModelServer,
    cwd: Path,
    directives: str,
    *args: str,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> Ran:
    home = _home_of(cwd)
    full_env = {**claude_env(server.url, home), **(env or {})}
    return run_cli(
        [str(claude), *(PRESET if argv is None else argv), *args],
        cwd=cwd,
        env=full_env,
        stdin=PROMPT.format(directives=directives),
        timeout=TIMEOUT,
    )


def _home_of(cwd: Path) -> Path:
    """A throwaway HOME beside the pytest tmp folder holding ``cwd`` (never inside it)."""
    base = next(p for p in cwd.parents if p.name.startswith("test_"))
    home = base / "home"
    home.mkdir(exist_ok=True)
    return home


def result_object(ran: Ran) -> dict[str, Any]:
    """The one ``{"type": "result"}`` object ``--output-format json`` prints."""
    assert ran.returncode is not None, f"timed out: {ran.stderr[-2000:]}"
    obj = json.loads(ran.stdout)
    assert isinstance(obj, dict) and obj["type"] == "result", ran.stdout[:2000]
    return obj


def unwrapped(ran: Ran) -> Envelope:
    """What the claude plugin reads from this run's output (stdout + stderr, as in the log)."""
    env = unwrap(ran.stdout + ran.stderr)
    assert env is not None, ran.stdout[:2000]
    return env


def final_json(answer: str) -> dict[str, Any]:
    m = JSON_BLOCK_RE.search(answer)
    assert m, f"no trailing json block in {answer!r}"
    block: dict[str, Any] = json.loads(m["body"])
    return block


def test_writes_the_file_with_its_write_tool_and_reports_pass(
    claude: Path, server: ModelServer, repo: Path
) -> None:
    ran = run_claude(claude, server, repo, "[[write hello.txt: hello world\\n]]")
    res = result_object(ran)
    assert ran.returncode == 0, ran.stderr
    assert (repo / "hello.txt").read_text() == "hello world\n"
    assert res["subtype"] == "success" and res["is_error"] is False
    assert res["api_error_status"] is None and res["permission_denials"] == []
    assert final_json(res["result"]) == {"status": "pass", "files_created": ["hello.txt"]}
    assert res["num_turns"] == 2
    # Tokens: result.usage sums every turn; modelUsage splits the same totals by model.
    per_model = res["modelUsage"].values()
    assert res["usage"]["input_tokens"] == sum(m["inputTokens"] for m in per_model) > 0
    assert res["usage"]["output_tokens"] == sum(m["outputTokens"] for m in per_model) > 0
    assert res["total_cost_usd"] > 0
    # Only the model calls reached the server; the tool came from the request's list.
    bodies = [json.loads(r.body) for r in server.requests]
    assert [r.path for r in server.requests] == ["/v1/messages?beta=true"] * 2
    assert "Write" in [t["name"] for t in bodies[0]["tools"]]
    tool_use = bodies[1]["messages"][-2]["content"][0]
    assert tool_use["name"] == "Write"
    assert tool_use["input"]["file_path"] == str(repo / "hello.txt")
    # Nothing else left in the worktree (session files go to $HOME/.claude): no leaves.
    assert porcelain(repo) == ["?? hello.txt"] and AGENT.leaves == ()
    # What the plugin reads from it: the answer, usage counted once, the cost, no error.
    env = unwrapped(ran)
    assert env.error is None and env.denials == ()
    assert final_json(env.text)["status"] == "pass"
    assert env.tokens is not None
    assert env.tokens["input"] == res["usage"]["input_tokens"]
    assert env.tokens["output"] == res["usage"]["output_tokens"]
    assert env.cost_usd == res["total_cost_usd"]


def test_verbose_json_is_an_array_ending_with_the_result(
    claude: Path, server: ModelServer, repo: Path
) -> None:
    ran = run_claude(claude, server, repo, "[[write v.txt: v]]", "--verbose")
    assert ran.returncode == 0, ran.stderr
    events = json.loads(ran.stdout)
    assert isinstance(events, list)
    assert [e["type"] for e in events] == ["system", "assistant", "user", "assistant", "result"]
    assert events[0]["subtype"] == "init" and events[0]["permissionMode"] == "acceptEdits"
    assert "Write" in events[0]["tools"]
    assert events[-1]["permission_denials"] == []
    assert final_json(events[-1]["result"])["status"] == "pass"
    # The plugin takes the array's result; the per-event usage (message_start) is not added.
    env = unwrapped(ran)
    assert env.tokens is not None
    assert env.tokens["output"] == events[-1]["usage"]["output_tokens"]


def test_stream_json_prints_one_event_per_line(
    claude: Path, server: ModelServer, repo: Path
) -> None:
    argv = ["-p", "--output-format", "stream-json", "--verbose"]
    ran = run_claude(claude, server, repo, "[[write s.txt: s]]", argv=argv)
    assert ran.returncode == 0, ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]
    assert events[0]["type"] == "system" and events[-1]["type"] == "result"
    assert final_json(events[-1]["result"])["status"] == "pass"
    assert final_json(unwrapped(ran).text)["status"] == "pass"


def test_http_401_is_an_error_result_with_exit_1(
    claude: Path, server: ModelServer, repo: Path
) -> None:
    server.fail_with = Reply(401, {"error": {"message": "invalid x-api-key"}})
    ran = run_claude(
        claude, server, repo, "[[write n.txt: n]]", env={"CLAUDE_CODE_MAX_RETRIES": "0"}
    )
    res = result_object(ran)
    assert ran.returncode == 1 and ran.stderr == ""
    # subtype stays "success": only is_error / api_error_status say it failed.
    assert res["subtype"] == "success" and res["is_error"] is True
    assert res["api_error_status"] == 401
    assert "Invalid API key" in res["result"]
    assert len(server.requests) == 1  # no retry of a 401
    assert not (repo / "n.txt").exists()
    error = unwrapped(ran).error
    assert error and error.startswith("claude reported an error (API status 401): Invalid API")


@pytest.mark.parametrize("status", [429, 500])
def test_retries_are_bounded_by_claude_code_max_retries(
    claude: Path, server: ModelServer, repo: Path, status: int
) -> None:
    server.fail_with = Reply(
        status, {"error": {"message": "try later"}}, headers={"retry-after": "1"}
    )
    ran = run_claude(claude, server, repo, "[[write r.txt: r]]")  # CLAUDE_CODE_MAX_RETRIES=1
    res = result_object(ran)
    assert ran.returncode == 1 and res["is_error"] is True
    assert res["api_error_status"] == status
    assert len(server.requests) == 2  # the first try + 1 retry
    assert f"(API status {status})" in (unwrapped(ran).error or "")


def test_a_transient_500_is_retried_and_the_task_completes(
    claude: Path, server: ModelServer, repo: Path
) -> None:
    server.fail_with = Reply(500, {"error": {"message": "blip"}})
    server.fail_first = 1
    ran = run_claude(claude, server, repo, "[[write t.txt: t]]")
    res = result_object(ran)
    assert ran.returncode == 0 and res["is_error"] is False
    assert (repo / "t.txt").read_text() == "t"
    assert unwrapped(ran).error is None


def _denied_paths(res: dict[str, Any]) -> list[str]:
    return [
        d["tool_input"]["file_path"] for d in res["permission_denials"] if d["tool_name"] == "Write"
    ]


def test_write_into_dot_git_is_denied_and_listed(
    claude: Path, server: ModelServer, repo: Path
) -> None:
    ran = run_claude(claude, server, repo, "[[write .git/x: secret]]")
    res = result_object(ran)
    # Not an error for the CLI: exit 0, is_error false; the denial is only in the list.
    assert ran.returncode == 0 and res["is_error"] is False
    assert _denied_paths(res) == [str(repo / ".git" / "x")]
    assert not (repo / ".git" / "x").exists()
    result = server.requests[-1].json()["messages"][-1]["content"][0]
    assert result["is_error"] is True and "sensitive file" in result["content"]
    # The plugin turns the denied edit into an error: such a task never passes.
    env = unwrapped(ran)
    assert env.denials == (f"Write {repo / '.git' / 'x'}",)
    assert env.error == f"claude was denied an edit: Write {repo / '.git' / 'x'}"


def test_write_into_a_linked_worktrees_dot_git_file_is_a_tool_error_not_a_denial(
    claude: Path, server: ModelServer, repo: Path, tmp_path: Path
) -> None:
    # In a linked worktree (what specexec runs in) ".git" is a file, so "<wt>/.git/x" fails
    # with ENOTDIR in the Write tool: no permission denial, only an is_error tool_result
    # the model sees. Nothing is written; the model's own report is all there is.
    wt = tmp_path / "wt"
    subprocess.run(["git", "worktree", "add", "-q", "-b", "w", str(wt)], cwd=repo, check=True)
    ran = run_claude(claude, server, wt, "[[write a.txt: a]] [[write .git/x: secret]]")
    res = result_object(ran)
    assert ran.returncode == 0 and res["is_error"] is False
    assert res["permission_denials"] == []
    result = server.requests[-1].json()["messages"][-1]["content"][1]
    assert result["is_error"] is True and "ENOTDIR" in result["content"]
    assert (wt / ".git").is_file() and (wt / "a.txt").read_text() == "a"
    assert unwrapped(ran).error is None


def test_a_worktree_under_dot_git_denies_every_write(
    claude: Path, server: ModelServer, tmp_path: Path
) -> None:
    # Issue 14: specexec once put worktrees in <repo>/.git/...; every edit there is denied.
    outer = git_repo(tmp_path / "outer")
    inner = outer / ".git" / "specexec" / "wt"
    inner.mkdir(parents=True)
    ran = run_claude(claude, server, inner, "[[write hello.txt: hi]]")
    res = result_object(ran)
    assert _denied_paths(res) == [str(inner / "hello.txt")]
    assert not (inner / "hello.txt").exists()
    assert "claude was denied an edit" in (unwrapped(ran).error or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root is refused")
def test_skip_permissions_is_refused_as_root_unless_is_sandbox(
    claude: Path, server: ModelServer, repo: Path
) -> None:
    argv = ["-p", "--output-format", "json", "--dangerously-skip-permissions"]
    ran = run_claude(claude, server, repo, "[[write k.txt: k]]", argv=argv)
    assert ran.returncode == 1 and ran.stdout == ""
    assert "cannot be used with root/sudo privileges" in ran.stderr
    assert server.requests == [] and unwrap(ran.stdout + ran.stderr) is None
    ran = run_claude(claude, server, repo, "[[write k.txt: k]]", argv=argv, env={"IS_SANDBOX": "1"})
    assert ran.returncode == 0 and (repo / "k.txt").read_text() == "k"
