"""The real Aider CLI (pinned in install_agents) against the scripted OpenAI chat model.

Runs ``aider`` the way the specexec preset does: the argv of ``specexec.workers.aider.AGENT``
(head + tail, the prompt file outside the worktree), its environment defaults, specexec's
own prompt (rendered with the plugin's ``answer_block``), stdin /dev/null, cwd = a fresh git
repository, a throwaway HOME, and only 127.0.0.1 reachable through OPENAI_API_BASE. What
``specexec run`` itself makes of it (pass, fail, 401, rejected edits) is in aider_test.py;
these tests pin the CLI behaviour the plugin relies on. See FINDINGS_aider.md.
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

from specexec.run.prompt import ParallelContext, render_prompt
from specexec.tasksfile.types import Spec, Task
from specexec.workers.aider import AGENT, unwrap

PRESET = list(AGENT.head[1:])  # the flags, without the executable
MODEL = f"openai/{proto_openai_chat.MODEL_ID}"
RESULT_FILE = ".specexec-result.json"  # where specexec's prompt asks for the result
TIMEOUT = 90.0
# aider's own retry loop: sleeps 0.25, 0.5, ... 32 s (63.75 s), 9 attempts; not a flag.

TOKENS_RE = re.compile(
    r"^Tokens: (?P<sent>[\d.]+k?) sent, (?P<received>[\d.]+k?) received\. "
    r"Cost: \$(?P<message>[\d.]+) message, \$(?P<session>[\d.]+) session\.$",
    re.M,
)
JSON_BLOCK_RE = re.compile(r"```json\s*\n(?P<body>.*?)\n```", re.S)
NOT_CONFORM = "The LLM did not conform to the edit format."


def prompt_text(directives: str, tmp_path: Path) -> str:
    """specexec's worker prompt for a task whose summary holds the model's directives."""
    task = Task(id="1.1", summary=directives, relevant_files=("hello.txt",))
    spec = Spec(dir=tmp_path / "no-spec-folder", name="demo", tasks=(task,))
    return render_prompt(
        spec,
        task,
        parallel=ParallelContext(wave=1),
        inputs=(),
        result_file=RESULT_FILE,
        answer_block=AGENT.answer_block,
    )


def write_aider_home(home: Path) -> None:
    """The files aider reads from HOME so that it never goes to the internet (a user's
    setup for a model aider does not know)."""
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


def endpoint_env(url: str, home: Path) -> dict[str, str]:
    """What a user sets for aider: endpoint, key, model (and nothing of the plugin's)."""
    return {
        **base_env(home),
        "OPENAI_API_BASE": f"{url}/v1",
        "OPENAI_API_KEY": "sk-scripted-0000",
        "AIDER_MODEL": MODEL,
    }


def aider_env(url: str, home: Path) -> dict[str, str]:
    """The user's environment plus the plugin's defaults, as specexec runs aider."""
    return {**endpoint_env(url, home), **dict(AGENT.env or {})}


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
    prompt.write_text(prompt_text(directives, tmp_path))
    tail = [a.replace("{prompt_file}", str(prompt)) for a in AGENT.tail]
    argv = [str(exe), *preset, *(extra or []), *tail]
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


def worktree(tmp_path: Path) -> Path:
    """A linked worktree outside its repository, as specexec makes them (.git is a file)."""
    main = git_repo(tmp_path / "main")
    wt = tmp_path / "wt" / "t1"
    subprocess.run(["git", "worktree", "add", "-q", "-b", "t1", str(wt)], cwd=main, check=True)
    return wt


def test_whole_format_writes_the_file_and_the_result_file(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    # A real terminal type: --no-fancy-input keeps prompt_toolkit (and its "Input is not a
    # terminal" warning on stderr) out.
    ran, repo = run_aider(
        aider,
        server,
        tmp_path,
        "[[write hello.txt: hello world\\n]]",
        env={"TERM": "xterm-256color"},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    assert "Model: openai/specexec-scripted with whole edit format" in ran.stdout
    assert (repo / "hello.txt").read_text() == "hello world\n"
    assert "Applied edit to hello.txt" in ran.stdout
    assert f"Applied edit to {RESULT_FILE}" in ran.stdout
    result = json.loads((repo / RESULT_FILE).read_text())
    assert result == {"status": "pass", "files_created": ["hello.txt"]}
    assert TOKENS_RE.search(ran.stdout), ran.stdout
    assert "https://aider.chat/HISTORY.html" not in ran.stdout  # --no-show-release-notes
    assert model_calls(server) == 1
    assert {r.path for r in server.requests} == {"/v1/chat/completions"}
    env = unwrap(ran.stdout)
    assert env is not None and env.error is None and env.denials == ()
    assert env.tokens and env.tokens["input"] > 0 and env.tokens["output"] > 0
    assert env.cost_usd and env.cost_usd > 0
    # The repository's config had no git identity (it came from GIT_AUTHOR_* variables):
    # aider wrote a placeholder into it (into the shared .git/config, for a worktree).
    config = ["git", "config", "--local", "--get", "user.name"]
    assert subprocess.run(config, cwd=repo, capture_output=True, text=True).stdout == (
        "Your Name\n"
    )
    # New files are `git add`ed (even with --no-auto-commits); history + tags cache remain.
    assert sorted(porcelain(repo)) == [
        "?? .aider.chat.history.md",
        "?? .aider.tags.cache.v4/cache.db",
        f"AM {RESULT_FILE}",
        "AM hello.txt",
    ]


def test_whole_format_rejects_a_final_json_block(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    # What a model does with answer_block=True's prompt ("also end your final answer with
    # it"): in the whole format the ```json fence is a file listing without a name, and the
    # whole reply is rejected. Hence the plugin's answer_block=False.
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
    env = unwrap(ran.stdout)
    assert env is not None and env.error and "3 reflections" in env.error


def test_diff_format_writes_the_result_file_too(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    # Known models (GPT-4o, Claude...) get the diff format: an empty SEARCH makes a file.
    ran, repo = run_aider(
        aider,
        server,
        tmp_path,
        "[[write hello.txt: hello world\\n]]",
        extra=["--edit-format", "diff"],
    )
    assert ran.returncode == 0, ran.stderr
    assert "with diff edit format" in ran.stdout
    assert "<<<<<<< SEARCH" in ran.stdout
    assert (repo / "hello.txt").read_text() == "hello world\n"
    result = json.loads((repo / RESULT_FILE).read_text())
    assert result == {"status": "pass", "files_created": ["hello.txt"]}
    env = unwrap(ran.stdout)
    assert env is not None and env.error is None and env.tokens


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
    env = unwrap(ran.stdout)
    assert env is not None and env.error is None  # the errors it got over are no failure


def test_edits_into_dot_git_or_outside_the_worktree_are_refused(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    wt = worktree(tmp_path)
    ran, _ = run_aider(
        aider,
        server,
        tmp_path,
        "[[write .git/evil.txt: x]] [[write ../outside.txt: out]] [[write in.txt: in]]",
        cwd=wt,
    )
    assert ran.returncode == 0
    # .git is a file in a linked worktree: aider cannot create the path and skips it.
    assert "Unable to create .git/evil.txt, skipping edits." in ran.stdout
    # It creates the outside file (empty), then `git add` fails and no edit is applied.
    assert "Cmd('git') failed due to: exit code(128)" in ran.stdout
    assert (wt.parent / "outside.txt").read_text() == ""
    assert not (wt / "in.txt").exists() and not (wt / RESULT_FILE).exists()
    env = unwrap(ran.stdout)
    assert env is not None and env.error
    assert "could not create .git/evil.txt" in env.error
    assert "applied the edits to ../outside.txt (none was applied)" in env.error
    assert env.denials == ("edit .git/evil.txt", "edit ../outside.txt")


def test_lint_errors_use_up_the_reflections(
    aider: Path, server: ModelServer, tmp_path: Path
) -> None:
    # Aider lints what it edited (flake8 for Python) and sends the errors back; the
    # scripted model repeats itself, so the 3 reflections run out. The edits, result file
    # ("pass") included, are on disk: only the output tells.
    ran, repo = run_aider(aider, server, tmp_path, "[[write bad.py: def f(:\\n    pass\\n]]")
    assert ran.returncode == 0
    assert "# Fix any errors below, if possible." in ran.stdout
    assert "Only 3 reflections allowed, stopping." in ran.stdout
    assert model_calls(server) == 4
    assert json.loads((repo / RESULT_FILE).read_text())["status"] == "pass"
    env = unwrap(ran.stdout)
    assert env is not None and env.error and "lint errors" in env.error


def test_excluded_result_file_is_skipped(aider: Path, server: ModelServer, tmp_path: Path) -> None:
    # A path in .git/info/exclude (or .gitignore) is not editable by aider.
    repo = git_repo(tmp_path / "repo")
    (repo / ".git" / "info" / "exclude").write_text(f"{RESULT_FILE}\n.aider*\n")
    ran, _ = run_aider(aider, server, tmp_path, "[[write hello.txt: hi]]", cwd=repo)
    assert f"Skipping edits to {RESULT_FILE} that matches gitignore spec." in ran.stdout
    assert not (repo / RESULT_FILE).exists()
    assert (repo / "hello.txt").read_text() == "hi\n"
    assert sorted(porcelain(repo)) == [
        "!! .aider.chat.history.md",
        "!! .aider.tags.cache.v4/cache.db",
        "AM hello.txt",
    ]
    env = unwrap(ran.stdout)
    assert env is not None and env.error and env.denials == (f"edit {RESULT_FILE}",)


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
    assert sorted(porcelain(repo)) == [f"AM {RESULT_FILE}", "AM hello.txt"]
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
    # A fresh HOME is a "first run": --yes-always accepts "open the release notes?"
    # unless --no-show-release-notes (in the preset).
    log = tmp_path / "browser.log"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    browser.chmod(0o755)
    without = [a for a in PRESET if a != "--no-show-release-notes"]
    ran, _ = run_aider(
        aider, server, tmp_path, "[[write a.txt: a]]", preset=without, env={"BROWSER": str(browser)}
    )
    assert ran.returncode == 0
    assert log.read_text().strip() == "https://aider.chat/HISTORY.html#release-notes"
    log.unlink()
    ran2, _ = run_aider(
        aider, server, tmp_path / "quiet", "[[write a.txt: a]]", env={"BROWSER": str(browser)}
    )
    assert ran2.returncode == 0
    assert not log.exists()


@pytest.mark.slow
def test_no_model_and_no_key_waits_for_an_openrouter_login(aider: Path, tmp_path: Path) -> None:
    # --yes-always accepts the OpenRouter login offer, then aider waits 5 minutes for the
    # browser's callback: a worker without a model configured hangs (until its timeout).
    repo = git_repo(tmp_path / "repo")
    home = tmp_path / "home"
    write_aider_home(home)
    env = aider_env("http://127.0.0.1:9", home)
    del env["AIDER_MODEL"], env["OPENAI_API_KEY"]
    prompt = tmp_path / "prompt.md"
    prompt.write_text(prompt_text("[[write hello.txt: hi]]", tmp_path))
    tail = [a.replace("{prompt_file}", str(prompt)) for a in AGENT.tail]
    ran = run_cli([str(aider), *PRESET, *tail], cwd=repo, env=env, stdin=None, timeout=20)
    assert ran.returncode is None  # still waiting when killed
    assert "Waiting up to 5 minutes for you to finish in the browser..." in ran.stdout
    env_ = unwrap(ran.stdout)
    assert env_ is not None and env_.error and "No LLM model was specified" in env_.error
