"""What one worker plugin is, and the output-reading helpers the plugins share.

A plugin is one module under ``specexec/workers/`` defining ``AGENT = Agent(...)``: the argv
of the tested CLI version, how the prompt goes in, the environment it needs to run
unattended, the files it leaves in the worktree that are never the task's change, and
``unwrap``, which reads everything the CLI prints (its success shapes and its error shapes)
into an ``Envelope``. Adding an agent is one module plus its tests, and a line in
``registry.py``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LINE_IN_BLOCKER = 200

# Every failed attempt gets one of these (pattern 002's transient / resource exhaustion /
# coordination / systemic, made specific). The plugins name the first four from what their
# CLI prints; specexec decides the rest from facts it checked itself.
ERROR_CLASSES: tuple[str, ...] = (
    "rate_limit",  # 429, "usage limit reached": wait, then retry (not counted)
    "overloaded",  # 5xx, "overloaded", connection reset: wait, then retry (not counted)
    "auth",  # 401/403, invalid key, expired login: stop starting this worker
    "agent_error",  # the agent reported an error of its own
    "timeout",
    "no_change",  # reported pass, changed nothing
    "verify_failed",
    "merge_conflict",
    "worker_failed",  # non-zero exit, nothing more known
    "not_found",  # the program is missing: stop starting this worker
)

_CLASS_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "rate_limit",
        re.compile(
            r"\b429\b|rate[ _-]?limit|too many requests|usage limit|quota (?:exceeded|exhausted)"
            r"|resource[ _]exhausted",
            re.I,
        ),
    ),
    (
        "auth",
        re.compile(
            r"\b40[13]\b|unauthori[sz]ed|authentication|invalid (?:api[ _-]?)?key|api key"
            r"|forbidden|not logged in|login (?:expired|required)|permission[ _]denied",
            re.I,
        ),
    ),
    (
        "overloaded",
        re.compile(
            r"\b5\d\d\b|overloaded|service unavailable|internal server error|bad gateway"
            r"|connection (?:reset|refused|error)|timed? ?out waiting|high demand",
            re.I,
        ),
    ),
)
_RETRY_AFTER_RE = re.compile(r"retry[- ]after[\"':= ]+(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?)?", re.I)


def classify_text(text: str) -> str | None:
    """The failure class a CLI's error message names (rate_limit, auth, overloaded), if
    any: for plugins whose CLI reports errors as text, and for shell workers."""
    for name, pattern in _CLASS_PATTERNS:
        if pattern.search(text):
            return name
    return None


def retry_after(text: str) -> float | None:
    """Seconds to wait that an error message states (``retry-after: 30``, ``retry after
    1500ms``), if it states one."""
    m = _RETRY_AFTER_RE.search(text)
    if m is None:
        return None
    value = float(m.group(1))
    return value / 1000 if (m.group(2) or "").lower() == "ms" else value


@dataclass(frozen=True, slots=True)
class Envelope:
    """What an agent CLI wrapped around its answer."""

    kind: str
    text: str  # the agent's final answer, searched for the result JSON
    cost_usd: float | None = None
    tokens: Mapping[str, int] | None = None
    error: str | None = None  # the CLI reported a failure, whatever its exit code
    denials: tuple[str, ...] = ()  # tool calls the CLI refused the agent (Claude's)
    # With ``error``: which kind of failure (one of ERROR_CLASSES), and when the agent's
    # service said to try again (seconds from now), if it did.
    error_class: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    head: tuple[str, ...]  # argv before the user's args
    tail: tuple[str, ...] = ()  # argv after them (codex's "-", aider's prompt file)
    stdin_prompt: bool = True  # else stdin is /dev/null
    # Set in the worker's environment unless the user's environment already sets them:
    # what the CLI needs to run unattended (no update checks, telemetry, prompts).
    env: Mapping[str, str] | None = None
    # Git pathspecs (relative to the worktree) of files the CLI writes for itself: never
    # committed, never merged, never scope violations, removed before a slot is reused.
    leaves: tuple[str, ...] = ()
    # A reported pass that changed no file is a failure (an agent that was asked to edit
    # and edited nothing); the task's "expect_changes" overrides it.
    expect_changes: bool = True
    # The prompt asks for the result as a fenced json block at the end of the answer as
    # well as in the result file; False where a fenced block in the answer breaks the CLI
    # (aider's "whole" edit format takes every fence for a file).
    answer_block: bool = True
    unwrap: Callable[[str], Envelope | None] | None = None


# --------------------------------------------------------------------------- helpers


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str) -> Any:
    """json.loads without NaN/Infinity; raises ValueError (also for absurd nesting)."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def integer(value: Any) -> int | None:
    n = number(value)
    return int(n) if n is not None else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def clip(text: str, limit: int = MAX_LINE_IN_BLOCKER) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tokens(pairs: Mapping[str, Any]) -> dict[str, int] | None:
    out = {k: n for k, v in pairs.items() if (n := integer(v)) is not None}
    return out or None


def values_reversed(text: str, opener: str = "{") -> Iterator[Any]:
    """JSON values that start at the beginning of a line with ``opener``, last first (one
    per line start: JSONL events, or a pretty-printed value whose opener is in column 0)."""
    pos = len(text)
    while pos > 0:
        start = text.rfind("\n", 0, pos - 1) + 1 if pos > 1 else 0
        if text.startswith(opener, start):
            try:
                value, _ = DECODER.raw_decode(text, start)
            except (ValueError, RecursionError):
                value = None
            if value is not None:
                yield value
        pos = start
        if start == 0:
            break


def objects_reversed(text: str) -> Iterator[dict[str, Any]]:
    for value in values_reversed(text, "{"):
        if isinstance(value, dict):
            yield value
