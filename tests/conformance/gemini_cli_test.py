"""The real Gemini CLI (pinned in install_agents) against the scripted Gemini API model.

Runs ``gemini`` the way the specexec preset does (the argv and env defaults imported from
``specexec.workers.gemini``: ``gemini --output-format json --approval-mode auto_edit
--skip-trust``), prompt on stdin (no TTY), cwd = a fresh git repository, a throwaway HOME
holding ``.gemini/settings.json`` (auth type, no usage statistics: the two settings a user
needs), and only 127.0.0.1 reachable through GOOGLE_GEMINI_BASE_URL. See
FINDINGS_gemini.md for what each assertion documents; ``gemini_test.py`` drives the same
CLI through ``specexec run`` (model-reported fail, 401, refused writes as task results).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import proto_gemini
import pytest
from modelserver import ModelServer, Reply
from support import JSON_BLOCK_RE, PROMPT, Ran, base_env, git_repo, porcelain, require_cli, run_cli

from specexec.workers.gemini import AGENT, unwrap

# The shipped argv after the executable (the tests run the installed one by its path).
PRESET = [*AGENT.head[1:], *AGENT.tail]
TIMEOUT = 120.0
PINNED_MODEL = "gemini-2.5-flash"


# ~/.gemini/settings.json: what a user needs, nothing more. selectedType is required:
# GOOGLE_GEMINI_BASE_URL alone makes the auth type "gateway", which non-interactive mode
# rejects (exit 41, "Invalid auth method selected."). usageStatisticsEnabled=false stops
# the Clearcut uploads to play.googleapis.com (DNS lookups without it; no environment
# variable does this). Telemetry is off by default and no update check runs headless
# (test_only_the_local_server_is_contacted).
SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
}


def gemini_home(home: Path, **general: Any) -> Path:
    """Write the settings file into a throwaway HOME (``general`` settings added)."""
    settings = {**SETTINGS, "general": general} if general else dict(SETTINGS)
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    return home


def gemini_env(url: str, home: Path) -> dict[str, str]:
    return {
        **base_env(home),
        **(AGENT.env or {}),
        "GOOGLE_GEMINI_BASE_URL": url,
        "GEMINI_API_KEY": "scripted-gemini-key",
        # Error reports (gemini-client-error-*.json) go to os.tmpdir(): keep them per test.
        "TMPDIR": str(home / "tmp"),
    }


@pytest.fixture
def gemini() -> Path:
    return require_cli("gemini")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(proto_gemini.ROUTES) as srv:
        yield srv


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return git_repo(tmp_path / "worktree")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home" / "tmp").mkdir(parents=True)
    return gemini_home(tmp_path / "home")


def run_gemini(
    gemini: Path,
    server: ModelServer,
    cwd: Path,
    home: Path,
    directives: str,
    *,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> Ran:
    return run_cli(
        [str(gemini), *(PRESET if argv is None else argv)],
        cwd=cwd,
        env={**gemini_env(server.url, home), **(env or {})},
        stdin=PROMPT.format(directives=directives),
        timeout=TIMEOUT,
    )


def success_object(ran: Ran) -> dict[str, Any]:
    """The one ``{"session_id", "response", "stats"}`` object printed on stdout."""
    assert ran.returncode is not None, f"timed out: {ran.stderr[-2000:]}"
    obj: dict[str, Any] = json.loads(ran.stdout)
    assert set(obj) == {"session_id", "response", "stats"}, ran.stdout[:2000]
    return obj


def error_object(ran: Ran) -> dict[str, Any]:
    """Errors: stdout is empty; stderr ends with ``{"session_id", "error": {...}}`` after
    free-text log lines."""
    assert ran.returncode is not None, f"timed out: {ran.stderr[-2000:]}"
    assert ran.stdout == ""
    start = ran.stderr.rindex('{\n  "session_id"')
    obj: dict[str, Any] = json.loads(ran.stderr[start:])
    assert set(obj) == {"session_id", "error"}
    return obj


def final_json(answer: str) -> dict[str, Any]:
    m = JSON_BLOCK_RE.search(answer)
    assert m, f"no trailing json block in {answer!r}"
    block: dict[str, Any] = json.loads(m["body"])
    return block


def test_writes_the_file_with_write_file_and_reports_pass(
    gemini: Path, server: ModelServer, repo: Path, home: Path
) -> None:
    ran = run_gemini(gemini, server, repo, home, "[[write hello.txt: hello world\\n]]")
    res = success_object(ran)
    assert ran.returncode == 0, ran.stderr
    assert (repo / "hello.txt").read_text() == "hello world\n"
    assert final_json(res["response"]) == {"status": "pass", "files_created": ["hello.txt"]}
    # Default model "auto": one router call (generateContent, JSON schema) picks the model,
    # then two streamed chat turns (the write_file call, then the final answer).
    paths = [r.path.split("/")[-1] for r in server.requests]
    assert paths[0].endswith(":generateContent")
    assert len(paths) == 3 and all(p.endswith(":streamGenerateContent?alt=sse") for p in paths[1:])
    chat = [r.json() for r in server.requests[1:]]
    assert "write_file" in proto_gemini._tool_names(chat[0])
    call = chat[1]["contents"][-2]["parts"][0]["functionCall"]
    assert call["name"] == "write_file" and call["args"]["file_path"] == "hello.txt"
    reply = chat[1]["contents"][-1]["parts"][0]["functionResponse"]["response"]
    assert "Successfully created and wrote to new file" in reply["output"]
    stats = res["stats"]
    assert stats["tools"]["byName"]["write_file"]["success"] == 1
    assert stats["files"]["totalLinesAdded"] == 1
    # Tokens, per model in stats.models (roles.* only split the same numbers again):
    # prompt = sum(promptTokenCount), cached = sum(cachedContentTokenCount),
    # input = prompt - cached (so prompt + input double counts), candidates = output,
    # thoughts separate, total = sum(totalTokenCount) = prompt + candidates + thoughts.
    models = stats["models"]
    assert len(models) == 2  # the router's model and the chat model
    for m in models.values():
        t = m["tokens"]
        assert t["input"] == t["prompt"] - t["cached"] and t["cached"] > 0
        assert t["total"] == t["prompt"] + t["candidates"] + t["thoughts"]
        assert sum(r["tokens"]["total"] for r in m["roles"].values()) == t["total"]
    # Nothing left in the worktree: session files go to $HOME/.gemini.
    assert porcelain(repo) == ["?? hello.txt"]
    assert list((home / ".gemini" / "tmp").glob("*/chats/session-*.jsonl"))
    # What the plugin reads from it (stdout and stderr share the task log).
    env = unwrap(ran.stdout + ran.stderr)
    assert env is not None and env.error is None and env.text == res["response"]
    assert env.tokens == {
        "input": sum(m["tokens"]["prompt"] for m in models.values()),
        "output": sum(m["tokens"]["candidates"] for m in models.values()),
        "thoughts": sum(m["tokens"]["thoughts"] for m in models.values()),
        "cache_read": sum(m["tokens"]["cached"] for m in models.values()),
    }


def test_a_pinned_model_skips_the_router_call(
    gemini: Path, server: ModelServer, repo: Path, home: Path
) -> None:
    ran = run_gemini(
        gemini, server, repo, home, "[[write m.txt: m]]", env={"GEMINI_MODEL": PINNED_MODEL}
    )
    res = success_object(ran)
    assert ran.returncode == 0 and (repo / "m.txt").read_text() == "m"
    assert [r.path for r in server.requests] == [
        f"/v1beta/models/{PINNED_MODEL}:streamGenerateContent?alt=sse"
    ] * 2
    assert list(res["stats"]["models"]) == [PINNED_MODEL]


def test_untrusted_folder_exits_55_without_skip_trust(
    gemini: Path, server: ModelServer, repo: Path, home: Path
) -> None:
    argv = [a for a in PRESET if a != "--skip-trust"]
    ran = run_gemini(gemini, server, repo, home, "[[write u.txt: u]]", argv=argv)
    assert ran.returncode == 55 and ran.stdout == ""
    assert 'Approval mode overridden to "default"' in ran.stderr
    assert "not running in a trusted directory" in ran.stderr
    assert server.requests == [] and not (repo / "u.txt").exists()
    envelope = unwrap(ran.stdout + ran.stderr)
    assert envelope is not None and envelope.error is not None
    assert envelope.error.startswith("gemini refused to run: Gemini CLI is not running in a")
    # The env var does the same as the flag.
    env = {"GEMINI_CLI_TRUST_WORKSPACE": "true"}
    ran = run_gemini(gemini, server, repo, home, "[[write u.txt: u]]", argv=argv, env=env)
    assert ran.returncode == 0 and (repo / "u.txt").read_text() == "u"


def test_missing_auth_type_setting_exits_41(
    gemini: Path, server: ModelServer, repo: Path, home: Path
) -> None:
    (home / ".gemini" / "settings.json").write_text("{}")
    ran = run_gemini(gemini, server, repo, home, "[[write n.txt: n]]")
    err = error_object(ran)
    assert ran.returncode == 41
    assert err["error"] == {"type": "Error", "message": "Invalid auth method selected.", "code": 41}
    assert server.requests == []
    envelope = unwrap(ran.stdout + ran.stderr)
    assert envelope is not None
    assert envelope.error == "gemini reported an error: Invalid auth method selected."


def test_http_401_is_an_error_on_stderr_with_exit_145(
    gemini: Path, server: ModelServer, repo: Path, home: Path
) -> None:
    server.fail_with = Reply(
        401, {"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}}
    )
    ran = run_gemini(gemini, server, repo, home, "[[write n.txt: n]]")
    err = error_object(ran)
    # The exit code is the HTTP status truncated to a byte: 401 & 0xFF == 145.
    assert ran.returncode == 145 and err["error"]["code"] == 401
    assert "API key not valid." in err["error"]["message"]
    assert len(server.requests) == 2  # router + one chat turn: 401 is never retried
    assert not (repo / "n.txt").exists()
    assert list((home / "tmp").glob("gemini-client-error-*.json"))  # reports go to TMPDIR
    env = unwrap(ran.stdout + ran.stderr)
    assert env is not None
    assert env.error == "gemini reported an error: API key not valid. (HTTP 401 UNAUTHENTICATED)"


@pytest.mark.parametrize(("status", "code"), [(429, 173), (500, 244)])
def test_retries_are_bounded_by_general_max_attempts(
    gemini: Path, server: ModelServer, repo: Path, home: Path, status: int, code: int
) -> None:
    gemini_home(home, maxAttempts=1)
    server.fail_with = Reply(
        status, {"error": {"code": status, "message": "try later"}}, headers={"retry-after": "1"}
    )
    env = {"GEMINI_MODEL": PINNED_MODEL}  # no router call (it retries 5x, ~65 s, regardless)
    ran = run_gemini(gemini, server, repo, home, "[[write r.txt: r]]", env=env)
    err = error_object(ran)
    assert ran.returncode == code and err["error"]["code"] == status
    assert len(server.requests) == 1
    assert "Max attempts reached" in ran.stderr
    envelope = unwrap(ran.stderr)
    assert envelope is not None and envelope.error is not None
    assert "try later" in envelope.error


def test_a_transient_429_is_retried_after_about_5s_and_the_task_completes(
    gemini: Path, server: ModelServer, repo: Path, home: Path
) -> None:
    server.fail_with = Reply(429, {"error": {"code": 429, "message": "slow down"}})
    server.fail_first = 1
    ran = run_gemini(
        gemini, server, repo, home, "[[write t.txt: t]]", env={"GEMINI_MODEL": PINNED_MODEL}
    )
    res = success_object(ran)
    assert ran.returncode == 0 and (repo / "t.txt").read_text() == "t"
    assert "Attempt 1 failed with status 429. Retrying with backoff..." in ran.stderr
    first, second = server.requests[0].at, server.requests[1].at
    assert 3.0 < second - first < 15.0  # initial backoff 5 s +/- 30% jitter
    api = res["stats"]["models"][PINNED_MODEL]["api"]
    assert api["totalRequests"] == 3 and api["totalErrors"] == 1  # the failed try counts


# (Writes into .git/ are refused the same way: gemini_test.py checks both through specexec.)
def test_write_outside_the_workspace_is_refused_and_visible(
    gemini: Path, server: ModelServer, repo: Path, home: Path
) -> None:
    target = repo.parent / "outside.txt"
    ran = run_gemini(gemini, server, repo, home, f"[[write {target}: out]]")
    res = success_object(ran)
    # Not an error for the CLI (exit 0): the refusal goes back to the model as a tool error,
    # is logged on stderr and counted in stats.tools.
    assert ran.returncode == 0
    assert not target.exists()
    assert f'Error executing tool write_file: Path not in workspace: Attempted path "{target}"' in (
        ran.stderr
    )
    tool = res["stats"]["tools"]["byName"]["write_file"]
    assert tool["fail"] == 1 and tool["success"] == 0
    reply = server.requests[-1].json()["contents"][-1]["parts"][0]["functionResponse"]
    assert "resolves outside the allowed workspace directories" in reply["response"]["error"]
    # The scripted model reports the tool error as its blocker.
    result = final_json(res["response"])
    assert result["status"] == "fail" and "Path not in workspace" in result["blocker"]
    # The plugin makes it an error whatever the model says, and names the refused path.
    env = unwrap(ran.stdout + ran.stderr)
    assert env is not None and env.error is not None
    assert env.error.startswith("gemini rejected an edit (write_file failed): Path not in")
    assert env.denials == (f"write_file {target}",)


# "googleapis" as it appears in a DNS query traced with strace -x (binary: all hex).
GOOGLEAPIS_IN_DNS = "".join(f"\\x{b:02x}" for b in b"googleapis")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("usage_statistics", [False, None])
def test_only_the_local_server_is_contacted(
    gemini: Path,
    server: ModelServer,
    repo: Path,
    home: Path,
    tmp_path: Path,
    usage_statistics: bool | None,
) -> None:
    # With the two settings of SETTINGS and the plugin's env: only 127.0.0.1. Without
    # privacy.usageStatisticsEnabled=false the CLI resolves play.googleapis.com (Clearcut).
    if usage_statistics is None:
        settings = {"security": SETTINGS["security"]}
        (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    trace = tmp_path / "net.trace"
    argv = ["-f", "-qq", "-x", "-s", "128", "-e", "trace=connect,sendto,sendmmsg"]
    ran = run_cli(
        [str(shutil.which("strace")), *argv, "-o", str(trace), str(gemini), *PRESET],
        cwd=repo,
        env=gemini_env(server.url, home),
        stdin=PROMPT.format(directives="[[write s.txt: s]]"),
        timeout=TIMEOUT,
    )
    assert ran.returncode == 0 and (repo / "s.txt").read_text() == "s"
    lines = trace.read_text().splitlines()
    inet = [line for line in lines if "connect(" in line and "sa_family=AF_INET" in line]
    if usage_statistics is None:
        assert any(GOOGLEAPIS_IN_DNS in line for line in lines)
    else:
        assert inet and all('inet_addr("127.0.0.1")' in line for line in inet), inet
        assert not any(GOOGLEAPIS_IN_DNS in line for line in lines)
