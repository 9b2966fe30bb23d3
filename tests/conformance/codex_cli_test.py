"""The real Codex CLI (pinned in install_agents) against the scripted Responses-API model.

Runs the preset's argv (``specexec.workers.codex.AGENT``: ``codex exec --sandbox
workspace-write --json -c analytics.enabled=false -``) the way specexec does: prompt on
stdin, cwd = a fresh git repository, a throwaway HOME and CODEX_HOME whose ``config.toml``
points a custom model provider at 127.0.0.1 (the built-in ``openai`` provider ignores
``OPENAI_BASE_URL`` and cannot have its retries bounded). See FINDINGS_codex.md for what
each assertion documents; codex_test.py runs the same through ``specexec run``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import proto_openai_responses
import pytest
from modelserver import ModelServer, Reply
from support import JSON_BLOCK_RE, PROMPT, Ran, base_env, git_repo, porcelain, require_cli, run_cli

from specexec.workers.codex import AGENT

# What specexec runs, as shipped (the plugin's head and tail, without the executable).
PRESET = [*AGENT.head[1:], *AGENT.tail]
TIMEOUT = 90.0
API_KEY = "sk-scripted-codex-0000"

REJECTED = "patch rejected: writing outside of the project"


def codex_config(
    url: str, *, retries: int = 0, confine_tmp: bool = True, builtin: bool = False
) -> str:
    """``$CODEX_HOME/config.toml``: our server as a custom provider, nothing else online
    (the user's setup: the preset sets none of it).

    ``builtin``: keep the built-in ``openai`` provider, only moved by ``openai_base_url``
    (its retries cannot be set: ``[model_providers.openai]`` is refused as reserved).
    """
    head = [f'openai_base_url = "{url}/v1"' if builtin else 'model_provider = "specexec"']
    provider = [
        "",
        "[model_providers.specexec]",
        'name = "specexec scripted model"',
        f'base_url = "{url}/v1"',
        'env_key = "CODEX_API_KEY"',
        'wire_api = "responses"',
        # Else it first tries a WebSocket upgrade on /v1/responses.
        "supports_websockets = false",
        # Defaults retry every error (401 included) 5 x 4 times: ~26 s for a 500.
        f"request_max_retries = {retries}",
        f"stream_max_retries = {retries}",
    ]
    lines = (
        head
        + ([] if builtin else provider)
        + [
            "",
            "[features]",
            # Else each run starts with `git clone https://github.com/openai/plugins.git`
            # (the plugin marketplace; seen with strace).
            "plugins = false",
            # Else, without a network, "Reconnecting... waiting for network" never ends.
            "unbounded_connection_retries = false",
        ]
    )
    # Analytics (ab.chatgpt.com) are turned off by the preset's `-c analytics.enabled=false`.
    if confine_tmp:
        # workspace-write also makes /tmp and $TMPDIR writable by default.
        lines += [
            "",
            "[sandbox_workspace_write]",
            "exclude_slash_tmp = true",
            "exclude_tmpdir_env_var = true",
        ]
    return "\n".join(lines) + "\n"


def codex_env(home: Path) -> dict[str, str]:
    # Codex exec reads CODEX_API_KEY (not OPENAI_API_KEY) for the built-in provider; the
    # custom provider above names it through env_key.
    return {**base_env(home), "CODEX_HOME": str(home / ".codex"), "CODEX_API_KEY": API_KEY}


@pytest.fixture
def codex() -> Path:
    return require_cli("codex")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(proto_openai_responses.ROUTES) as srv:
        yield srv


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return git_repo(tmp_path / "worktree")


def run(
    codex: Path,
    server: ModelServer,
    cwd: Path,
    directives: str,
    *,
    config: str | None = None,
    argv: list[str] | None = None,
    prefix: tuple[str, ...] = (),
) -> Ran:
    home = cwd.parent / "home"
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(config or codex_config(server.url))
    return run_cli(
        [*prefix, str(codex), *(argv or PRESET)],
        cwd=cwd,
        env=codex_env(home),
        stdin=PROMPT.format(directives=directives),
        timeout=TIMEOUT,
    )


def events(ran: Ran) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]


def items(ran: Ran, kind: str) -> list[dict[str, Any]]:
    return [
        e["item"]
        for e in events(ran)
        if e["type"] == "item.completed" and e["item"]["type"] == kind
    ]


def final_result(ran: Ran) -> dict[str, Any]:
    """The json block at the end of the last agent_message: what specexec parses."""
    messages = items(ran, "agent_message")
    assert messages, ran.stdout
    m = JSON_BLOCK_RE.search(messages[-1]["text"])
    assert m, messages[-1]["text"]
    result: dict[str, Any] = json.loads(m["body"])
    return result


def model_calls(server: ModelServer) -> int:
    return sum(r.method == "POST" and r.path.startswith("/v1/responses") for r in server.requests)


def test_writes_file_with_its_patch_tool_and_reports_pass(
    codex: Path, server: ModelServer, repo: Path
) -> None:
    ran = run(codex, server, repo, "[[write notes/hello.txt: hello from codex\\nline 2]]")
    assert ran.returncode == 0, ran.stderr
    assert (repo / "notes" / "hello.txt").read_text() == "hello from codex\nline 2\n"
    kinds = [e["type"] for e in events(ran)]
    assert kinds[:2] == ["thread.started", "turn.started"] and kinds[-1] == "turn.completed"
    (change,) = items(ran, "file_change")
    assert change["status"] == "completed"
    assert change["changes"] == [{"path": str(repo / "notes" / "hello.txt"), "kind": "add"}]
    assert final_result(ran) == {"status": "pass", "files_created": ["notes/hello.txt"]}
    # turn.completed.usage is the sum over the turn's model calls (2 here), not per call.
    usage = events(ran)[-1]["usage"]
    u = proto_openai_responses.USAGE
    assert usage == {
        "input_tokens": 2 * u["input_tokens"],
        "cached_input_tokens": 2 * u["input_tokens_details"]["cached_tokens"],
        "cache_write_input_tokens": 0,
        "output_tokens": 2 * u["output_tokens"],
        "reasoning_output_tokens": 2 * u["output_tokens_details"]["reasoning_tokens"],
    }
    # The only thing left in the worktree is the file the model wrote.
    assert porcelain(repo) == ["?? notes/hello.txt"]
    assert model_calls(server) == 2


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "unexpected status 401 Unauthorized: scripted error"),
        (429, "exceeded retry limit, last status: 429 Too Many Requests"),
        # Codex replaces a 5xx body by its own text.
        (500, "We\u2019re currently experiencing high demand"),
    ],
)
def test_http_error_fails_the_turn_quickly(
    codex: Path, server: ModelServer, repo: Path, status: int, message: str
) -> None:
    server.fail_with = Reply(
        status, {"error": {"message": "scripted error"}}, headers={"retry-after": "1"}
    )
    ran = run(codex, server, repo, "[[write a.txt: never]]")
    assert ran.returncode == 1
    last = events(ran)[-1]
    assert last["type"] == "turn.failed" and message in last["error"]["message"]
    errors = [e for e in events(ran) if e["type"] == "error"]
    assert len(errors) == 1 and message in errors[0]["message"]
    assert not items(ran, "agent_message")
    assert model_calls(server) == 1  # request_max_retries = stream_max_retries = 0
    assert not (repo / "a.txt").exists()


def test_transient_500_is_retried_when_retries_allowed(
    codex: Path, server: ModelServer, repo: Path
) -> None:
    server.fail_with = Reply(500, {"error": {"message": "scripted error"}})
    server.fail_first = 1
    ran = run(codex, server, repo, "[[write a.txt: A]]", config=codex_config(server.url, retries=1))
    assert ran.returncode == 0, ran.stdout
    assert (repo / "a.txt").read_text() == "A\n"
    assert final_result(ran)["status"] == "pass"
    # A retried attempt is neither an `error` event nor counted in usage.
    assert model_calls(server) == 3


def test_write_outside_workspace_is_rejected(codex: Path, server: ModelServer, repo: Path) -> None:
    ran = run(codex, server, repo, "[[write ../outside.txt: escaped]]")
    assert ran.returncode == 0  # the turn goes on: the model gets the rejection
    assert not (repo.parent / "outside.txt").exists()
    # Visible only on stderr (a tracing ERROR line) and in the tool output sent back to
    # the model; the JSONL stream has no file_change / error item for it.
    assert REJECTED in ran.stderr
    assert not items(ran, "file_change") and not items(ran, "error")
    assert REJECTED in server.requests[-1].body.decode()
    assert final_result(ran)["status"] == "pass"  # whatever the model then claims


def test_default_workspace_write_also_allows_slash_tmp(
    codex: Path, server: ModelServer, repo: Path
) -> None:
    """Without exclude_slash_tmp/exclude_tmpdir_env_var, /tmp is a writable root too."""
    if not str(repo).startswith("/tmp/"):
        pytest.skip("needs the test folder under /tmp")
    config = codex_config(server.url, confine_tmp=False)
    ran = run(codex, server, repo, "[[write ../outside.txt: escaped]]", config=config)
    assert ran.returncode == 0
    assert (repo.parent / "outside.txt").read_text() == "escaped\n"
    assert items(ran, "file_change")[0]["changes"][0]["path"] == str(repo.parent / "outside.txt")


def test_worktree_under_dot_git_is_writable(
    codex: Path, server: ModelServer, tmp_path: Path
) -> None:
    """Unlike Claude Code, a `git worktree` below the main repository's .git/ works."""
    main = git_repo(tmp_path / "main")
    wt = main / ".git" / "specexec" / "wt"
    subprocess.run(
        ["git", "-C", str(main), "worktree", "add", "-q", "-b", "t1", str(wt)], check=True
    )
    ran = run(codex, server, wt, "[[write a.txt: A]]")
    assert ran.returncode == 0, ran.stderr
    assert (wt / "a.txt").read_text() == "A\n"


def test_outside_a_git_repository_needs_skip_git_repo_check(
    codex: Path, server: ModelServer, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    ran = run(codex, server, plain, "[[write a.txt: A]]")
    assert ran.returncode == 1
    assert ran.stdout == ""
    assert "Not inside a trusted directory and --skip-git-repo-check was not specified" in (
        ran.stderr
    )
    assert model_calls(server) == 0


def test_builtin_provider_with_openai_base_url(
    codex: Path, server: ModelServer, repo: Path
) -> None:
    """The alternative: built-in provider + top-level openai_base_url (no retry bounds)."""
    config = codex_config(server.url, builtin=True)
    ran = run(codex, server, repo, "[[write a.txt: A]]", config=config)
    assert ran.returncode == 0, ran.stderr
    assert (repo / "a.txt").read_text() == "A\n"
    # It tries a WebSocket first; our 426 sends it to HTTP at once.
    assert server.requests[0].method == "GET" and server.requests[0].headers.get("Upgrade")
    assert server.requests[1].headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_no_connection_but_to_the_configured_endpoint(
    codex: Path, server: ModelServer, repo: Path, tmp_path: Path
) -> None:
    """The preset + this config: no DNS lookup, no connection but to 127.0.0.1 (without
    `-c analytics.enabled=false` every run resolves ab.chatgpt.com)."""
    trace = tmp_path / "strace.txt"
    strace = ("strace", "-f", "-qq", "-o", str(trace), "-e", "trace=connect,sendto,sendmmsg")
    ran = run(codex, server, repo, "[[write a.txt: A]]", prefix=strace)
    assert ran.returncode == 0, ran.stderr
    assert (repo / "a.txt").read_text() == "A\n"
    calls = trace.read_text().splitlines()
    inet = [c for c in calls if "AF_INET" in c]
    assert inet and all('inet_addr("127.0.0.1")' in c for c in inet), inet
    assert not [c for c in calls if "htons(53)" in c]  # no DNS query
