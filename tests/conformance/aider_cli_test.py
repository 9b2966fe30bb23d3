"""The real Aider CLI (pinned in install_agents) against the scripted OpenAI chat model.

Runs ``aider`` the way the specexec preset does: ``aider --yes-always --no-auto-commits
--no-gitignore --no-pretty --no-stream --no-check-update --analytics-disable
--message-file PROMPT_FILE``, stdin /dev/null, cwd = a fresh git repository, a throwaway
HOME, and only 127.0.0.1 reachable through OPENAI_API_BASE. See FINDINGS_aider.md for what
each assertion documents.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import proto_openai_chat
import pytest
from modelserver import ModelServer, Reply
from support import Ran, base_env, git_repo, porcelain, require_cli, run_cli

PRESET = [
    "--yes-always",
    "--no-auto-commits",
    "--no-gitignore",
    "--no-pretty",
    "--no-stream",
    "--no-check-update",
    "--analytics-disable",
]
MODEL = f"openai/{proto_openai_chat.MODEL_ID}"
TIMEOUT = 90.0
# aider's own retry loop: sleeps 0.25, 0.5, ... 32 s (63.75 s), 9 attempts; not a flag.
RETRY_TIMEOUT = 150.0

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

TOKENS_RE = re.compile(
    r"^Tokens: (?P<sent>[\d.]+k?) sent, (?P<received>[\d.]+k?) received\. "
    r"Cost: \$(?P<message>[\d.]+) message, \$(?P<session>[\d.]+) session\.$",
    re.M,
)
JSON_BLOCK_RE = re.compile(r"```json\s*\n(?P<body>.*?)\n```", re.S)
NOT_CONFORM = "The LLM did not conform to the edit format."


def write_aider_home(home: Path) -> None:
    """The files aider reads from HOME so that it never goes to the internet."""
    home.mkdir(parents=True, exist_ok=True)
    # Known context window + prices for the model: aider then does not download litellm's
    # price list from raw.githubusercontent.com, prints no "Unknown context window"
    # warning, and its Tokens: line carries a Cost: part.
    metadata = {
        MODEL: {
            "max_input_tokens": 128000,
            "max_output_tokens": 8192,
            "input_cost_per_token": 0.000001,
            "output_cost_per_token": 0.000002,
            "litellm_provider": "openai",
            "mode": "chat",
        }
    }
    (home / ".aider.model.metadata.json").write_text(json.dumps(metadata))
    # "aider/extra_params" applies to every model: max_retries=0 stops the openai client's
    # own 2 retries inside each of aider's 9 attempts (27 requests -> 9).
    (home / ".aider.model.settings.yml").write_text(
        "- name: aider/extra_params\n  extra_params:\n    max_retries: 0\n"
    )


def aider_env(url: str, home: Path) -> dict[str, str]:
    """Endpoint + key + model, and everything that would reach a vendor host turned off."""
    return {
        **base_env(home),
        "OPENAI_API_BASE": f"{url}/v1",
        "OPENAI_API_KEY": "sk-scripted-0000",
        "AIDER_MODEL": MODEL,
        # litellm downloads its model cost map on import unless told to use its bundled one.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # --yes-always answers "open URL?" with yes (release notes on a fresh HOME, URLs
        # in API errors): webbrowser.open() must not find a real browser.
        "BROWSER": "true",
    }


@pytest.fixture
def aider() -> Path:
    return require_cli("aider")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(proto_openai_chat.ROUTES) as srv:
        yield srv


def run_aider(
    exe: Path,
    server: ModelServer,
    tmp_path: Path,
    directives: str,
    *,
    extra: list[str] | None = None,
    preset: list[str] = PRESET,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> tuple[Ran, Path]:
    repo = cwd or git_repo(tmp_path / "repo")
    home = tmp_path / "home"
    write_aider_home(home)
    prompt = tmp_path / "prompt.md"  # specexec's prompt file lives outside the worktree
    prompt.write_text(PROMPT.format(directives=directives))
    argv = [str(exe), *preset, *(extra or []), "--message-file", str(prompt)]
    ran = run_cli(
        argv,
        cwd=repo,
        env={**aider_env(server.url, home), **(env or {})},
        stdin=None,
        timeout=timeout,
    )
    return ran, repo


def model_calls(server: ModelServer) -> int:
    return sum(r.path.startswith("/v1/chat/completions") for r in server.requests)


def test_whole_format_writes_the_file_and_the_result_file(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    ran, repo = run_aider(aider, server, tmp_path, "[[write hello.txt: hello world\\n]]")
    assert ran.returncode == 0, ran.stderr
    assert "Model: openai/specexec-scripted with whole edit format" in ran.stdout
    assert (repo / "hello.txt").read_text() == "hello world\n"
    assert "Applied edit to hello.txt" in ran.stdout
    result = json.loads((repo / ".specexec-result.json").read_text())
    assert result == {"status": "pass", "files_created": ["hello.txt"]}
    # The result file's content is echoed on stdout as a bare line (no ```json fence).
    assert '{"status": "pass", "files_created": ["hello.txt"]}' in ran.stdout.splitlines()
    m = TOKENS_RE.search(ran.stdout)
    assert m, ran.stdout
    assert ran.stderr == ""
    assert model_calls(server) == 1
    assert {r.path for r in server.requests} == {"/v1/chat/completions"}
    # New files are `git add`ed (even with --no-auto-commits); history + tags cache remain.
    assert sorted(porcelain(repo)) == [
        "?? .aider.chat.history.md",
        "?? .aider.tags.cache.v4/cache.db",
        "AM .specexec-result.json",
        "AM hello.txt",
    ]


def test_whole_format_rejects_a_final_json_block(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    # What a model following specexec's prompt literally does in the whole format: the
    # ```json fence is read as a file listing without a name -> the whole reply is rejected.
    ran, repo = run_aider(
        aider, server, tmp_path, "[[write hello.txt: hello world\\n]] [[json block]]"
    )
    assert ran.returncode == 0
    assert ran.stdout.count(NOT_CONFORM) == 4
    assert "No filename provided before ``` in file listing" in ran.stdout
    assert "Only 3 reflections allowed, stopping." in ran.stdout
    assert not (repo / "hello.txt").exists()
    assert model_calls(server) == 4  # 1 + 3 reflections
    assert len(TOKENS_RE.findall(ran.stdout)) == 4  # one Tokens: line per model call


def test_diff_format_writes_the_file_and_keeps_the_json_block(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    ran, repo = run_aider(
        aider,
        server,
        tmp_path,
        "[[write hello.txt: hello world\\n]]",
        extra=["--edit-format", "diff"],
    )
    assert ran.returncode == 0, ran.stderr
    assert "with diff edit format" in ran.stdout
    assert (repo / "hello.txt").read_text() == "hello world\n"
    blocks = JSON_BLOCK_RE.findall(ran.stdout)
    assert json.loads(blocks[-1]) == {"status": "pass", "files_created": ["hello.txt"]}
    assert ran.stdout.rstrip().endswith("Applied edit to hello.txt")  # after the answer
    assert TOKENS_RE.search(ran.stdout)


def test_model_reported_fail(aider: Path, server: ModelServer, tmp_path: Path) -> None:
    ran, _ = run_aider(
        aider,
        server,
        tmp_path,
        "[[status fail: tests do not pass]]",
        extra=["--edit-format", "diff"],
    )
    assert ran.returncode == 0
    blocks = JSON_BLOCK_RE.findall(ran.stdout)
    assert json.loads(blocks[-1]) == {"status": "fail", "blocker": "tests do not pass"}
    # Same in the default whole format, through the result file.
    server.requests.clear()
    _, repo2 = run_aider(aider, server, tmp_path / "whole", "[[status fail: tests do not pass]]")
    assert json.loads((repo2 / ".specexec-result.json").read_text())["status"] == "fail"


def test_http_401_is_reported_on_stdout_with_exit_0(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    server.fail_with = Reply(401, {"error": {"message": "bad key", "type": "invalid_key"}})
    ran, repo = run_aider(aider, server, tmp_path, "[[write hello.txt: x]]")
    assert ran.returncode == 0  # aider exits 0 on an API error
    assert "litellm.AuthenticationError: AuthenticationError: OpenAIException - bad key" in (
        ran.stdout
    )
    assert "The API provider is not able to authenticate you. Check your API key." in ran.stdout
    assert ran.stderr == ""
    assert not TOKENS_RE.search(ran.stdout) and "Tokens:" not in ran.stdout
    assert model_calls(server) == 1  # not retried
    assert ran.seconds < 30
    assert not (repo / "hello.txt").exists()


def test_http_500_then_success_is_retried(aider: Path, server: ModelServer, tmp_path: Path) -> None:
    server.fail_with = Reply(500, {"error": {"message": "boom", "type": "server_error"}})
    server.fail_first = 2
    ran, repo = run_aider(aider, server, tmp_path, "[[write hello.txt: hello world\\n]]")
    assert ran.returncode == 0
    assert "litellm.InternalServerError: InternalServerError: OpenAIException - boom" in (
        ran.stdout
    )
    assert "Retrying in 0.2 seconds..." in ran.stdout
    assert "Retrying in 0.5 seconds..." in ran.stdout
    assert (repo / "hello.txt").read_text() == "hello world\n"
    assert model_calls(server) == 3  # max_retries=0: no hidden client retries


@pytest.mark.slow
@pytest.mark.timeout(RETRY_TIMEOUT + 30)
@pytest.mark.parametrize("status", [429, 500])
def test_http_429_500_retries_for_a_minute_then_exit_0(
    aider: Path, server: ModelServer, tmp_path: Path, status: int
) -> None:
    headers = {"retry-after": "1"} if status == 429 else {}
    server.fail_with = Reply(status, {"error": {"message": "nope"}}, headers=headers)
    ran, _ = run_aider(aider, server, tmp_path, "[[write hello.txt: x]]", timeout=RETRY_TIMEOUT)
    assert ran.returncode == 0
    assert ran.stdout.count("Retrying in") == 8
    assert "Retrying in 32.0 seconds..." in ran.stdout
    assert model_calls(server) == 9
    assert 60 < ran.seconds < RETRY_TIMEOUT


def test_malformed_edit_is_rejected_with_exit_0(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    ran, repo = run_aider(aider, server, tmp_path, "[[malformed edit]]")
    assert ran.returncode == 0
    assert ran.stdout.count(NOT_CONFORM) == 4
    assert "https://aider.chat/docs/troubleshooting/edit-errors.html" in ran.stdout
    assert "Only 3 reflections allowed, stopping." in ran.stdout
    assert model_calls(server) == 4
    assert sorted(porcelain(repo)) == [
        "?? .aider.chat.history.md",
        "?? .aider.tags.cache.v4/cache.db",
    ]


def test_excluded_result_file_is_skipped(aider: Path, server: ModelServer, tmp_path: Path) -> None:
    # A path in .git/info/exclude (or .gitignore) is not editable by aider.
    repo = git_repo(tmp_path / "repo")
    (repo / ".git" / "info" / "exclude").write_text(".specexec-result.json\n.aider*\n")
    ran, _ = run_aider(aider, server, tmp_path, "[[write hello.txt: hi]]", cwd=repo)
    assert "Skipping edits to .specexec-result.json that matches gitignore spec." in ran.stdout
    assert not (repo / ".specexec-result.json").exists()
    assert (repo / "hello.txt").read_text() == "hi\n"
    assert sorted(porcelain(repo)) == [
        "!! .aider.chat.history.md",
        "!! .aider.tags.cache.v4/cache.db",
        "AM hello.txt",
    ]


@pytest.mark.parametrize("where", ["outside", "under-dot-git"])
def test_runs_in_a_git_worktree(
    aider: Path, server: ModelServer, tmp_path: Path, where: str
) -> None:
    main = git_repo(tmp_path / "main")
    wt = main / ".git" / "wt" / "t1" if where == "under-dot-git" else tmp_path / "wt" / "t1"
    subprocess.run(["git", "worktree", "add", "-q", "-b", "t1", str(wt)], cwd=main, check=True)
    ran, _ = run_aider(aider, server, tmp_path, "[[write hello.txt: hello world\\n]]", cwd=wt)
    assert ran.returncode == 0, ran.stderr
    assert (wt / "hello.txt").read_text() == "hello world\n"
    assert "Git repo: " in ran.stdout and "worktrees/t1 with 1 files" in ran.stdout


def test_history_files_can_live_outside_the_worktree(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    ran, repo = run_aider(
        aider,
        server,
        tmp_path,
        "[[write hello.txt: hi]]",
        extra=[
            "--chat-history-file",
            str(logs / "chat.md"),
            "--input-history-file",
            str(logs / "input.history"),
            "--map-tokens",
            "0",  # no repo map: no .aider.tags.cache.v4/
        ],
    )
    assert ran.returncode == 0
    assert "Repo-map: disabled" in ran.stdout
    assert sorted(porcelain(repo)) == ["AM .specexec-result.json", "AM hello.txt"]
    assert (logs / "chat.md").is_file()


def test_streaming_also_works(aider: Path, server: ModelServer, tmp_path: Path) -> None:
    # --no-stream only changes how the usage is counted: the reply is the same.
    preset = [a for a in PRESET if a != "--no-stream"]
    ran, repo = run_aider(aider, server, tmp_path, "[[write hello.txt: hi]]", preset=preset)
    assert ran.returncode == 0, ran.stderr
    assert (repo / "hello.txt").read_text() == "hi\n"
    body = server.requests[0].json()
    assert body.get("stream") is True
    # No stream_options.include_usage: aider counts the tokens itself (an estimate).
    assert "stream_options" not in body
    assert TOKENS_RE.search(ran.stdout)


def test_yes_always_opens_the_release_notes_in_a_browser(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    # A fresh HOME is a "first run": --yes-always accepts "open the release notes?".
    log = tmp_path / "browser.log"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    browser.chmod(0o755)
    ran, _ = run_aider(aider, server, tmp_path, "[[write a.txt: a]]", env={"BROWSER": str(browser)})
    assert ran.returncode == 0
    assert log.read_text().strip() == "https://aider.chat/HISTORY.html#release-notes"
    log.unlink()
    ran2, _ = run_aider(
        aider,
        server,
        tmp_path / "quiet",
        "[[write a.txt: a]]",
        extra=["--no-show-release-notes"],
        env={"BROWSER": str(browser)},
    )
    assert ran2.returncode == 0
    assert not log.exists()
