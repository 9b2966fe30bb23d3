"""Reading a worker's result: result file, output (with agent envelopes), exit code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from specexec.run.processes import ATTEMPT_FOOTER, ATTEMPT_HEADER
from specexec.workers.result import LOG_TAIL_BYTES, WorkerResult, parse_result


def fenced(obj: dict[str, Any]) -> str:
    return f"```json\n{json.dumps(obj, indent=2)}\n```\n"


def attempt(n: int, body: str, end: str = "exit 0") -> str:
    return f"{ATTEMPT_HEADER} {n} 2025-01-01T00:00:00Z in /wt: agent ===\n{body}{ATTEMPT_FOOTER} {end} ===\n"


@pytest.fixture
def parse(tmp_path: Path) -> Any:
    def go(
        log: str | bytes,
        rc: int | None = 0,
        *,
        preset: str = "shell",
        result: str | bytes | None = None,
    ) -> WorkerResult:
        log_path = tmp_path / "T1.log"
        log_path.write_bytes(log.encode() if isinstance(log, str) else log)
        result_path = tmp_path / "T1.result.json"
        if result is None and not result_path.is_symlink() and result_path.is_file():
            result_path.unlink()
        if result is not None:
            result_path.write_bytes(result.encode() if isinstance(result, str) else result)
        return parse_result(result_path, log_path, rc, preset=preset)

    return go


# --------------------------------------------------------------------------- result file


def test_result_file_wins_over_the_output(parse: Any) -> None:
    res = parse(
        attempt(1, fenced({"status": "fail"})),
        0,
        result=json.dumps({"status": "pass", "notes": "from file", "files_modified": ["a.py"]}),
    )
    assert res.status == "pass" and res.source == "result_file"
    assert res.notes == "from file" and res.files_modified == ("a.py",)


def test_result_file_is_trusted_despite_a_nonzero_exit_with_a_note(parse: Any) -> None:
    res = parse("", 3, result=json.dumps({"status": "pass", "notes": "done"}))
    assert res.status == "pass"
    assert res.notes == "done (the worker exited with code 3 after writing its result file)"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"status": "pass",', "T1.result.json:1:19: invalid JSON"),
        ('{"status": NaN}', "NaN"),
        ('{"status": "pass", "status": "fail"}', 'duplicate key "status"'),
        ("[" * 100_000, "T1.result.json:1:65: nesting deeper than 64"),  # refused there
        ('["pass"]', "must hold a JSON object, not list"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
def test_a_broken_result_file_fails_with_a_blocker_saying_so(
    parse: Any, content: Any, words: str
) -> None:
    res = parse(attempt(1, fenced({"status": "pass"})), 0, result=content)
    assert res.status == "fail" and res.source == "result_file"
    assert words in (res.blocker or "")
    assert "T1.result.json" in (res.blocker or "")


def test_a_symlinked_result_file_is_not_followed(parse: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"status": "pass"}')
    (tmp_path / "T1.result.json").symlink_to(secret)
    res = parse("", 0)
    assert res.status == "fail" and "symlink" in (res.blocker or "")


def test_an_empty_result_file_counts_as_not_written(parse: Any) -> None:
    res = parse(attempt(1, fenced({"status": "blocked", "blocker": "no db"})), 0, result="  \n")
    assert res.status == "blocked" and res.source == "output"


def test_missing_or_unknown_status_fails_naming_it(parse: Any) -> None:
    res = parse("", 0, result='{"notes": "all good"}')
    assert res.status == "fail" and "reported no status" in (res.blocker or "")
    res = parse(attempt(1, '{"status": "done", "blocker": "x"}\n'), 0)
    assert res.status == "fail"
    assert (
        res.blocker
        == "the worker reported status 'done' (expected pass, fail or blocked); its blocker: x"
    )
    assert parse("", 0, result='{"status": " PASS "}').status == "pass"


def test_fields_are_normalised(parse: Any) -> None:
    res = parse(
        "",
        0,
        result=json.dumps(
            {
                "status": "pass",
                "files_modified": "one.py",
                "files_created": ["a.py", 3],
                "test_results": {"ran": 5, "passed": 4.0, "failed": True},
                "data": {"k": 1},
                "duration_minutes": 12,
                "blocker": {"why": "x"},
                "extra": "kept in raw",
            }
        ),
    )
    assert res.files_modified == ("one.py",) and res.files_created == ("a.py",)
    assert res.test_results == {"ran": 5, "passed": 4}
    assert res.data == [{"k": 1}]
    assert res.duration_minutes == 12.0
    assert res.blocker == '{"why": "x"}'
    assert res.raw["extra"] == "kept in raw"
    assert res.to_json() == {
        "status": "pass",
        "source": "result_file",
        "files_modified": ["one.py"],
        "files_created": ["a.py"],
        "test_results": {"ran": 5, "passed": 4},
        "blocker": '{"why": "x"}',
        "data": [{"k": 1}],
        "duration_minutes": 12.0,
    }


# --------------------------------------------------------------------------- output


def test_the_last_fenced_block_with_a_status_wins(parse: Any) -> None:
    body = (
        "Here is the config I wrote:\n"
        + fenced({"port": 8080})
        + "First try:\n"
        + fenced({"status": "fail", "notes": "first"})
        + "Final:\n"
        + fenced({"status": "pass", "notes": "second"})
        + "Example payload:\n"
        + fenced({"user": "x"})
        + "**TASK COMPLETE**\n"
    )
    res = parse(attempt(1, body), 0)
    assert res.status == "pass" and res.notes == "second" and res.source == "output"


def test_a_json_line_with_status_is_used_without_a_fence(parse: Any) -> None:
    body = 'log line\n{"level": "info"}\n  {"status": "blocked", "blocker": "needs API key"}\ntrailer\n'
    res = parse(attempt(1, body), 0)
    assert res.status == "blocked" and res.blocker == "needs API key"


def test_pass_in_the_output_with_a_nonzero_exit_is_a_fail(parse: Any) -> None:
    res = parse(attempt(1, fenced({"status": "pass", "notes": "claims success"}), "exit 2"), 2)
    assert res.status == "fail" and res.notes == "claims success"
    assert res.blocker == "the worker reported pass but exited with code 2"
    res = parse(attempt(1, fenced({"status": "blocked", "blocker": "no creds"})), 1)
    assert res.status == "blocked" and res.blocker == "no creds"


def test_only_the_latest_attempt_counts(parse: Any) -> None:
    log = attempt(1, fenced({"status": "pass"})) + "\n" + attempt(2, "Traceback: boom\n", "exit 1")
    res = parse(log, 1)
    assert res.status == "fail" and res.source == "exit_code"
    assert (
        res.blocker
        == "the worker exited with code 1 without a structured result; last output: Traceback: boom"
    )


@pytest.mark.parametrize(
    ("rc", "status", "words"),
    [
        (0, "pass", None),
        (3, "fail", "exited with code 3"),
        (-9, "fail", "was killed by SIGKILL"),
        (None, "fail", "did not exit normally"),
    ],
)
def test_exit_code_fallback(parse: Any, rc: int | None, status: str, words: str | None) -> None:
    res = parse(attempt(1, "just text\n"), rc)
    assert res.status == status and res.source == "exit_code"
    if words:
        assert words in (res.blocker or "")
    else:
        assert res.blocker is None


def test_missing_log_and_result_use_the_exit_code(tmp_path: Path) -> None:
    res = parse_result(tmp_path / "none.json", tmp_path / "none.log", 0, preset="claude")
    assert res.status == "pass" and res.source == "exit_code"


def test_only_the_tail_of_a_huge_log_is_read(parse: Any, tmp_path: Path) -> None:
    junk = ("x" * 1023 + "\n").encode() * (LOG_TAIL_BYTES // 1024 + 1024)
    head = attempt(1, fenced({"status": "pass", "notes": "early"}), "").encode()
    res = parse(head + junk, 0)  # the early result is beyond the tail: not seen
    assert res.source == "exit_code"
    res = parse(head + junk + fenced({"status": "blocked", "blocker": "late"}).encode(), 0)
    assert res.status == "blocked" and res.blocker == "late"


# --------------------------------------------------------------------------- envelopes


def claude_envelope(text: str, **extra: Any) -> str:
    env = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 9000,
        "num_turns": 3,
        "result": text,
        "session_id": "s1",
        "total_cost_usd": 0.125,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 40,
        },
    }
    env.update(extra)
    return json.dumps(env) + "\n"


def test_claude_envelope_is_unwrapped_with_cost_and_tokens(parse: Any) -> None:
    text = "Done.\n\n" + fenced({"status": "pass", "notes": "inner"}) + "\n**TASK COMPLETE**"
    res = parse(attempt(1, "some stderr warning\n" + claude_envelope(text)), 0, preset="claude")
    assert res.status == "pass" and res.notes == "inner"
    assert res.cost_usd == 0.125
    assert res.tokens == {"input": 10, "output": 20, "cache_read": 30, "cache_creation": 40}


def test_claude_stream_json_last_line_is_the_result(parse: Any) -> None:
    lines = [
        json.dumps({"type": "system", "subtype": "init", "session_id": "s1"}),
        json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}}),
        claude_envelope(fenced({"status": "blocked", "blocker": "ambiguous spec"})).strip(),
    ]
    res = parse(attempt(1, "\n".join(lines) + "\n"), 0, preset="claude")
    assert res.status == "blocked" and res.blocker == "ambiguous spec" and res.cost_usd == 0.125


def test_claude_is_error_makes_a_pass_a_fail(parse: Any) -> None:
    log = claude_envelope(
        fenced({"status": "pass"}), is_error=True, subtype="error_during_execution"
    )
    res = parse(attempt(1, log), 0, preset="claude")
    assert res.status == "fail" and "claude reported an error" in (res.blocker or "")
    assert res.cost_usd == 0.125


def test_codex_jsonl_events_are_unwrapped_and_usage_summed(parse: Any) -> None:
    events = [
        {"type": "thread.started", "thread_id": "t"},
        {"type": "turn.started"},
        {"type": "error", "message": "Reconnecting... 1/5"},
        {
            "type": "item.completed",
            "item": {"id": "i0", "type": "agent_message", "text": "thinking"},
        },
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 100, "cached_input_tokens": 50, "output_tokens": 7},
        },
        {
            "type": "item.completed",
            "item": {
                "id": "i1",
                "type": "agent_message",
                "text": "ok\n" + fenced({"status": "pass", "notes": "codex"}),
            },
        },
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 200, "cached_input_tokens": 0, "output_tokens": 3},
        },
    ]
    body = "Reading prompt from stdin...\n" + "".join(json.dumps(e) + "\n" for e in events)
    res = parse(attempt(1, body), 0, preset="codex")
    assert res.status == "pass" and res.notes == "codex"
    assert res.tokens == {"input": 300, "cached_input": 50, "output": 10}
    assert res.cost_usd is None


def test_gemini_pretty_json_after_stderr_noise(parse: Any) -> None:
    out = {
        "response": "Done\n" + fenced({"status": "pass", "notes": "gem"}),
        "stats": {
            "models": {
                "m1": {"tokens": {"prompt": 10, "candidates": 2, "total": 12}},
                "m2": {"tokens": {"prompt": 5, "candidates": 1, "total": 6}},
            }
        },
    }
    body = "Loaded cached credentials.\n" + json.dumps(out, indent=2) + "\n"
    res = parse(attempt(1, body), 0, preset="gemini")
    assert res.status == "pass" and res.notes == "gem"
    assert res.tokens == {"input": 15, "output": 3}


def test_gemini_error_object_is_a_fail(parse: Any) -> None:
    body = json.dumps({"error": {"type": "ApiError", "message": "quota", "code": 429}}, indent=2)
    res = parse(attempt(1, body + "\n", "exit 1"), 1, preset="gemini")
    assert res.status == "fail" and res.blocker == "gemini reported an error: quota"


def test_aider_tokens_and_session_cost(parse: Any) -> None:
    body = (
        "Aider v0.86.1\nTokens: 1.2k sent, 80 received. Cost: $0.0050 message, $0.0050 session.\n"
        + fenced({"status": "pass"})
        + "Tokens: 2.3k sent, 1.1k cache write, 2k cache hit, 1,150 received. "
        "Cost: $0.01 message, $0.015 session.\n"
    )
    res = parse(attempt(1, body), 0, preset="aider")
    assert res.status == "pass" and res.cost_usd == 0.015
    assert res.tokens == {"input": 3500, "output": 1230, "cache_write": 1100, "cache_hit": 2000}


def test_custom_commands_recognise_agent_envelopes_but_shell_does_not(parse: Any) -> None:
    log = attempt(1, claude_envelope(fenced({"status": "pass"})))
    assert parse(log, 0, preset="custom").cost_usd == 0.125
    shell = parse(log, 0, preset="shell")
    assert shell.cost_usd is None and shell.source == "exit_code"


def test_pathological_output_neither_crashes_nor_hides_the_result(parse: Any) -> None:
    # Nesting far past any recursion limit, then 2000 fences that never hold JSON: every
    # agent's envelope is tried against it (preset "custom"), and the result line after
    # them is still found. (A hang fails by the suite's timeout.)
    body = "{" + "[" * 200_000 + "\n" + "```json\n" * 2000 + '{"status": "pass"}\n'
    res = parse(attempt(1, body), 0, preset="custom")
    assert res.status == "pass" and res.source == "output"
    assert res.blocker is None


def test_result_file_fifo_does_not_hang(parse: Any, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "T1.result.json")
    res = parse("", 0)
    assert res.status == "fail" and "not a regular file" in (res.blocker or "")
