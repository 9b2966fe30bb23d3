"""Claude Code (tested: @anthropic-ai/claude-code 2.1.197, the native binary).

``claude -p --output-format json --permission-mode acceptEdits [args]``, prompt on stdin.
What each part does was seen against a scripted model (tests/conformance/FINDINGS_claude.md):

- ``-p``: print mode. With no prompt argument it reads the prompt from stdin, runs the agent
  loop to the end and exits. It never asks anything: a permission it cannot grant is
  denied and listed in ``permission_denials``.
- ``--output-format json``: one ``{"type": "result", ...}`` object on stdout. ``--verbose``
  turns it into a JSON array of every event, and ``stream-json --verbose`` prints one event
  a line; a user may pass either, so all three are read (the last ``result`` object wins).
- ``--permission-mode acceptEdits``: Write / Edit inside the cwd without asking; edits
  under any ``.git/`` folder (a "sensitive file") or outside the cwd are denied, and so are
  most shell commands (``python3 ...``, ``make test``). Tasks that must run commands need the
  user's ``args`` (``--allowedTools Bash``, or narrower rules). Not
  ``--dangerously-skip-permissions``: as root it exits 1 unless ``IS_SANDBOX=1``, and it
  would let the agent write into ``.git/``. In specexec's linked worktrees ``.git`` is a
  file, so a Write to ``<worktree>/.git/x`` fails with ENOTDIR (a tool error the model sees,
  not a denial); the repository's real git folder is outside the cwd, hence denied.
- Not ``--no-session-persistence``: the transcript under ``~/.claude/projects/`` is the only
  record of what the agent did (specexec's log holds the result object only).

Environment defaults (set unless the user's environment sets them):
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` is the one that keeps a run to the configured
endpoint: without it the CLI resolves api.anthropic.com and makes an extra model call for a
session title. ``DISABLE_AUTOUPDATER`` / ``DISABLE_TELEMETRY`` / ``DISABLE_ERROR_REPORTING``
are belt and braces. The endpoint and key (``ANTHROPIC_BASE_URL``, ``ANTHROPIC_API_KEY``)
are the user's. ``CLAUDE_CODE_MAX_RETRIES`` is left at the CLI's default (10 retries with
backoff, about 3 minutes before a 401 / 429 / 5xx fails): that suits a real API under load;
set it lower in the environment to fail faster.

Leaves: none. The CLI writes only under ``$HOME`` (``~/.claude.json``, ``~/.claude/``), never
in the cwd (no ``.claude/``, no ``CLAUDE.md``; the conformance tests check it). Parallel runs
share ``~/.claude.json`` without trouble (each session has its own transcript file).

Output read here:

- success and model-reported fail: exit 0, ``is_error: false``, the answer in ``result``.
- API errors (401, 429, 5xx after the retries): exit 1, ``is_error: true`` with
  ``subtype: "success"`` (sic) and the HTTP status in ``api_error_status``; other failures
  have an ``error_*`` subtype and no ``result``: ``error_max_turns`` (exit 1) carries an
  ``errors`` list, whose first line goes into the error.
- denied tool calls: exit 0, ``is_error: false``, listed only in ``permission_denials``
  (the answer may still say pass). All go to ``Envelope.denials``; a denied *edit* (Write,
  Edit, MultiEdit, NotebookEdit) also sets ``Envelope.error``, so such a task never passes.
- error classes: ``api_error_status`` 429 -> rate_limit, 401/403 -> auth, 5xx (and 408,
  409, which the CLI retries alike) -> overloaded; without a status, the text
  (``usage limit reached|<reset epoch>`` -> rate_limit until that time). The CLI prints no
  retry-after of its own (it honoured the header in its own retries).
- tokens: ``result.usage`` (the sum over the main loop's turns), counted once; the per-event
  ``message.usage`` of verbose output is not added. ``modelUsage`` (the same totals by
  model, plus side calls) is used only when ``usage`` is missing. Cost: ``total_cost_usd``
  (the CLI's own estimate from its price table).
"""

from __future__ import annotations

import re
import time
from typing import Any

from specexec.workers.agent import (
    Agent,
    Envelope,
    as_dict,
    classify_text,
    clip,
    integer,
    number,
    retry_after,
    tokens,
    values_reversed,
)

