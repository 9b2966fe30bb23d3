"""The gemini plugin's ``unwrap`` on output the real Gemini CLI 0.61.0 printed against the
scripted model (tests/conformance, FINDINGS_gemini.md): stdout and stderr land in one log,
in either order. Only the temporary folder names were shortened to /tmp/sample; the
samples below are rebuilt from their parts, byte for byte what the CLI printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from specexec.run.processes import ATTEMPT_FOOTER, ATTEMPT_HEADER
from specexec.workers.gemini import AGENT, unwrap
from specexec.workers.result import WorkerResult, parse_result

# The CLI prints its JSON with ``JSON.stringify(obj, null, 2)``: json.dumps(indent=2) to the
# byte for this ASCII output.


def tokens(prompt: int, cached: int, candidates: int, thoughts: int) -> dict[str, int]:
    """A model's ``tokens`` stats: ``input`` is the uncached part of ``prompt``."""
    return {
        "input": prompt - cached,
        "prompt": prompt,
        "candidates": candidates,
        "total": prompt + candidates + thoughts,
        "cached": cached,
        "thoughts": thoughts,
        "tool": 0,
    }


def model_stats(role: str, requests: int, latency_ms: int, toks: dict[str, int]) -> dict[str, Any]:
    """One model's entry in ``stats.models``: all its calls made in ``role``."""
    calls = {"totalRequests": requests, "totalErrors": 0, "totalLatencyMs": latency_ms}
    return {
        "api": {**calls, "errorsByType": {}},
        "tokens": toks,
        "roles": {role: {**calls, "tokens": toks}},
    }


def cli_stdout(
    session_id: str,
    response: str,
    *,
    router_ms: int,
    main_ms: int,
    prompt: int,
    cached: int,
    write_ms: int,
    write_ok: bool = True,
) -> str:
    """What ``gemini --output-format json`` printed for a one-line write_file: the router's
    classifier call, two calls of the chat model, the tool's stats."""
    ok, fail = int(write_ok), int(not write_ok)
    decisions = {"accept": ok, "reject": 0, "modify": 0, "auto_accept": 0}
    write_file = {"count": 1, "success": ok, "fail": fail, "durationMs": write_ms}
    tools = {"totalCalls": 1, "totalSuccess": ok, "totalFail": fail, "totalDurationMs": write_ms}
    stats = {
        "models": {
            "gemini-3.5-flash-lite": model_stats(
                "utility_router", 1, router_ms, tokens(100, 50, 10, 5)
            ),
            "gemini-3.8-flash": model_stats("main", 2, main_ms, tokens(prompt, cached, 20, 10)),
        },
        "tools": {
            **tools,
            "totalDecisions": decisions,
            "byName": {"write_file": {**write_file, "decisions": decisions}},
        },
        "files": {"totalLinesAdded": ok, "totalLinesRemoved": 0},
    }
    return json.dumps({"session_id": session_id, "response": response, "stats": stats}, indent=2)


def answer(result: dict[str, Any]) -> str:
    """The model's final text: a result block."""
    return f"Done.\n\n```json\n{json.dumps(result)}\n```\n"


def cli_error(session_id: str, message: str, code: int, *, indent: int | None = 2) -> str:
    """The JSON object the CLI prints last when it gives up."""
    obj = {"session_id": session_id, "error": {"type": "Error", "message": message, "code": code}}
    return json.dumps(obj, indent=indent)


# The lines the CLI starts its stderr with (TERM=dumb, no ripgrep).
STDERR_HEAD = (
    "Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited. For the best experience, use a terminal emulator with truecolor support.\n"
    "Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.\n"
    "Ripgrep is not available. Falling back to GrepTool.\n"
)
BUNDLE = "file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle"


def frames(text: str) -> str:
    """Node stack frames; ``chunk:`` and ``main:`` stand for the bundle's two files."""
    text = text.replace("chunk:", f"{BUNDLE}/chunk-JDPZ4CE3.js:")
    return text.replace("main:", f"{BUNDLE}/gemini-3HFX2LNT.js:")


TICKS = "process.processTicksAndRejections (node:internal/process/task_queues:95:5)"


