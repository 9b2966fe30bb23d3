"""The codex plugin's ``unwrap`` (and ``parse_result`` through it) on output the real
Codex CLI 0.171.0 printed (tests/conformance/FINDINGS_codex.md): stdout JSONL and stderr
land in the same task log."""

from __future__ import annotations

from pathlib import Path

import pytest

from specexec.run.processes import ATTEMPT_FOOTER, ATTEMPT_HEADER
from specexec.workers.codex import AGENT, unwrap
from specexec.workers.result import WorkerResult, parse_result

PATH_ALIAS_WARNING = (
    "WARNING: proceeding, even though we could not create PATH aliases: Refusing to create "
    'helper binaries under temporary dir "/tmp" (codex_home: '
    'AbsolutePathBuf("/tmp/cxcap/home/.codex"))\n'
)
USAGE_LINE = (
    '{"type":"turn.completed","usage":{"input_tokens":2000,"cached_input_tokens":400,'
    '"cache_write_input_tokens":0,"output_tokens":100,"reasoning_output_tokens":20}}\n'
)
TOKENS = {
    "input": 2000,
    "cached_input": 400,
    "cache_write_input": 0,
    "output": 100,
    "reasoning_output": 20,
}

SUCCESS = (
    '{"type":"thread.started","thread_id":"01a233a1-ce42-7b40-a9e5-182d942ceba8"}\n'
    '{"type":"turn.started"}\n'
    '{"type":"item.started","item":{"id":"item_0","type":"file_change","changes":[{"path":'
    '"/abs/worktree/hello.txt","kind":"add"}],"status":"in_progress"}}\n'
    '{"type":"item.completed","item":{"id":"item_0","type":"file_change","changes":[{"path":'
    '"/abs/worktree/hello.txt","kind":"add"}],"status":"completed"}}\n'
    '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Done.\\n\\n'
    '```json\\n{\\"status\\": \\"pass\\", \\"files_created\\": [\\"hello.txt\\"]}\\n```\\n"}}\n'
) + USAGE_LINE

MODEL_FAIL = (
    '{"type":"thread.started","thread_id":"01a233b4-0000-7000-8000-000000000001"}\n'
    '{"type":"turn.started"}\n'
    '{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"Done.\\n\\n'
    '```json\\n{\\"status\\": \\"fail\\", \\"blocker\\": \\"the spec is contradictory\\"}'
    '\\n```\\n"}}\n'
) + USAGE_LINE

HTTP_401 = (
    '{"type":"thread.started","thread_id":"01a233b4-0000-7000-8000-000000000002"}\n'
    '{"type":"turn.started"}\n'
    '{"type":"error","message":"unexpected status 401 Unauthorized: injected 401, url: '
    'http://127.0.0.1:33907/v1/responses"}\n'
    '{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: injected '
    '401, url: http://127.0.0.1:33907/v1/responses"}}\n'
)

HTTP_500 = (
    '{"type":"thread.started","thread_id":"01a233b4-0000-7000-8000-000000000003"}\n'
    '{"type":"turn.started"}\n'
    '{"type":"error","message":"We\u2019re currently experiencing high demand, which may cause '
    'temporary errors."}\n'
    '{"type":"turn.failed","error":{"message":"We\u2019re currently experiencing high demand, '
    'which may cause temporary errors."}}\n'
)

# The built-in provider: every retry is an `error` event before the final one.
RETRIED_401 = (
    '{"type":"thread.started","thread_id":"01a233b4-e63f-7fd2-a091-836dc67b7354"}\n'
    '{"type":"turn.started"}\n'
    + "".join(
        f'{{"type":"error","message":"Reconnecting... {n}/5 (unexpected status 401 '
        'Unauthorized: scripted error, url: http://127.0.0.1:44857/v1/responses)"}\n'
        for n in range(1, 6)
    )
    + '{"type":"error","message":"unexpected status 401 Unauthorized: scripted error, url: '
    'http://127.0.0.1:44857/v1/responses"}\n'
    '{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: scripted '
    'error, url: http://127.0.0.1:44857/v1/responses"}}\n'
    "2026-12-01T22:23:43.205251Z ERROR codex_api::endpoint::responses_websocket: failed to "
    "connect to Responses WebSocket stage=Unknown\n"
)

