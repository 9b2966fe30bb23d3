"""Shared behaviour of the fake agent CLIs in this directory (tests put it first on PATH).

Each fake reads its prompt the way the real CLI does (stdin, or aider's --message-file),
checks the flags specexec's preset passes, creates ``done-by-<agent>.txt`` in its working
directory, and prints what the real CLI prints in non-interactive mode, with the agent's
answer ending in a fenced json result. Environment knobs:

- FAKE_AGENT_STATUS: pass (default) | fail | blocked - the status the "agent" reports
- FAKE_AGENT_MODE: normal (default) | error (the CLI itself fails) | silent (no json in
  the answer) | write_result (also write the result to $SPECEXEC_RESULT_FILE)
- FAKE_AGENT_ARGV_FILE: write the argv received here (JSON), to check the preset's args
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any


def usage_error(agent: str, message: str) -> None:
    print(f"{agent}: error: {message}", file=sys.stderr)
    sys.exit(2)


def need(agent: str, args: list[str], *flags: str) -> None:
    for flag in flags:
        if flag not in args:
            usage_error(agent, f"fake {agent} expects {flag} (as specexec's preset passes it)")


def option(args: list[str], name: str) -> str | None:
    if name in args and args.index(name) + 1 < len(args):
        return args[args.index(name) + 1]
    return None


def start(agent: str, prompt: str) -> tuple[str, str, str, dict[str, Any]]:
    """Record argv, check the prompt, touch a file; return (task_id, status, mode, result)."""
    argv_file = os.environ.get("FAKE_AGENT_ARGV_FILE")
    if argv_file:
        Path(argv_file).write_text(json.dumps(sys.argv[1:]))
    if not prompt.strip():
        usage_error(agent, "no prompt given")
    m = re.search(r"Execute Task (\S+)", prompt)
    task_id = m.group(1) if m else "?"
    status = os.environ.get("FAKE_AGENT_STATUS", "pass")
    mode = os.environ.get("FAKE_AGENT_MODE", "normal")
    Path(f"done-by-{agent}.txt").write_text(f"{task_id}\n")
    result: dict[str, Any] = {
        "status": status,
        "files_modified": [],
        "files_created": [f"done-by-{agent}.txt"],
        "test_results": {
            "ran": 3,
            "passed": 3 if status == "pass" else 2,
            "failed": 0 if status == "pass" else 1,
        },
        "blocker": None if status == "pass" else f"fake {agent}: {status} on purpose",
        "notes": f"{agent} worked on task {task_id}",
        "data": [{"agent": agent, "task": task_id}],
        "duration_minutes": 1,
    }
    if mode == "write_result":
        Path(os.environ["SPECEXEC_RESULT_FILE"]).write_text(json.dumps(result))
    return task_id, status, mode, result


def answer(agent: str, task_id: str, mode: str, result: dict[str, Any]) -> str:
    """The agent's final message, as a model would write it."""
    text = f"I created done-by-{agent}.txt for task {task_id} and ran the tests."
    if mode == "silent":
        return text
    return f"{text}\n\n```json\n{json.dumps(result, indent=2)}\n```\n\n**TASK COMPLETE**"