def api_frames(call: str, at1: str, at2: str, callers: str) -> str:
    """The frames of a failed API call: from the fetch up to ``retryWithBackoff``, then
    ``callers``."""
    return frames(f"""    at throwErrorIfNotOK (chunk:267833:24)
    at {TICKS}
    at async chunk:{at1}
    at async Models.{call}
    at async chunk:{at2}
    at async chunk:288018:23
    at async retryWithBackoff (chunk:308039:23)
{callers}""")


# The chat model's streamed call, failed: the frames up to Turn.run.
STREAM_FRAMES = api_frames(
    "generateContentStream (chunk:268692:16)",
    "267596:7",
    "311457:19",
    """    at async GeminiChat.makeApiCallAndProcessStream (chunk:332326:28)
    at async GeminiChat.streamWithRetries (chunk:332079:29)
    at async Turn.run (chunk:333001:24)""",
)
# Where the chat model's turn began.
TURN_FRAMES = frames("""    at async GeminiClient.sendMessageStream (chunk:346772:14)
    at async main:12198:26
    at async main (main:17627:5)""")
REPORT = "Full report available at: /tmp/sample/home/tmp/gemini-client-error-"
E401_BODY = '{"error":{"code":401,"message":"API key not valid.","status":"UNAUTHENTICATED"}}'
E500_BODY = '{"error":{"code":500,"message":"internal","status":"INTERNAL"}}'

SUCCESS_STDOUT = cli_stdout(
    "01026fc0-de19-4b70-9469-95b09b7c7566",
    answer({"status": "pass", "files_created": ["hello.txt"]}),
    router_ms=109,
    main_ms=754,
    prompt=22358,
    cached=11179,
    write_ms=102,
)

SUCCESS_STDERR = STDERR_HEAD

MODELFAIL_STDOUT = cli_stdout(
    "2b59a124-775d-4341-a999-b9c9408fa66b",
    answer({"status": "fail", "blocker": "tests fail"}),
    router_ms=164,
    main_ms=580,
    prompt=22356,
    cached=11177,
    write_ms=127,
)

# The router's classifier call fails, then the chat model's: two reports, one error.
E401_STDERR = (
    STDERR_HEAD
    + f"Error generating content via API. {REPORT}generateJson-api-2026-12-01T22-20-30-438Z.json _ApiError: {E401_BODY}\n"
    + api_frames(
        "generateContent (chunk:268643:16)",
        "267584:7",
        "311412:26",
        """    at async BaseLlmClient._generateWithRetry (chunk:308334:14)
    at async BaseLlmClient.generateJson (chunk:308227:21)
    at async NumericalClassifierStrategy.route (chunk:360170:28) {
  status: 401
}
""",
    )
    + f"[Routing] NumericalClassifierStrategy failed: Error: Failed to generate content: {E401_BODY}\n"
    + frames("""    at BaseLlmClient._generateWithRetry (chunk:308364:13)
    at async BaseLlmClient.generateJson (chunk:308227:21)
    at async NumericalClassifierStrategy.route (chunk:360170:28)
    at async CompositeStrategy.route (chunk:360242:26)
    at async ModelRouterService.route (chunk:360406:18)
    at async GeminiClient.processTurn (chunk:346653:24)
""")
    + TURN_FRAMES
    + f"\nError when talking to Gemini API {REPORT}Turn.run-sendMessageStream-2026-12-01T22-20-30-741Z.json _ApiError: {E401_BODY}\n"
    + STREAM_FRAMES
    + " {\n  status: 401\n}\n"
    + cli_error("8d4abf15-4ff9-4860-8b2e-bdbcbaf72115", E401_BODY, 401)
    + "\n"
)

E429_STDERR = (
    STDERR_HEAD
    + "Attempt 1 failed: Resource exhausted.. Max attempts reached\n"
    + f"Error when talking to Gemini API {REPORT}Turn.run-sendMessageStream-2026-12-01T22-20-37-429Z.json RetryableQuotaError: Resource exhausted.\n"
    + frames(f"""    at classifyGoogleError (chunk:307333:14)
    at retryWithBackoff (chunk:308062:29)
    at {TICKS}
    at async GeminiChat.makeApiCallAndProcessStream (chunk:332326:28)
    at async GeminiChat.streamWithRetries (chunk:332079:29)
    at async Turn.run (chunk:333001:24)
    at async GeminiClient.processTurn (chunk:346675:22)
""")
    + TURN_FRAMES
    + """ {
  cause: { code: 429, message: 'Resource exhausted.', details: [] },
  retryDelayMs: undefined,
  status: 429
}
"""
    + cli_error("3f7a11ab-9e50-4e5c-a646-a8b6a75769e5", "Resource exhausted.", 429)
    + "\n"
)

