"""The gemini plugin's ``unwrap`` on output the real Gemini CLI 0.61.0 printed against the
scripted model (tests/conformance, FINDINGS_gemini.md): stdout and stderr land in one log,
in either order. Only the temporary folder names were shortened to /tmp/sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from specexec.run.processes import ATTEMPT_FOOTER, ATTEMPT_HEADER
from specexec.workers.gemini import AGENT, unwrap
from specexec.workers.result import WorkerResult, parse_result

# fmt: off
SUCCESS_STDOUT = r"""{
  "session_id": "01026fc0-de19-4b70-9469-95b09b7c7566",
  "response": "Done.\n\n```json\n{\"status\": \"pass\", \"files_created\": [\"hello.txt\"]}\n```\n",
  "stats": {
    "models": {
      "gemini-3.5-flash-lite": {
        "api": {
          "totalRequests": 1,
          "totalErrors": 0,
          "totalLatencyMs": 109,
          "errorsByType": {}
        },
        "tokens": {
          "input": 50,
          "prompt": 100,
          "candidates": 10,
          "total": 115,
          "cached": 50,
          "thoughts": 5,
          "tool": 0
        },
        "roles": {
          "utility_router": {
            "totalRequests": 1,
            "totalErrors": 0,
            "totalLatencyMs": 109,
            "tokens": {
              "input": 50,
              "prompt": 100,
              "candidates": 10,
              "total": 115,
              "cached": 50,
              "thoughts": 5,
              "tool": 0
            }
          }
        }
      },
      "gemini-3.8-flash": {
        "api": {
          "totalRequests": 2,
          "totalErrors": 0,
          "totalLatencyMs": 754,
          "errorsByType": {}
        },
        "tokens": {
          "input": 11179,
          "prompt": 22358,
          "candidates": 20,
          "total": 22388,
          "cached": 11179,
          "thoughts": 10,
          "tool": 0
        },
        "roles": {
          "main": {
            "totalRequests": 2,
            "totalErrors": 0,
            "totalLatencyMs": 754,
            "tokens": {
              "input": 11179,
              "prompt": 22358,
              "candidates": 20,
              "total": 22388,
              "cached": 11179,
              "thoughts": 10,
              "tool": 0
            }
          }
        }
      }
    },
    "tools": {
      "totalCalls": 1,
      "totalSuccess": 1,
      "totalFail": 0,
      "totalDurationMs": 102,
      "totalDecisions": {
        "accept": 1,
        "reject": 0,
        "modify": 0,
        "auto_accept": 0
      },
      "byName": {
        "write_file": {
          "count": 1,
          "success": 1,
          "fail": 0,
          "durationMs": 102,
          "decisions": {
            "accept": 1,
            "reject": 0,
            "modify": 0,
            "auto_accept": 0
          }
        }
      }
    },
    "files": {
      "totalLinesAdded": 1,
      "totalLinesRemoved": 0
    }
  }
}"""

SUCCESS_STDERR = r"""Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited. For the best experience, use a terminal emulator with truecolor support.
Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
Ripgrep is not available. Falling back to GrepTool.
"""

MODELFAIL_STDOUT = r"""{
  "session_id": "2b59a124-775d-4341-a999-b9c9408fa66b",
  "response": "Done.\n\n```json\n{\"status\": \"fail\", \"blocker\": \"tests fail\"}\n```\n",
  "stats": {
    "models": {
      "gemini-3.5-flash-lite": {
        "api": {
          "totalRequests": 1,
          "totalErrors": 0,
          "totalLatencyMs": 164,
          "errorsByType": {}
        },
        "tokens": {
          "input": 50,
          "prompt": 100,
          "candidates": 10,
          "total": 115,
          "cached": 50,
          "thoughts": 5,
          "tool": 0
        },
        "roles": {
          "utility_router": {
            "totalRequests": 1,
            "totalErrors": 0,
            "totalLatencyMs": 164,
            "tokens": {
              "input": 50,
              "prompt": 100,
              "candidates": 10,
              "total": 115,
              "cached": 50,
              "thoughts": 5,
              "tool": 0
            }
          }
        }
      },
      "gemini-3.8-flash": {
        "api": {
          "totalRequests": 2,
          "totalErrors": 0,
          "totalLatencyMs": 580,
          "errorsByType": {}
        },
        "tokens": {
          "input": 11179,
          "prompt": 22356,
          "candidates": 20,
          "total": 22386,
          "cached": 11177,
          "thoughts": 10,
          "tool": 0
        },
        "roles": {
          "main": {
            "totalRequests": 2,
            "totalErrors": 0,
            "totalLatencyMs": 580,
            "tokens": {
              "input": 11179,
              "prompt": 22356,
              "candidates": 20,
              "total": 22386,
              "cached": 11177,
              "thoughts": 10,
              "tool": 0
            }
          }
        }
      }
    },
    "tools": {
      "totalCalls": 1,
      "totalSuccess": 1,
      "totalFail": 0,
      "totalDurationMs": 127,
      "totalDecisions": {
        "accept": 1,
        "reject": 0,
        "modify": 0,
        "auto_accept": 0
      },
      "byName": {
        "write_file": {
          "count": 1,
          "success": 1,
          "fail": 0,
          "durationMs": 127,
          "decisions": {
            "accept": 1,
            "reject": 0,
            "modify": 0,
            "auto_accept": 0
          }
        }
      }
    },
    "files": {
      "totalLinesAdded": 1,
      "totalLinesRemoved": 0
    }
  }
}"""

E401_STDERR = r"""Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited. For the best experience, use a terminal emulator with truecolor support.
Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
Ripgrep is not available. Falling back to GrepTool.
Error generating content via API. Full report available at: /tmp/sample/home/tmp/gemini-client-error-generateJson-api-2026-12-01T22-20-30-438Z.json _ApiError: {"error":{"code":401,"message":"API key not valid.","status":"UNAUTHENTICATED"}}
    at throwErrorIfNotOK (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:267833:24)
    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:267584:7
    at async Models.generateContent (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:268643:16)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:311412:26
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:288018:23
    at async retryWithBackoff (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308039:23)
    at async BaseLlmClient._generateWithRetry (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308334:14)
    at async BaseLlmClient.generateJson (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308227:21)
    at async NumericalClassifierStrategy.route (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:360170:28) {
  status: 401
}
[Routing] NumericalClassifierStrategy failed: Error: Failed to generate content: {"error":{"code":401,"message":"API key not valid.","status":"UNAUTHENTICATED"}}
    at BaseLlmClient._generateWithRetry (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308364:13)
    at async BaseLlmClient.generateJson (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308227:21)
    at async NumericalClassifierStrategy.route (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:360170:28)
    at async CompositeStrategy.route (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:360242:26)
    at async ModelRouterService.route (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:360406:18)
    at async GeminiClient.processTurn (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:346653:24)
    at async GeminiClient.sendMessageStream (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:346772:14)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/gemini-3HFX2LNT.js:12198:26
    at async main (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/gemini-3HFX2LNT.js:17627:5)
