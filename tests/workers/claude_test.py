"""Claude Code's output, as the real CLI (2.1.197) printed it against the scripted model
(tests/conformance/FINDINGS_claude.md), read by the claude plugin's ``unwrap``.

Every sample below is verbatim stdout of a real run (paths and ids as they were).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specexec.workers.agent import Envelope
from specexec.workers.claude import AGENT, unwrap
from specexec.workers.result import parse_result

# ``--output-format json``: the task done, exit 0.
SUCCESS = r"""{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"duration_ms":341,"duration_api_ms":70,"ttft_ms":253,"ttft_stream_ms":252,"time_to_request_ms":227,"num_turns":2,"result":"Done.\n\n```json\n{\"status\": \"pass\", \"files_created\": [\"a.txt\"]}\n```\n","stop_reason":"end_turn","session_id":"562438e9-2a8e-4c4a-8e8d-ace6d091fc56","total_cost_usd":0.018955,"usage":{"input_tokens":3456,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":67,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{"claude-opus-4-8[1m]":{"inputTokens":3456,"outputTokens":67,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":0.018955,"contextWindow":1000000,"maxOutputTokens":64000}},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"d17b69ba-dff1-49ac-9713-2e69ba097382"}
"""

# The model reported fail: exit 0, is_error false.
MODEL_FAIL = r"""{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"duration_ms":388,"duration_api_ms":93,"ttft_ms":278,"ttft_stream_ms":276,"time_to_request_ms":261,"num_turns":2,"result":"Done.\n\n```json\n{\"status\": \"fail\", \"blocker\": \"tests do not pass\"}\n```\n","stop_reason":"end_turn","session_id":"7cd93238-b099-436a-a2ed-6dba9451cf68","total_cost_usd":0.019070000000000004,"usage":{"input_tokens":3474,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":68,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{"claude-opus-4-8[1m]":{"inputTokens":3474,"outputTokens":68,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":0.019070000000000004,"contextWindow":1000000,"maxOutputTokens":64000}},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"f467058e-b16f-4ff7-8592-b62fd3e60f9e"}
"""

# HTTP 401 (CLAUDE_CODE_MAX_RETRIES=0): exit 1, subtype success (sic), is_error true.
HTTP_401 = r"""{"type":"result","subtype":"success","is_error":true,"api_error_status":401,"duration_ms":569,"duration_api_ms":0,"num_turns":1,"result":"Invalid API key · Fix external API key","stop_reason":"stop_sequence","session_id":"b493f361-b9b3-4dde-8973-a6af72e52052","total_cost_usd":0,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"f08d775b-72d2-446a-896b-7816cdccd9ef"}
"""

# HTTP 429 with retry-after 1 (CLAUDE_CODE_MAX_RETRIES=1): exit 1.
HTTP_429 = r"""{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"duration_ms":1304,"duration_api_ms":0,"num_turns":1,"result":"API Error: Request rejected (429) · slow down","stop_reason":"stop_sequence","session_id":"6b96e795-30f0-488d-bdac-53672cbd814b","total_cost_usd":0,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"8f860250-c5dd-49e4-aa4a-1a8830163e50"}
"""

# HTTP 500 (CLAUDE_CODE_MAX_RETRIES=0): exit 1.
HTTP_500 = r"""{"type":"result","subtype":"success","is_error":true,"api_error_status":500,"duration_ms":289,"duration_api_ms":0,"num_turns":1,"result":"API Error: 500 boom. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:35923).","stop_reason":"stop_sequence","session_id":"23b74322-d686-40b4-b12f-ec1dc7e1547e","total_cost_usd":0,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"902f87a1-2af0-4e8a-a3ea-9a364255d28b"}
"""

# ``--max-turns 1`` reached: exit 1, no ``result``, an ``errors`` list.
MAX_TURNS = r"""{"type":"result","subtype":"error_max_turns","duration_ms":212,"duration_api_ms":49,"is_error":true,"num_turns":2,"stop_reason":"tool_use","session_id":"e80f2062-2cca-48d7-90cb-d443815232d0","total_cost_usd":0.00938,"usage":{"input_tokens":1671,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":41,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{"claude-opus-4-8[1m]":{"inputTokens":1671,"outputTokens":41,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":0.00938,"contextWindow":1000000,"maxOutputTokens":64000}},"permission_denials":[],"terminal_reason":"max_turns","fast_mode_state":"off","uuid":"bf1afb25-bb4c-4d7f-8f07-1e373fb0d717","errors":["Reached maximum number of turns (1)"]}
"""

# A Write outside the cwd denied: exit 0, is_error false, the model says pass.
DENIED_OUTSIDE = r"""{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"duration_ms":499,"duration_api_ms":175,"ttft_ms":340,"ttft_stream_ms":326,"time_to_request_ms":275,"num_turns":3,"result":"Done.\n\n```json\n{\"status\": \"pass\", \"files_created\": [\"a.txt\", \"/tmp/cprobe2/outside.txt\"]}\n```\n","stop_reason":"end_turn","session_id":"43c2ccd8-4729-45a2-8359-a7bf3cfac662","total_cost_usd":0.0206,"usage":{"input_tokens":3565,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":111,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{"claude-opus-4-8[1m]":{"inputTokens":3565,"outputTokens":111,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":0.0206,"contextWindow":1000000,"maxOutputTokens":64000}},"permission_denials":[{"tool_name":"Write","tool_use_id":"toolu_f3f7c8325b364207951df894","tool_input":{"file_path":"/tmp/cprobe2/outside.txt","content":"s"}}],"terminal_reason":"completed","fast_mode_state":"off","uuid":"c9b8f71b-d51e-40a3-a448-066b300a4cfb"}
"""

# ``--verbose``: one JSON array; a Write into the repository's ``.git/`` denied
# (a sensitive file). Exit 0. The assistant events' usage is the message_start snapshot.
VERBOSE_DENIED_GIT = r"""[{"type":"system","subtype":"init","cwd":"/tmp/cprobe2/cap-verbose_denied/repo","session_id":"4c7e09a8-e528-4990-be57-6854cf269c03","tools":["Task","Bash","CronCreate","CronDelete","CronList","Edit","EnterWorktree","ExitWorktree","NotebookEdit","Read","ReportFindings","ScheduleWakeup","SendMessage","Skill","TaskCreate","TaskGet","TaskList","TaskOutput","TaskStop","TaskUpdate","WebFetch","WebSearch","Workflow","Write"],"mcp_servers":[],"model":"claude-opus-4-8[1m]","permissionMode":"acceptEdits","slash_commands":["deep-research","update-config","verify","debug","code-review","simplify","batch","fewer-permission-prompts","loop","claude-api","run","run-skill-generator","clear","compact","config","context","heapdump","init","reload-skills","review","security-review","usage","insights","goal","team-onboarding"],"apiKeySource":"ANTHROPIC_API_KEY","claude_code_version":"2.1.197","output_style":"default","agents":["claude","Explore","general-purpose","Plan","statusline-setup"],"skills":["deep-research","update-config","verify","debug","code-review","simplify","batch","fewer-permission-prompts","loop","claude-api","run","run-skill-generator"],"plugins":[],"analytics_disabled":true,"product_feedback_disabled":true,"uuid":"667c3b1b-1b6e-4e7c-99e3-1e4ebf0cde69","memory_paths":{"auto":"/tmp/cprobe2/cap-verbose_denied/home/.claude/projects/-tmp-cprobe2-cap-verbose-denied-repo/memory/"},"fast_mode_state":"off"},{"type":"assistant","message":{"id":"msg_282eb930d0f44439a837575d","type":"message","role":"assistant","model":"claude-opus-4-8","content":[{"type":"tool_use","id":"toolu_d7587c83a3db481ea94660b6","name":"Write","input":{"file_path":"/tmp/cprobe2/cap-verbose_denied/repo/a.txt","content":"a"}}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1686,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0},"context_management":null},"parent_tool_use_id":null,"session_id":"4c7e09a8-e528-4990-be57-6854cf269c03","uuid":"79cfca53-2a24-4fcb-aa61-0b6bcfb32b96","request_id":"msg_282eb930d0f44439a837575d"},{"type":"assistant","message":{"id":"msg_282eb930d0f44439a837575d","type":"message","role":"assistant","model":"claude-opus-4-8","content":[{"type":"tool_use","id":"toolu_faa9b479686741c29c981b68","name":"Write","input":{"file_path":"/tmp/cprobe2/cap-verbose_denied/repo/.git/x","content":"s"}}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1686,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0},"context_management":null},"parent_tool_use_id":null,"session_id":"4c7e09a8-e528-4990-be57-6854cf269c03","uuid":"3a8f525b-b637-458b-8864-11177b23cbc4","request_id":"msg_282eb930d0f44439a837575d"},{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_d7587c83a3db481ea94660b6","type":"tool_result","content":"File created successfully at: /tmp/cprobe2/cap-verbose_denied/repo/a.txt (file state is current in your context — no need to Read it back)"}]},"parent_tool_use_id":null,"session_id":"4c7e09a8-e528-4990-be57-6854cf269c03","uuid":"8729bf05-954e-46fc-b9ad-e53ee9707775","timestamp":"2026-12-01T22:23:23.665Z","tool_use_result":{"type":"create","filePath":"/tmp/cprobe2/cap-verbose_denied/repo/a.txt","content":"a","structuredPatch":[],"originalFile":null,"userModified":false}},{"type":"user","message":{"role":"user","content":[{"type":"tool_result","content":"Claude requested permissions to edit /tmp/cprobe2/cap-verbose_denied/repo/.git/x which is a sensitive file.","is_error":true,"tool_use_id":"toolu_faa9b479686741c29c981b68"}]},"parent_tool_use_id":null,"session_id":"4c7e09a8-e528-4990-be57-6854cf269c03","uuid":"ef7aeb39-91b8-40db-ab64-72fd62f3ba3f","timestamp":"2026-12-01T22:23:23.670Z","tool_use_result":"Error: Claude requested permissions to edit /tmp/cprobe2/cap-verbose_denied/repo/.git/x which is a sensitive file."},{"type":"assistant","message":{"id":"msg_b13461a921fd4dcba2894d31","type":"message","role":"assistant","model":"claude-opus-4-8","content":[{"type":"text","text":"Done.\n\n```json\n{\"status\": \"pass\", \"files_created\": [\"a.txt\", \"/tmp/cprobe2/cap-verbose_denied/repo/.git/x\"]}\n```\n"}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1897,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0},"context_management":null},"parent_tool_use_id":null,"session_id":"4c7e09a8-e528-4990-be57-6854cf269c03","uuid":"8e89d9cc-6a13-4c76-93a9-ffff6b8fbfba","request_id":"msg_b13461a921fd4dcba2894d31"},{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"duration_ms":402,"duration_api_ms":73,"ttft_ms":310,"ttft_stream_ms":308,"time_to_request_ms":289,"num_turns":3,"result":"Done.\n\n```json\n{\"status\": \"pass\", \"files_created\": [\"a.txt\", \"/tmp/cprobe2/cap-verbose_denied/repo/.git/x\"]}\n```\n","stop_reason":"end_turn","session_id":"4c7e09a8-e528-4990-be57-6854cf269c03","total_cost_usd":0.02094,"usage":{"input_tokens":3583,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":121,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{"claude-opus-4-8[1m]":{"inputTokens":3583,"outputTokens":121,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":0.02094,"contextWindow":1000000,"maxOutputTokens":64000}},"permission_denials":[{"tool_name":"Write","tool_use_id":"toolu_faa9b479686741c29c981b68","tool_input":{"file_path":"/tmp/cprobe2/cap-verbose_denied/repo/.git/x","content":"s"}}],"terminal_reason":"completed","fast_mode_state":"off","uuid":"1e8cf5c5-6d75-4c1a-a489-0b6b30f29195"}]
"""

# ``--output-format stream-json --verbose`` with HTTP 500 and one retry: exit 1.
STREAM_500 = r"""{"type":"system","subtype":"init","cwd":"/tmp/cprobe2/cap-stream_500/repo","session_id":"4c24b34a-4181-4718-8388-771165e46fbc","tools":["Task","Bash","CronCreate","CronDelete","CronList","Edit","EnterWorktree","ExitWorktree","NotebookEdit","Read","ReportFindings","ScheduleWakeup","SendMessage","Skill","TaskCreate","TaskGet","TaskList","TaskOutput","TaskStop","TaskUpdate","WebFetch","WebSearch","Workflow","Write"],"mcp_servers":[],"model":"claude-opus-4-8[1m]","permissionMode":"acceptEdits","slash_commands":["deep-research","update-config","verify","debug","code-review","simplify","batch","fewer-permission-prompts","loop","claude-api","run","run-skill-generator","clear","compact","config","context","heapdump","init","reload-skills","review","security-review","usage","insights","goal","team-onboarding"],"apiKeySource":"ANTHROPIC_API_KEY","claude_code_version":"2.1.197","output_style":"default","agents":["claude","Explore","general-purpose","Plan","statusline-setup"],"skills":["deep-research","update-config","verify","debug","code-review","simplify","batch","fewer-permission-prompts","loop","claude-api","run","run-skill-generator"],"plugins":[],"analytics_disabled":true,"product_feedback_disabled":true,"uuid":"a5d4e7c0-b900-4030-affb-5d6eec234beb","memory_paths":{"auto":"/tmp/cprobe2/cap-stream_500/home/.claude/projects/-tmp-cprobe2-cap-stream-500-repo/memory/"},"fast_mode_state":"off"}
{"type":"system","subtype":"api_retry","attempt":1,"max_retries":1,"retry_delay_ms":613.8175161180025,"error_status":500,"error":"server_error","session_id":"4c24b34a-4181-4718-8388-771165e46fbc","uuid":"18dabec6-f1cb-472e-8a26-373f2f958f11"}
{"type":"assistant","message":{"id":"8f834561-bb34-4f67-985f-2051e1dae9c8","container":null,"model":"<synthetic>","role":"assistant","stop_details":null,"stop_reason":"stop_sequence","stop_sequence":"","type":"message","usage":{"input_tokens":0,"output_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":null,"cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":null,"iterations":null,"speed":null},"content":[{"type":"text","text":"API Error: 500 boom. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:44285)."}],"context_management":null},"parent_tool_use_id":null,"session_id":"4c24b34a-4181-4718-8388-771165e46fbc","uuid":"297e0064-bf47-45de-8da6-06a122507e17","error":"server_error"}
{"type":"result","subtype":"success","is_error":true,"api_error_status":500,"duration_ms":1067,"duration_api_ms":0,"num_turns":1,"result":"API Error: 500 boom. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:44285).","stop_reason":"stop_sequence","session_id":"4c24b34a-4181-4718-8388-771165e46fbc","total_cost_usd":0,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"7151995f-28b8-4f59-8faa-35441a329338"}
"""

ROOT_REFUSAL = (
    "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons\n"
)
STREAM_WITHOUT_VERBOSE = (
    "Error: When using --print, --output-format=stream-json requires --verbose\n"
)


def unwrapped(text: str) -> Envelope:
    env = unwrap(text)
    assert env is not None and env.kind == "claude"
    return env


def test_success_answer_tokens_and_cost() -> None:
    env = unwrapped(SUCCESS)
    assert json.loads(env.text.split("```json\n")[1].split("\n```")[0]) == {
        "status": "pass",
        "files_created": ["a.txt"],
    }
    # result.usage only (modelUsage holds the same totals): counted once.
    assert env.tokens == {"input": 3456, "output": 67, "cache_creation": 0, "cache_read": 0}
    assert env.cost_usd == 0.018955
    assert env.error is None and env.denials == ()


def test_model_reported_fail_is_not_a_cli_error() -> None:
    env = unwrapped(MODEL_FAIL)
    assert '"status": "fail"' in env.text and env.error is None
    assert env.tokens is not None and env.tokens["input"] == 3474


@pytest.mark.parametrize(
    ("sample", "status", "words"),
    [
        (HTTP_401, 401, "Invalid API key"),
        (HTTP_429, 429, "Request rejected (429)"),
        (HTTP_500, 500, "API Error: 500 boom"),
        (STREAM_500, 500, "API Error: 500 boom"),
    ],
)
def test_api_errors_are_errors_with_their_status(sample: str, status: int, words: str) -> None:
    env = unwrapped(sample)
    assert env.error is not None
    assert env.error.startswith(f"claude reported an error (API status {status}): ")
    assert words in env.error
    assert env.cost_usd == 0.0
    assert env.tokens == {"input": 0, "output": 0, "cache_creation": 0, "cache_read": 0}


def test_max_turns_has_no_result_but_an_errors_list() -> None:
    env = unwrapped(MAX_TURNS)
    assert env.text == ""
    assert env.error == (
        "claude reported an error: error_max_turns: Reached maximum number of turns (1)"
    )
    assert env.tokens is not None and env.tokens["input"] == 1671
    assert env.cost_usd == 0.00938


def test_a_denied_write_outside_the_cwd_is_an_error_even_though_the_model_says_pass() -> None:
    env = unwrapped(DENIED_OUTSIDE)
    assert '"status": "pass"' in env.text
    assert env.denials == ("Write /tmp/cprobe2/outside.txt",)
    assert env.error == "claude was denied an edit: Write /tmp/cprobe2/outside.txt"


def test_verbose_array_result_is_read_and_its_denial_too() -> None:
    env = unwrapped(VERBOSE_DENIED_GIT)
    target = "/tmp/cprobe2/cap-verbose_denied/repo/.git/x"
    assert env.denials == (f"Write {target}",)
    assert env.error == f"claude was denied an edit: Write {target}"
    # The per-event usage snapshots (output_tokens 1) are not added to the result's.
    assert env.tokens == {"input": 3583, "output": 121, "cache_creation": 0, "cache_read": 0}
    assert env.cost_usd == 0.02094


def _with(sample: str, **changes: object) -> str:
    obj = json.loads(sample)
    obj.update(changes)
    return json.dumps(obj) + "\n"


def test_a_denied_shell_command_is_listed_but_not_an_error() -> None:
    denial = {"tool_name": "Bash", "tool_use_id": "t", "tool_input": {"command": "make test"}}
    env = unwrapped(_with(SUCCESS, permission_denials=[denial]))
    assert env.denials == ("Bash make test",) and env.error is None


@pytest.mark.parametrize(
    ("tool", "given"),
    [
        ("Edit", {"file_path": "/w/.git/config", "old_string": "a", "new_string": "b"}),
        ("MultiEdit", {"file_path": "/w/.git/config", "edits": []}),
        ("NotebookEdit", {"notebook_path": "/w/.git/nb.ipynb", "new_source": ""}),
    ],
)
def test_every_denied_edit_tool_is_an_error(tool: str, given: dict[str, object]) -> None:
    denial = {"tool_name": tool, "tool_use_id": "t", "tool_input": given}
    env = unwrapped(_with(SUCCESS, permission_denials=[denial]))
    assert env.error is not None and env.error.startswith(f"claude was denied an edit: {tool} /w/")


def test_the_last_result_wins_and_noise_around_it_is_ignored() -> None:
    text = "warning: something on stderr\n" + MODEL_FAIL + SUCCESS + "trailing noise\n"
    assert unwrapped(text).tokens == unwrapped(SUCCESS).tokens


def test_model_usage_is_the_fallback_when_usage_is_missing() -> None:
    env = unwrapped(_with(SUCCESS, usage=None))
    assert env.tokens == {"input": 3456, "output": 67, "cache_creation": 0, "cache_read": 0}


@pytest.mark.parametrize("text", [ROOT_REFUSAL, STREAM_WITHOUT_VERBOSE, "", "[1, 2]\n{}\n"])
def test_output_without_a_result_object_is_not_claudes(text: str) -> None:
    assert unwrap(text) is None


def _log(tmp_path: Path, output: str) -> Path:
    log = tmp_path / "A.log"
    log.write_text(f"=== specexec attempt 1 x: claude ===\n{output}=== specexec end: exit 0 ===\n")
    return log


def test_a_denied_edit_fails_the_task_even_with_a_pass_result_file(tmp_path: Path) -> None:
    result_file = tmp_path / "result.json"
    result_file.write_text('{"status": "pass", "files_created": ["a.txt"]}')
    res = parse_result(result_file, _log(tmp_path, DENIED_OUTSIDE), 0, preset=AGENT.name)
    assert res.status == "fail" and res.source == "result_file"
    assert res.blocker == "claude was denied an edit: Write /tmp/cprobe2/outside.txt"
    assert res.denials == ("Write /tmp/cprobe2/outside.txt",)
    assert res.cost_usd == 0.0206


def test_a_pass_in_the_answer_with_exit_0_passes(tmp_path: Path) -> None:
    res = parse_result(tmp_path / "none.json", _log(tmp_path, SUCCESS), 0, preset=AGENT.name)
    assert res.status == "pass" and res.source == "output"
    assert res.files_created == ("a.txt",) and res.tokens is not None


def test_http_401_fails_the_task(tmp_path: Path) -> None:
    res = parse_result(tmp_path / "none.json", _log(tmp_path, HTTP_401), 1, preset=AGENT.name)
    assert res.status == "fail" and "API status 401" in (res.blocker or "")


def test_the_preset_is_the_tested_argv_and_leaves_nothing() -> None:
    assert AGENT.head == (
        "claude",
        "-p",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
    )
    assert AGENT.tail == () and AGENT.stdin_prompt and AGENT.leaves == ()
    assert AGENT.env is not None
    assert AGENT.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert not any("KEY" in k or "URL" in k or "RETRIES" in k for k in AGENT.env)