E500_STDERR = (
    STDERR_HEAD
    + f"Attempt 1 failed: {E500_BODY}. Max attempts reached\n"
    + f"Error when talking to Gemini API {REPORT}Turn.run-sendMessageStream-2026-12-01T22-20-43-893Z.json _ApiError: {E500_BODY}\n"
    + STREAM_FRAMES
    + " {\n  status: 500\n}\n"
    + cli_error("23ac74e9-5c18-416d-aab3-29bdcc9993e7", E500_BODY, 500)
    + "\n"
)


def refusal(path: str) -> str:
    """Why the CLI refused a write_file to ``path`` (outside the worktree)."""
    return (
        f'Path not in workspace: Attempted path "{path}" resolves outside the allowed workspace'
        " directories: /tmp/sample/worktree or the project temp directory:"
        " /tmp/sample/home/.gemini/tmp/worktree"
    )


def refused_write(path: str) -> str:
    """The CLI's stderr when it refused a write_file to ``path``."""
    return STDERR_HEAD + f"Error executing tool write_file: {refusal(path)}\n"


OUTSIDE_STDERR = refused_write("/tmp/sample/outside.txt")
DOTGIT_STDERR = refused_write("/tmp/sample/worktree/.git/x")

OUTSIDE_STDOUT = cli_stdout(
    "d7540b05-8158-40db-b01d-192ac510d12c",
    answer({"status": "fail", "blocker": refusal("/tmp/sample/outside.txt")}),
    router_ms=56,
    main_ms=292,
    prompt=22389,
    cached=11194,
    write_ms=0,
    write_ok=False,
)

SUCCESS_TOKENS = {"input": 22458, "output": 30, "thoughts": 15, "cache_read": 11229}


def both_orders(stdout: str, stderr: str) -> list[str]:
    return [stdout + stderr, stderr + stdout]


@pytest.mark.parametrize("log", both_orders(SUCCESS_STDOUT, SUCCESS_STDERR))
def test_success_answer_and_tokens_counted_once(log: str) -> None:
    env = unwrap(log)
    assert env is not None and env.kind == "gemini"
    assert env.text == json.loads(SUCCESS_STDOUT)["response"]
    assert env.error is None and env.denials == () and env.cost_usd is None
    # Two models (the router's classifier and the chat model): prompt as input (never
    # "input" on top of it: it is prompt - cached), candidates as output, no total.
    models = json.loads(SUCCESS_STDOUT)["stats"]["models"]
    assert env.tokens == SUCCESS_TOKENS
    assert SUCCESS_TOKENS["input"] == sum(m["tokens"]["prompt"] for m in models.values())
    assert SUCCESS_TOKENS["output"] == sum(m["tokens"]["candidates"] for m in models.values())


def test_model_reported_fail_is_not_an_error() -> None:
    env = unwrap(MODELFAIL_STDOUT)
    assert env is not None and env.error is None
    assert '"status": "fail", "blocker": "tests fail"' in env.text


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        (E401_STDERR, "gemini reported an error: API key not valid. (HTTP 401 UNAUTHENTICATED)"),
        (E429_STDERR, "gemini reported an error: Resource exhausted."),
        (E500_STDERR, "gemini reported an error: internal (HTTP 500 INTERNAL)"),
    ],
)
def test_api_errors_are_the_last_object_on_stderr(stderr: str, error: str) -> None:
    env = unwrap(stderr)  # stdout is empty
    assert env is not None
    assert env.error == error and env.text == "" and env.tokens is None


def test_missing_auth_type_is_an_error() -> None:
    error = cli_error("s", "Invalid auth method selected.", 41, indent=None)
    env = unwrap("Warning: Basic terminal detected\n" + error + "\n")
    assert env is not None
    assert env.error == "gemini reported an error: Invalid auth method selected."


def test_untrusted_folder_plain_text_is_an_error() -> None:
    stderr = (
        'Approval mode overridden to "default" because the current folder is not trusted.\n'
        "Gemini CLI is not running in a trusted directory. To proceed, either use "
        "`--skip-trust`, set the `GEMINI_CLI_TRUST_WORKSPACE=true` environment variable, or "
        "trust this directory in interactive mode.\n"
    )
    env = unwrap(stderr)
    assert env is not None and env.error is not None
    assert env.error.startswith("gemini refused to run: Gemini CLI is not running in a trusted")