Error when talking to Gemini API Full report available at: /tmp/sample/home/tmp/gemini-client-error-Turn.run-sendMessageStream-2026-12-01T22-20-30-741Z.json _ApiError: {"error":{"code":401,"message":"API key not valid.","status":"UNAUTHENTICATED"}}
    at throwErrorIfNotOK (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:267833:24)
    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:267596:7
    at async Models.generateContentStream (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:268692:16)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:311457:19
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:288018:23
    at async retryWithBackoff (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308039:23)
    at async GeminiChat.makeApiCallAndProcessStream (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:332326:28)
    at async GeminiChat.streamWithRetries (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:332079:29)
    at async Turn.run (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:333001:24) {
  status: 401
}
{
  "session_id": "8d4abf15-4ff9-4860-8b2e-bdbcbaf72115",
  "error": {
    "type": "Error",
    "message": "{\"error\":{\"code\":401,\"message\":\"API key not valid.\",\"status\":\"UNAUTHENTICATED\"}}",
    "code": 401
  }
}
"""

E429_STDERR = r"""Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited. For the best experience, use a terminal emulator with truecolor support.
Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
Ripgrep is not available. Falling back to GrepTool.
Attempt 1 failed: Resource exhausted.. Max attempts reached
Error when talking to Gemini API Full report available at: /tmp/sample/home/tmp/gemini-client-error-Turn.run-sendMessageStream-2026-12-01T22-20-37-429Z.json RetryableQuotaError: Resource exhausted.
    at classifyGoogleError (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:307333:14)
    at retryWithBackoff (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308062:29)
    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)
    at async GeminiChat.makeApiCallAndProcessStream (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:332326:28)
    at async GeminiChat.streamWithRetries (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:332079:29)
    at async Turn.run (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:333001:24)
    at async GeminiClient.processTurn (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:346675:22)
    at async GeminiClient.sendMessageStream (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:346772:14)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/gemini-3HFX2LNT.js:12198:26
    at async main (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/gemini-3HFX2LNT.js:17627:5) {
  cause: { code: 429, message: 'Resource exhausted.', details: [] },
  retryDelayMs: undefined,
  status: 429
}
{
  "session_id": "3f7a11ab-9e50-4e5c-a646-a8b6a75769e5",
  "error": {
    "type": "Error",
    "message": "Resource exhausted.",
    "code": 429
  }
}
"""

E500_STDERR = r"""Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited. For the best experience, use a terminal emulator with truecolor support.
Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
Ripgrep is not available. Falling back to GrepTool.
Attempt 1 failed: {"error":{"code":500,"message":"internal","status":"INTERNAL"}}. Max attempts reached
Error when talking to Gemini API Full report available at: /tmp/sample/home/tmp/gemini-client-error-Turn.run-sendMessageStream-2026-12-01T22-20-43-893Z.json _ApiError: {"error":{"code":500,"message":"internal","status":"INTERNAL"}}
    at throwErrorIfNotOK (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:267833:24)
    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:267596:7
    at async Models.generateContentStream (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:268692:16)
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:311457:19
    at async file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:288018:23
    at async retryWithBackoff (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:308039:23)
    at async GeminiChat.makeApiCallAndProcessStream (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:332326:28)
    at async GeminiChat.streamWithRetries (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:332079:29)
    at async Turn.run (file:///root/.cache/specexec/agents/npm/node_modules/@google/gemini-cli/bundle/chunk-JDPZ4CE3.js:333001:24) {
  status: 500
}
{
  "session_id": "23ac74e9-5c18-416d-aab3-29bdcc9993e7",
  "error": {
    "type": "Error",
    "message": "{\"error\":{\"code\":500,\"message\":\"internal\",\"status\":\"INTERNAL\"}}",
    "code": 500
  }
}
"""

OUTSIDE_STDOUT = r"""{
  "session_id": "d7540b05-8158-40db-b01d-192ac510d12c",
  "response": "Done.\n\n```json\n{\"status\": \"fail\", \"blocker\": \"Path not in workspace: Attempted path \\\"/tmp/sample/outside.txt\\\" resolves outside the allowed workspace directories: /tmp/sample/worktree or the project temp directory: /tmp/sample/home/.gemini/tmp/worktree\"}\n```\n",
  "stats": {
    "models": {
      "gemini-3.5-flash-lite": {
        "api": {
          "totalRequests": 1,
          "totalErrors": 0,
          "totalLatencyMs": 56,
          "errorsByType": {}
        },
        "tokens": {
          "input": 50,
          "prompt": 100,
          "candidates": 10,
          "total": 115,
          "cached": 50,
          "thoughts": 5,
          "tool": 0
        },
        "roles": {
          "utility_router": {
            "totalRequests": 1,
            "totalErrors": 0,
            "totalLatencyMs": 56,
            "tokens": {
              "input": 50,
              "prompt": 100,
              "candidates": 10,
              "total": 115,
              "cached": 50,
              "thoughts": 5,
              "tool": 0
            }
          }
        }
      },
      "gemini-3.8-flash": {
        "api": {
          "totalRequests": 2,
          "totalErrors": 0,
          "totalLatencyMs": 292,
          "errorsByType": {}
        },
        "tokens": {
          "input": 11195,
          "prompt": 22389,
          "candidates": 20,
          "total": 22419,
          "cached": 11194,
          "thoughts": 10,
          "tool": 0
        },
        "roles": {
          "main": {
            "totalRequests": 2,
            "totalErrors": 0,
            "totalLatencyMs": 292,
            "tokens": {
              "input": 11195,
              "prompt": 22389,
              "candidates": 20,
              "total": 22419,
              "cached": 11194,
              "thoughts": 10,
              "tool": 0
            }
          }
        }
      }
    },
    "tools": {
      "totalCalls": 1,
      "totalSuccess": 0,
      "totalFail": 1,
      "totalDurationMs": 0,
      "totalDecisions": {
        "accept": 0,
        "reject": 0,
        "modify": 0,
        "auto_accept": 0
      },
      "byName": {
        "write_file": {
          "count": 1,
          "success": 0,
          "fail": 1,
          "durationMs": 0,
          "decisions": {
            "accept": 0,
            "reject": 0,
            "modify": 0,
            "auto_accept": 0
          }
        }
      }
    },
    "files": {
      "totalLinesAdded": 0,
      "totalLinesRemoved": 0
    }
  }
}"""

OUTSIDE_STDERR = r"""Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited. For the best experience, use a terminal emulator with truecolor support.
Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
Ripgrep is not available. Falling back to GrepTool.
Error executing tool write_file: Path not in workspace: Attempted path "/tmp/sample/outside.txt" resolves outside the allowed workspace directories: /tmp/sample/worktree or the project temp directory: /tmp/sample/home/.gemini/tmp/worktree
"""

DOTGIT_STDERR = r"""Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited. For the best experience, use a terminal emulator with truecolor support.
Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for a better visual experience.
Ripgrep is not available. Falling back to GrepTool.
Error executing tool write_file: Path not in workspace: Attempted path "/tmp/sample/worktree/.git/x" resolves outside the allowed workspace directories: /tmp/sample/worktree or the project temp directory: /tmp/sample/home/.gemini/tmp/worktree
"""
# fmt: on

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
    obj = {
        "session_id": "s",
        "error": {"type": "Error", "message": "Invalid auth method selected.", "code": 41},
    }
    env = unwrap("Warning: Basic terminal detected\n" + json.dumps(obj) + "\n")
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
    obj = {
        "session_id": "s",
        "error": {"type": "Error", "message": "Invalid auth method selected.", "code": 41},
    }
    env = unwrap(json.dumps(obj, indent=2) + "\n")
    assert env is not None and env.error_class == "auth" and env.retry_after_s is None


def test_a_dropped_connection_is_overloaded() -> None:
    # Seen once: the server closed the connection mid-response (exit 1).
    obj = {
        "session_id": "s",
        "error": {
            "type": "Error",
            "message": "exception TypeError: fetch failed sending request",
            "code": 1,
        },
    }
    env = unwrap(json.dumps(obj, indent=2) + "\n")
    assert env is not None and env.error_class == "overloaded"


def test_a_bad_request_or_unknown_model_has_no_class() -> None:
    # 404 (the CLI's ModelNotFoundError) or 400: the setup is wrong, the API is fine:
    # agent_error, retried by the ordinary rules only.
    for code in (400, 404):
        body = json.dumps({"error": {"code": code, "message": "models/x is not found"}})
        obj = {"session_id": "s", "error": {"type": "Error", "message": body, "code": code}}
        env = unwrap(json.dumps(obj, indent=2) + "\n")
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
