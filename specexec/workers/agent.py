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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LINE_IN_BLOCKER = 200


@dataclass(frozen=True, slots=True)
class Envelope:
    """What an agent CLI wrapped around its answer."""

    kind: str
    text: str  # the agent's final answer, searched for the result JSON
    cost_usd: float | None = None
    tokens: Mapping[str, int] | None = None
    error: str | None = None  # the CLI reported a failure, whatever its exit code
    denials: tuple[str, ...] = ()  # tool calls the CLI refused the agent (Claude's)


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