MISSING_KEY = (
    '{"type":"thread.started","thread_id":"01a233b4-d071-7733-b0c5-dcd7655b8c9f"}\n'
    '{"type":"turn.started"}\n'
    '{"type":"error","message":"Missing environment variable: `SPECEXEC_NO_SUCH_KEY`."}\n'
    '{"type":"turn.failed","error":{"message":"Missing environment variable: '
    '`SPECEXEC_NO_SUCH_KEY`."}}\n'
)

# An unknown model: a thread-level error item, then a normal turn (exit 0).
UNKNOWN_MODEL = (
    '{"type":"thread.started","thread_id":"01a233b4-d77b-7881-a0b5-6110cc75df1a"}\n'
    '{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata '
    "for `specexec-fake` not found. Defaulting to fallback metadata; this can degrade "
    'performance and cause issues."}}\n'
    '{"type":"turn.started"}\n'
    '{"type":"item.completed","item":{"id":"item_1","type":"file_change","changes":[{"path":'
    '"/tmp/cxcap_unknown/wt/a.txt","kind":"add"}],"status":"completed"}}\n'
    '{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Done.\\n\\n'
    '```json\\n{\\"status\\": \\"pass\\", \\"files_created\\": [\\"a.txt\\"]}\\n```\\n"}}\n'
) + USAGE_LINE

REJECTED_LINE = (
    "2026-12-01T22:23:58.443502Z ERROR codex_core::tools::router: error=patch rejected: "
    "writing outside of the project; rejected by user approval settings\n"
)
# A patch outside the worktree: exit 0, nothing in the JSONL, the model still says pass.
REJECTED = (
    '{"type":"thread.started","thread_id":"01a233b5-217a-7371-8f89-e384e3ecbed5"}\n'
    '{"type":"turn.started"}\n'
    + REJECTED_LINE
    + '{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"Done.\\n'
    '\\n```json\\n{\\"status\\": \\"pass\\", \\"files_created\\": [\\"../outside.txt\\"]}\\n'
    '```\\n"}}\n'
) + USAGE_LINE

# A shell command whose writes outside the worktree the sandbox refused.
SHELL_DENIED = (
    '{"type":"thread.started","thread_id":"01a233b4-0000-7000-8000-000000000004"}\n'
    '{"type":"turn.started"}\n'
    '{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":'
    '"/bin/bash -lc \'... echo x > /var/tmp/cx_sh_out.txt; ...\'","aggregated_output":"",'
    '"exit_code":null,"status":"in_progress"}}\n'
    '{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":'
    '"/bin/bash -lc \'... echo x > /var/tmp/cx_sh_out.txt; ...\'","aggregated_output":'
    '"0\\n/bin/bash: line 1: /var/tmp/cx_sh_out.txt: Read-only file system\\nrc=1\\n...touch:'
    ' cannot touch \'.git/hooked\': Read-only file system\\n","exit_code":0,'
    '"status":"completed"}}\n'
    '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Done.\\n\\n'
    '```json\\n{\\"status\\": \\"pass\\"}\\n```\\n"}}\n'
) + USAGE_LINE

NOT_A_REPO = "Not inside a trusted directory and --skip-git-repo-check was not specified.\n"


def test_argv_is_the_tested_non_interactive_command() -> None:
    assert AGENT.head == (
        "codex",
        "exec",
        "--sandbox",
        "workspace-write",
        "--json",
        "-c",
        "analytics.enabled=false",
    )
    assert AGENT.tail == ("-",) and AGENT.stdin_prompt
    assert AGENT.leaves == () and not AGENT.env


def test_success_answer_and_tokens_counted_once() -> None:
    env = unwrap(PATH_ALIAS_WARNING + SUCCESS)
    assert env is not None and env.kind == "codex"
    assert env.text.startswith("Done.") and '"files_created": ["hello.txt"]' in env.text
    # cached / reasoning are parts of input / output: kept apart, never added in.
    assert env.tokens == TOKENS
    assert env.cost_usd is None and env.error is None and env.denials == ()