@pytest.mark.parametrize(
    ("stdout", "stderr", "path"),
    [
        (OUTSIDE_STDOUT, OUTSIDE_STDERR, "/tmp/sample/outside.txt"),
        (OUTSIDE_STDOUT, DOTGIT_STDERR, "/tmp/sample/worktree/.git/x"),
    ],
)
def test_a_refused_write_exits_0_but_is_an_error(stdout: str, stderr: str, path: str) -> None:
    for log in both_orders(stdout, stderr):
        env = unwrap(log)
        assert env is not None and env.error is not None
        assert env.error.startswith(
            f'gemini rejected an edit (write_file failed): Path not in workspace: Attempted path "{path}"'
        )
        assert env.denials == (f"write_file {path}",)
        assert env.tokens is not None and env.tokens["input"] > 0


def test_a_failed_edit_counted_in_stats_alone_is_an_error() -> None:
    # Without the stderr line (e.g. the log tail cut it off): stats.tools still counts it.
    obj = json.loads(OUTSIDE_STDOUT)
    obj["stats"]["tools"]["byName"] = {"replace": {"count": 2, "success": 0, "fail": 2}}
    env = unwrap(json.dumps(obj, indent=2))
    assert env is not None and env.error == "gemini rejected an edit (replace failed 2x)"
    assert env.denials == ()


def test_a_failed_read_is_not_an_error() -> None:
    obj = json.loads(SUCCESS_STDOUT)
    obj["stats"]["tools"]["byName"]["read_file"] = {"count": 1, "success": 0, "fail": 1}
    log = json.dumps(obj, indent=2) + "\nError executing tool read_file: File not found.\n"
    env = unwrap(log)
    assert env is not None and env.error is None


def test_no_envelope_is_none() -> None:
    assert unwrap("") is None
    assert unwrap("Warning: Basic terminal detected (TERM=dumb).\n") is None
    assert unwrap('{"status": "pass"}\n') is None  # a bare result line is not the CLI's


def test_preset_argv() -> None:
    assert AGENT.head == (
        "gemini",
        "--output-format",
        "json",
        "--approval-mode",
        "auto_edit",
        "--skip-trust",
    )
    assert AGENT.tail == () and AGENT.stdin_prompt and AGENT.leaves == ()


# --------------------------------------------------------------------------- parse_result


def parse(
    tmp_path: Path, log: str, rc: int, result_file: dict[str, Any] | None = None
) -> WorkerResult:
    log_path = tmp_path / "T.log"
    log_path.write_text(
        f"{ATTEMPT_HEADER} 1 2026-01-01T00:00:00Z in /wt: gemini ===\n{log}{ATTEMPT_FOOTER} exit {rc} ===\n"
    )
    result_path = tmp_path / "T.result.json"
    if result_file is not None:
        result_path.write_text(json.dumps(result_file))
    return parse_result(result_path, log_path, rc, preset="gemini")


def test_parse_success(tmp_path: Path) -> None:
    res = parse(tmp_path, SUCCESS_STDOUT + SUCCESS_STDERR, 0)
    assert res.status == "pass" and res.source == "output"
    assert res.files_created == ("hello.txt",)
    assert res.tokens == SUCCESS_TOKENS


def test_parse_401_is_a_fail_naming_it(tmp_path: Path) -> None:
    res = parse(tmp_path, E401_STDERR, 145)
    assert res.status == "fail"
    assert res.blocker == "gemini reported an error: API key not valid. (HTTP 401 UNAUTHENTICATED)"


@pytest.mark.parametrize("claimed_in", ["answer", "result_file"])
def test_a_refused_write_never_passes(tmp_path: Path, claimed_in: str) -> None:
    # A model that claims success after the CLI refused its write.
    obj = json.loads(OUTSIDE_STDOUT)
    obj["response"] = 'Done.\n\n```json\n{"status": "pass"}\n```\n'
    log = json.dumps(obj, indent=2) + "\n" + OUTSIDE_STDERR
    if claimed_in == "answer":
        res = parse(tmp_path, log, 0)
    else:
        res = parse(tmp_path, log, 0, result_file={"status": "pass"})
    assert res.status == "fail"
    assert res.blocker is not None and "gemini rejected an edit (write_file failed)" in res.blocker
    assert res.denials == ("write_file /tmp/sample/outside.txt",)