EDIT_TOOLS = frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit"})


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


def _target(item: dict[str, Any]) -> str | None:
    given = as_dict(item.get("tool_input"))
    for key in ("file_path", "notebook_path", "path", "command"):
        value = given.get(key)
        if isinstance(value, str) and value:
            return clip(value)
    return None


def _denial(item: Any) -> str:
    d = as_dict(item)
    tool = str(d.get("tool_name") or "a tool")
    target = _target(d)
    return f"{tool} {target}" if target else tool


def _tokens(obj: dict[str, Any]) -> dict[str, int] | None:
    usage = as_dict(obj.get("usage"))
    counted = tokens(
        {
            "input": usage.get("input_tokens"),
            "output": usage.get("output_tokens"),
            "cache_creation": usage.get("cache_creation_input_tokens"),
            "cache_read": usage.get("cache_read_input_tokens"),
        }
    )
    if counted is not None:
        return counted
    per_model = [as_dict(m) for m in as_dict(obj.get("modelUsage")).values()]
    keys = {
        "input": "inputTokens",
        "output": "outputTokens",
        "cache_creation": "cacheCreationInputTokens",
        "cache_read": "cacheReadInputTokens",
    }
    sums: dict[str, Any] = {}
    for name, key in keys.items():
        values = [v for m in per_model if (v := number(m.get(key))) is not None]
        if values:
            sums[name] = sum(values)
    return tokens(sums)


def _error(obj: dict[str, Any], answer: Any, denied_edits: list[str]) -> str | None:
    subtype = str(obj.get("subtype", "success"))
    if obj.get("is_error") is True or subtype != "success":
        # API errors carry their message in "result"; error_max_turns and the like have no
        # "result" but an "errors" list ("Reached maximum number of turns (1)").
        raw = obj.get("errors")
        errors = [str(e) for e in raw if e] if isinstance(raw, list) else []
        if isinstance(answer, str) and answer.strip():
            detail = answer
        else:
            detail = ": ".join([subtype, *errors[:1]] if subtype != "success" else errors[:1])
        status = obj.get("api_error_status")
        prefix = "claude reported an error"
        if status:
            prefix += f" (API status {status})"
        return f"{prefix}: {clip(detail or 'is_error')}"
    if denied_edits:
        shown = ", ".join(denied_edits[:5])
        more = f" and {len(denied_edits) - 5} more" if len(denied_edits) > 5 else ""
        return f"claude was denied an edit: {shown}{more}"
    return None


# A subscription's limit: "Claude AI usage limit reached|1767290400" (the reset, epoch s).
_RESET_RE = re.compile(r"usage limit reached\|(\d{9,11})", re.I)


def _error_class(obj: dict[str, Any], error: str) -> tuple[str | None, float | None]:
    """The class of an error result: from ``api_error_status`` (the HTTP status of the
    failed API call), else from its text; and the wait it states, if any."""
    status = integer(obj.get("api_error_status"))
    reset = _RESET_RE.search(error)
    wait = max(int(reset.group(1)) - time.time(), 0.0) if reset else retry_after(error)
    if status == 429:
        return "rate_limit", wait
    if status in (401, 403):
        return "auth", None
    if status is not None and (status >= 500 or status in (408, 409)):
        return "overloaded", wait
    cls = classify_text(error) if status is None else None
    return (cls, wait) if cls is not None else (None, None)


def unwrap(text: str) -> Envelope | None:
    results = _result_objects(text)
    if not results:
        return None
    obj = results[0]
    answer = obj.get("result")
    raw = [as_dict(d) for d in obj.get("permission_denials") or () if isinstance(d, dict)]
    denials = tuple(_denial(d) for d in raw)
    denied_edits = [_denial(d) for d in raw if d.get("tool_name") in EDIT_TOOLS]
    error = _error(obj, answer, denied_edits)
    cls, wait = _error_class(obj, error) if error and not denied_edits else (None, None)
    return Envelope(
        "claude",
        answer if isinstance(answer, str) else "",
        number(obj.get("total_cost_usd", obj.get("cost_usd"))),
        _tokens(obj),
        error,
        denials,
        error_class=cls,
        retry_after_s=wait,
    )


AGENT = Agent(
    name="claude",
    head=("claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits"),
    env={
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    },
    unwrap=unwrap,
)