def test_model_reported_fail_is_only_in_the_answer() -> None:
    env = unwrap(MODEL_FAIL)
    assert env is not None and env.error is None
    assert '"status": "fail"' in env.text


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (HTTP_401, "unexpected status 401 Unauthorized: injected 401"),
        (HTTP_500, "We\u2019re currently experiencing high demand"),
        (RETRIED_401, "unexpected status 401 Unauthorized: scripted error"),
        (MISSING_KEY, "Missing environment variable: `SPECEXEC_NO_SUCH_KEY`."),
    ],
)
def test_failed_turn_is_an_error(output: str, words: str) -> None:
    env = unwrap(PATH_ALIAS_WARNING + output)
    assert env is not None and env.text == "" and env.tokens is None
    assert env.error is not None and env.error.startswith("codex reported an error: ")
    assert words in env.error and "Reconnecting" not in env.error


def test_warnings_in_a_completed_turn_are_not_errors() -> None:
    env = unwrap(UNKNOWN_MODEL)
    assert env is not None and env.error is None and env.tokens == TOKENS
    assert '"status": "pass"' in env.text


def test_rejected_patch_is_an_error_and_a_denial() -> None:
    env = unwrap(PATH_ALIAS_WARNING + REJECTED)
    assert env is not None
    what = "patch rejected: writing outside of the project; rejected by user approval settings"
    assert env.error == f"codex rejected the agent's edit: {what}"
    assert env.denials == (what,)
    assert env.tokens == TOKENS


def test_a_quoted_rejection_in_the_jsonl_is_not_one() -> None:
    quoted = SUCCESS.replace("Done.", "Done. ERROR x: error=patch rejected: nope")
    env = unwrap(quoted)
    assert env is not None and env.error is None and env.denials == ()


def test_sandbox_refused_shell_writes_are_denials_only() -> None:
    env = unwrap(SHELL_DENIED)
    assert env is not None and env.error is None
    (denial,) = env.denials
    assert denial.startswith("sandbox refused a write: /bin/bash -lc")


def test_output_that_is_not_codex_is_not_claimed() -> None:
    assert unwrap(NOT_A_REPO) is None
    assert unwrap("") is None
    assert unwrap('{"type":"result","result":"x"}\n') is None


# --------------------------------------------------------------------------- parse_result


def _parse(tmp_path: Path, body: str, rc: int) -> WorkerResult:
    log = tmp_path / "A.log"
    log.write_text(
        f"{ATTEMPT_HEADER} 1 2026-12-01T00:00:00Z in /wt: codex ===\n{body}"
        f"{ATTEMPT_FOOTER} exit {rc} ===\n"
    )
    return parse_result(tmp_path / "A.result.json", log, rc, preset="codex")


def test_parse_result_pass(tmp_path: Path) -> None:
    res = _parse(tmp_path, PATH_ALIAS_WARNING + SUCCESS, 0)
    assert res.status == "pass" and res.source == "output"
    assert res.tokens == TOKENS and res.cost_usd is None


def test_parse_result_rejected_edit_never_passes(tmp_path: Path) -> None:
    res = _parse(tmp_path, REJECTED, 0)
    assert res.status == "fail"
    assert "codex rejected the agent's edit: patch rejected" in (res.blocker or "")
    assert res.denials


def test_parse_result_http_error(tmp_path: Path) -> None:
    res = _parse(tmp_path, HTTP_401, 1)
    assert res.status == "fail"
    assert "unexpected status 401" in (res.blocker or "")


def test_parse_result_model_fail(tmp_path: Path) -> None:
    res = _parse(tmp_path, MODEL_FAIL, 0)
    assert res.status == "fail" and res.blocker == "the spec is contradictory"


def test_rejected_edit_fails_even_with_a_result_file_saying_pass(tmp_path: Path) -> None:
    (tmp_path / "A.result.json").write_text('{"status": "pass"}\n')
    res = _parse(tmp_path, REJECTED, 0)
    assert res.source == "result_file" and res.status == "fail"
    assert "codex rejected the agent's edit" in (res.blocker or "")


def test_a_failed_file_change_is_a_denial() -> None:
    # Not seen here (a refused patch leaves no item); the shape is the exec event schema's
    # PatchApplyStatus "failed".
    failed = SUCCESS.replace('"status":"completed"}}', '"status":"failed"}}')
    env = unwrap(failed)
    assert env is not None and env.error is None
    assert env.denials == ("file change failed: /abs/worktree/hello.txt",)