# --------------------------------------------------------------------------- error classes

SAMPLES = Path(__file__).parent / "gemini_samples"


def sample(name: str) -> str:
    """Output of the real CLI (``general.maxAttempts: 1``, model pinned) when the scripted
    server answered every call with that error body (and a ``retry-after: 3`` header, which
    the CLI ignores)."""
    return (SAMPLES / f"{name}.txt").read_text()


@pytest.mark.parametrize(
    ("log", "cls", "wait"),
    [
        (E401_STDERR, "auth", None),
        (sample("e403"), "auth", None),
        (E429_STDERR, "rate_limit", None),  # "Resource exhausted.", retryDelayMs undefined
        # RetryInfo detail: "Suggested retry after 3s." in the message, retryDelayMs: 3000.
        (sample("retryinfo"), "rate_limit", 3.0),
        (sample("pleaseretry"), "rate_limit", 2.5),  # "Please retry in 2.5s."
        (E500_STDERR, "overloaded", None),
        (sample("e503"), "overloaded", None),  # exit 247, "The model is overloaded."
    ],
)
def test_api_errors_have_a_class_and_the_stated_wait(
    log: str, cls: str, wait: float | None
) -> None:
    env = unwrap(log)
    assert env is not None and env.error is not None
    assert env.error_class == cls
    assert env.retry_after_s == wait


def test_the_http_retry_after_header_is_not_in_the_output() -> None:
    # The server sent retry-after: 3 with the 503: the CLI neither honours nor prints it.
    assert "retry-after" not in sample("e503").lower()


def test_missing_auth_type_exit_41_is_auth() -> None:
    env = unwrap(cli_error("s", "Invalid auth method selected.", 41) + "\n")
    assert env is not None and env.error_class == "auth" and env.retry_after_s is None


def test_a_dropped_connection_is_overloaded() -> None:
    # Seen once: the server closed the connection mid-response (exit 1).
    env = unwrap(cli_error("s", "exception TypeError: fetch failed sending request", 1) + "\n")
    assert env is not None and env.error_class == "overloaded"


def test_a_bad_request_or_unknown_model_has_no_class() -> None:
    # 404 (the CLI's ModelNotFoundError) or 400: the setup is wrong, the API is fine:
    # agent_error, retried by the ordinary rules only.
    for code in (400, 404):
        body = json.dumps({"error": {"code": code, "message": "models/x is not found"}})
        env = unwrap(cli_error("s", body, code) + "\n")
        assert env is not None and env.error is not None and env.error_class is None


@pytest.mark.parametrize("stderr", [OUTSIDE_STDERR, DOTGIT_STDERR])
def test_a_refused_edit_stays_an_agent_error(tmp_path: Path, stderr: str) -> None:
    env = unwrap(OUTSIDE_STDOUT + stderr)
    assert env is not None and env.error is not None and env.error_class is None
    res = parse(tmp_path, OUTSIDE_STDOUT + stderr, 0)
    assert res.status == "fail" and res.error_class == "agent_error"


def test_untrusted_folder_stays_an_agent_error(tmp_path: Path) -> None:
    stderr = "Gemini CLI is not running in a trusted directory. To proceed, use --skip-trust\n"
    res = parse(tmp_path, stderr, 55)
    assert res.status == "fail" and res.error_class == "agent_error"


@pytest.mark.parametrize(
    ("log", "rc", "cls", "wait"),
    [
        (E401_STDERR, 145, "auth", None),
        (E429_STDERR, 173, "rate_limit", None),
        (sample("retryinfo"), 173, "rate_limit", 3.0),
        (E500_STDERR, 244, "overloaded", None),
    ],
)
def test_parse_result_carries_the_class(
    tmp_path: Path, log: str, rc: int, cls: str, wait: float | None
) -> None:
    res = parse(tmp_path, log, rc)
    assert res.status == "fail"
    assert res.error_class == cls and res.retry_after_s == wait


def test_success_has_no_class(tmp_path: Path) -> None:
    env = unwrap(SUCCESS_STDOUT + SUCCESS_STDERR)
    assert env is not None and env.error_class is None and env.retry_after_s is None
    assert parse(tmp_path, SUCCESS_STDOUT + SUCCESS_STDERR, 0).error_class is None
