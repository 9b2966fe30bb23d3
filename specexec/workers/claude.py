"""Claude Code (tested: @anthropic-ai/claude-code 2.1.197).

``claude -p --output-format json --permission-mode acceptEdits [args]``, prompt on stdin.

- ``-p``: non-interactive (print) mode; with no prompt argument it reads stdin.
- ``--output-format json``: one ``{"type": "result", ...}`` object at the end; with
  ``--verbose`` the CLI prints a JSON array of every message instead, and with
  ``stream-json`` one message per line. All three are read.
- ``acceptEdits``: file edits without asking, shell commands denied. Claude Code treats
  every path under a ``.git/`` directory as sensitive and denies edits there, which is why
  specexec's worktrees live outside ``.git/``.
- Errors: ``is_error: true`` (also with ``subtype: "success"``), with the API status in
  ``api_error_status``; refused tool calls are listed in ``permission_denials``.
"""

from __future__ import annotations

from typing import Any

from specexec.workers.agent import (
    Agent,
    Envelope,
    as_dict,
    clip,
    number,
    tokens,
    values_reversed,
)


def _result_objects(text: str) -> list[dict[str, Any]]:
    """The ``type: result`` objects in the output: a line of its own (json, stream-json)
    or inside the array ``--verbose`` prints, last first."""
    found: list[dict[str, Any]] = []
    for value in values_reversed(text, "{"):
        if isinstance(value, dict) and value.get("type") == "result":
            found.append(value)
    for value in values_reversed(text, "["):
        if isinstance(value, list):
            found.extend(
                v for v in reversed(value) if isinstance(v, dict) and v.get("type") == "result"
            )
    return found


def _denial(item: Any) -> str:
    d = as_dict(item)
    tool = str(d.get("tool_name") or "a tool")
    target = as_dict(d.get("tool_input")).get("file_path") or as_dict(d.get("tool_input")).get(
        "command"
    )
    return f"{tool} {target}" if target else tool


def unwrap(text: str) -> Envelope | None:
    results = _result_objects(text)
    if not results:
        return None
    obj = results[0]
    answer = obj.get("result")
    usage = as_dict(obj.get("usage"))
    counted = tokens(
        {
            "input": usage.get("input_tokens"),
            "output": usage.get("output_tokens"),
            "cache_creation": usage.get("cache_creation_input_tokens"),
            "cache_read": usage.get("cache_read_input_tokens"),
        }
    )
    cost = number(obj.get("total_cost_usd", obj.get("cost_usd")))
    denials = tuple(_denial(d) for d in obj.get("permission_denials") or () if d)
    error = None
    if obj.get("is_error") is True or str(obj.get("subtype", "success")) != "success":
        detail = answer if isinstance(answer, str) and answer.strip() else obj.get("subtype")
        status = obj.get("api_error_status")
        prefix = (
            f"claude reported an error (API status {status})"
            if status
            else ("claude reported an error")
        )
        error = f"{prefix}: {clip(str(detail or 'is_error'))}"
    return Envelope(
        "claude", answer if isinstance(answer, str) else "", cost, counted, error, denials
    )


AGENT = Agent(
    name="claude",
    head=("claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits"),
    env={
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    },
    unwrap=unwrap,
)
