"""The aider plugin's ``unwrap`` on the real output of aider-chat 0.86.2.

``aider_samples/*.txt`` are the stdout of the real CLI run with the plugin's argv against
``tests/conformance/proto_openai_chat.py``, in a ``git worktree`` (temp paths replaced by
``/tmp/T``); stderr was empty and the exit code 0 in every case
(tests/conformance/FINDINGS_aider.md tells how each was made). ``nomodel.txt`` was cut at
the 5-minute wait for the OpenRouter login. ``exhausted429_try_again.txt`` (a 429 with
OpenAI's "Please try again in 20s." text), ``exhausted503.txt`` and
``connection_refused.txt`` (an endpoint port nobody listens on) were made the same way in a
plain repository (issue 17's error classes), each after aider's 9 tries (~75 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specexec.workers.agent import Envelope
from specexec.workers.aider import AGENT, unwrap
from specexec.workers.result import WorkerResult, parse_result

SAMPLES = Path(__file__).parent / "aider_samples"


def sample(name: str) -> str:
    return (SAMPLES / f"{name}.txt").read_text(encoding="utf-8")


def envelope(name: str) -> Envelope:
    env = unwrap(sample(name))
    assert env is not None
    return env


def parsed(tmp_path: Path, output: str, result: dict[str, object] | None = None) -> WorkerResult:
    log = tmp_path / "T.log"
    log.write_text(output, encoding="utf-8")
    result_file = tmp_path / ".specexec-result.json"
    if result is not None:
        result_file.write_text(json.dumps(result))
    return parse_result(result_file, log, 0, preset="aider")


def test_success_tokens_and_cost() -> None:
    env = envelope("success")
    assert env.kind == "aider"
    assert env.error is None and env.denials == ()
    assert env.tokens == {"input": 1200, "output": 30}  # "1.2k sent": aider rounds
    assert env.cost_usd == 0.0013


def test_success_with_the_result_file_is_a_pass(tmp_path: Path) -> None:
    res = parsed(tmp_path, sample("success"), {"status": "pass", "files_created": ["hello.txt"]})
    assert res.status == "pass" and res.source == "result_file"
    assert res.tokens == {"input": 1200, "output": 30}
    assert res.cost_usd == 0.0013


def test_model_reported_fail(tmp_path: Path) -> None:
    assert envelope("fail").error is None
    res = parsed(tmp_path, sample("fail"), {"status": "fail", "blocker": "tests do not pass"})
    assert res.status == "fail" and res.blocker == "tests do not pass"


def test_http_401() -> None:
    env = envelope("http401")
    assert env.tokens is None and env.cost_usd is None
    assert env.error == (
        "aider reported an error: litellm.AuthenticationError: AuthenticationError: "
        "OpenAIException - bad key The API provider is not able to authenticate you. "
        "Check your API key."
    )


def test_http_429_retried_in_vain() -> None:
    env = envelope("exhausted429")
    assert env.error is not None
    assert env.error.startswith("aider reported an error: litellm.RateLimitError: RateLimitError")
    assert "Retrying" not in env.error  # only the last, final error


def test_http_500_that_recovers_is_no_error() -> None:
    # The retried errors come before the reply (and its Tokens: line): they are history.
    text = sample("recovered500")
    assert "litellm.InternalServerError" in text
    env = envelope("recovered500")
    assert env.error is None
    assert env.tokens == {"input": 1200, "output": 30}


def test_malformed_edit_uses_up_the_reflections() -> None:
    env = envelope("malformed")
    assert env.error == (
        "aider reported an error: aider stopped after 3 reflections (the LLM did not "
        "conform to the edit format: No filename provided before ``` in file listing)"
    )
    assert env.tokens == {"input": 5000, "output": 56}  # 4 Tokens: lines, summed
    assert env.cost_usd == 0.0051  # the last line's session total, not a sum of them


def test_malformed_edit_is_a_fail_although_the_answer_holds_a_pass(tmp_path: Path) -> None:
    # The rejected reply was echoed: a pass line in it must not count.
    text = sample("jsonblock")
    assert '{"status": "pass", "files_created": ["hello.txt"]}' in text
    res = parsed(tmp_path, text)
    assert res.status == "fail"
    assert "did not conform to the edit format" in (res.blocker or "")


def test_lint_errors_left_after_the_reflections() -> None:
    env = envelope("lint")
    assert env.error == (
        "aider reported an error: aider stopped after 3 reflections (lint errors are left "
        "in the edited files)"
    )


def test_edit_into_dot_git_is_refused_and_fails_the_pass(tmp_path: Path) -> None:
    # In a linked worktree .git is a file: aider cannot create .git/evil.txt, applies the
    # other edits (in.txt and the result file saying pass) and exits 0.
    env = envelope("gitdir")
    assert env.error == (
        "aider reported an error: aider could not create .git/evil.txt and skipped its edits"
    )
    assert env.denials == ("edit .git/evil.txt",)
    res = parsed(tmp_path, sample("gitdir"), {"status": "pass", "files_created": ["in.txt"]})
    assert res.status == "fail"
    assert "could not create .git/evil.txt" in (res.blocker or "")
    assert res.denials == ("edit .git/evil.txt",)


def test_edit_outside_the_worktree_is_a_git_failure() -> None:
    # `git add` of the new file outside the repository fails: no edit is applied at all
    # (aider has touched an empty outside.txt by then).
    env = envelope("refused")
    assert env.error is not None
    assert "could not create .git/evil.txt" in env.error
    assert (
        "git failed while aider applied the edits to ../outside.txt (none was applied): "
        "Cmd('git') failed due to: exit code(128)" in env.error
    )
    assert env.denials == ("edit .git/evil.txt", "edit ../outside.txt")


def test_gitignored_path_is_refused() -> None:
    # The line aider prints for an edit to an ignored path (the result file in
    # .git/info/exclude, in test_excluded_result_file_is_skipped); rich wraps at 80 columns.
    text = sample("success").replace(
        "Applied edit to .specexec-result.json\n",
        "Skipping edits to a/rather/long/path/to/some/module/that/is/ignored.py that matches\n"
        "gitignore spec.\n",
    )
    env = unwrap(text)
    assert env is not None and env.error is not None
    assert "skipped the edit to a/rather/long/path/to/some/module/that/is/ignored.py" in env.error
    assert env.denials == ("edit a/rather/long/path/to/some/module/that/is/ignored.py",)


def test_git_config_lock_race() -> None:
    # Two aider processes starting side by side in worktrees of a repository without a git
    # identity: one crashes on .git/config.lock (exit 1, after its bug report).
    env = envelope("gitlock")
    assert env.error == (
        "aider reported an error: aider could not lock /tmp/T/repo/.git/config (another "
        "aider was writing the placeholder git identity it adds when git has no "
        "user.name/user.email: set them in git's config)"
    )


def test_other_crash_names_the_exception() -> None:
    text = sample("gitlock").replace("OSError: Lock for file", "OSError: Disk on fire; file")
    env = unwrap(text)
    assert env is not None and env.error is not None
    assert env.error.startswith("aider reported an error: aider stopped on an exception: OSError")


def test_no_model_and_no_key() -> None:
    env = envelope("nomodel")
    assert env.error == (
        "aider reported an error: No LLM model was specified and no API keys were provided."
    )


@pytest.mark.parametrize(
    "line",
    [
        "Error: something went wrong",
        "litellm.AuthenticationError: AuthenticationError: OpenAIException - bad key",
        "The LLM did not conform to the edit format.",
        "Only 3 reflections allowed, stopping.",
        "Unable to create x.txt, skipping edits.",
        "Skipping edits to x.txt that matches gitignore spec.",
        "Model openai/x has hit a token limit!",
        "Traceback (most recent call last):",
    ],
)
def test_the_models_own_text_is_never_an_error(line: str) -> None:
    # A file the model writes (here: notes.md in its first reply) may hold any line.
    listing = f"notes.md\n\n```\n{line}\n\n```\n\n\n"
    text = sample("success").replace(
        "hello.txt\n\n```\nhello world", listing + "hello.txt\n\n```\nhello world", 1
    )
    assert listing in text
    env = unwrap(text)
    assert env is not None
    assert env.error is None and env.denials == ()


def test_cost_on_its_own_line_and_cache_tokens() -> None:
    # With both cache parts aider puts the Cost: part on the next line.
    text = (
        "Tokens: 12k sent, 1.1k cache write, 9.5k cache hit, 250 received.\n"
        "Cost: $0.02 message, $0.02 session.\n"
        "Applied edit to a.txt\n"
        "Tokens: 2.3k sent, 150 received. Cost: $0.01 message, $0.03 session.\n"
    )
    env = unwrap(text)
    assert env is not None and env.error is None
    assert env.tokens == {"input": 14300, "output": 400, "cache_write": 1100, "cache_hit": 9500}
    assert env.cost_usd == 0.03


def test_tokens_without_prices() -> None:
    # A model without known prices: no Cost: part.
    env = unwrap("Tokens: 620 sent, 30 received.\nApplied edit to hello.txt\n")
    assert env is not None and env.tokens == {"input": 620, "output": 30}
    assert env.cost_usd is None


def test_other_output_is_not_aiders() -> None:
    assert unwrap("hello\nworld\n") is None
    assert unwrap("") is None


def test_the_preset() -> None:
    assert AGENT.head[0] == "aider"
    for flag in (
        "--yes-always",
        "--no-auto-commits",
        "--no-gitignore",
        "--no-pretty",
        "--no-stream",
        "--no-fancy-input",
        "--no-check-update",
        "--analytics-disable",
        "--no-show-release-notes",
    ):
        assert flag in AGENT.head
    assert AGENT.tail == ("--message-file", "{prompt_file}")
    assert not AGENT.stdin_prompt
    assert not AGENT.answer_block  # a ```json block breaks the whole edit format
    assert dict(AGENT.env or {}) == {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "BROWSER": "true"}
    assert AGENT.leaves == (":(glob).aider*", ":(glob).aider*/**")


# --------------------------------------------------------------------------- error classes


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("http401", "auth"),  # litellm.AuthenticationError
        ("exhausted429", "rate_limit"),  # litellm.RateLimitError, 9 tries in vain
        ("nomodel", "auth"),  # no model and no key: the OpenRouter login offer
        # Nothing listening on the endpoint's port: litellm.InternalServerError
        # "Connection error.", 9 tries in vain.
        ("connection_refused", "overloaded"),
        ("exhausted503", "overloaded"),  # litellm.ServiceUnavailableError, 9 tries
    ],
)
def test_api_errors_have_a_class(tmp_path: Path, name: str, cls: str) -> None:
    env = envelope(name)
    assert env.error is not None
    assert env.error_class == cls and env.retry_after_s is None  # aider prints no wait
    res = parsed(tmp_path, sample(name))
    assert res.status == "fail" and res.error_class == cls


@pytest.mark.parametrize("name", ["malformed", "jsonblock", "lint", "gitdir", "refused", "gitlock"])
def test_what_aider_did_wrong_stays_an_agent_error(tmp_path: Path, name: str) -> None:
    # Refused or malformed edits, lint errors left, a crash: no class of the service's.
    env = envelope(name)
    assert env.error is not None and env.error_class is None and env.retry_after_s is None
    res = parsed(tmp_path, sample(name))
    assert res.status == "fail" and res.error_class == "agent_error"


def test_a_recovered_error_has_no_class() -> None:
    env = envelope("recovered500")
    assert env.error is None and env.error_class is None


def final_error(line: str, explanation: str = "") -> str:
    """``exhausted429`` with its final error replaced by ``line`` (and aider's
    explanation line for that exception)."""
    text = sample("exhausted429")
    last = text.rindex("litellm.RateLimitError")
    return text[:last] + line + "\n" + (explanation + "\n" if explanation else "") + "\n"


@pytest.mark.parametrize(
    ("line", "cls"),
    [
        (
            "litellm.InternalServerError: InternalServerError: OpenAIException - boom",
            "overloaded",
        ),
        (
            "litellm.ServiceUnavailableError: ServiceUnavailableError: OpenAIException - busy",
            "overloaded",
        ),
        ("litellm.BadGatewayError: BadGatewayError: OpenAIException - 502", "overloaded"),
        ("litellm.Timeout: Timeout: OpenAIException - Request timed out.", "overloaded"),
        ("litellm.APIError: APIError: OpenAIException - Error code: 529 overloaded", "overloaded"),
        ("litellm.APIError: APIError: OpenAIException - Error code: 418", None),
        ("litellm.BadRequestError: BadRequestError: OpenAIException - bad", None),
        ("litellm.NotFoundError: NotFoundError: OpenAIException - no such model", None),
        ("litellm.ContextWindowExceededError: ContextWindowExceededError: too long", None),
        ("litellm.PermissionDeniedError: PermissionDeniedError: forbidden", "auth"),
    ],
)
def test_each_litellm_exception_maps_to_a_class(line: str, cls: str | None) -> None:
    env = unwrap(final_error(line))
    assert env is not None and env.error is not None and line in env.error
    assert env.error_class == cls


@pytest.mark.parametrize(
    ("said", "wait"),
    [
        ("Please try again in 20s.", 20.0),
        ("Please try again in 1.5s.", 1.5),
        ("Please try again in 350ms.", 0.35),
        ("Please try again in 7m12s.", 432.0),
        ("Please try again in 1h2m3s.", 3723.0),
        ("retry-after: 30", 30.0),
    ],
)
def test_the_providers_stated_wait(said: str, wait: float) -> None:
    line = f"litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached. {said}"
    env = unwrap(final_error(line, "The API provider has rate limited you."))
    assert env is not None and env.error_class == "rate_limit"
    assert env.retry_after_s == pytest.approx(wait)


def test_the_wait_an_exhausted_rate_limit_states(tmp_path: Path) -> None:
    # OpenAI's 429 text ("... Please try again in 20s.", wrapped at 80 columns by aider),
    # 9 tries in vain; the retry-after: 20 header the server also sent is not printed.
    env = envelope("exhausted429_try_again")
    assert env.error_class == "rate_limit" and env.retry_after_s == 20.0
    res = parsed(tmp_path, sample("exhausted429_try_again"))
    assert res.error_class == "rate_limit" and res.retry_after_s == 20.0


def test_no_wait_for_an_auth_error() -> None:
    line = "litellm.AuthenticationError: AuthenticationError: bad key. Please try again in 20s."
    env = unwrap(final_error(line))
    assert env is not None and env.error_class == "auth" and env.retry_after_s is None


def test_success_has_no_class(tmp_path: Path) -> None:
    assert envelope("success").error_class is None
    res = parsed(tmp_path, sample("success"), {"status": "pass", "files_created": ["hello.txt"]})
    assert res.status == "pass" and res.error_class is None
