"""Codex CLI (tested: @openai/codex 0.171.0).

``codex exec --sandbox workspace-write --json [args] -``, prompt on stdin (``-``).

- ``exec``: non-interactive mode. ``--json``: JSONL events (``item.completed`` agent
  messages, ``turn.completed`` token usage, ``turn.failed`` and ``error`` on failure).
- ``--sandbox workspace-write``: edits inside the worktree only. (``--full-auto`` is an
  error in 0.171.) Extra args go before ``-``.
"""

from __future__ import annotations

from specexec.workers.agent import (
    Agent,
    Envelope,
    as_dict,
    as_text,
    clip,
    integer,
    objects_reversed,
)


def unwrap(text: str) -> Envelope | None:
    answer: str | None = None
    usage_sum: dict[str, int] = {}
    failed: str | None = None
    last_error: str | None = None
    completed = seen = False
    for obj in objects_reversed(text):
        kind = obj.get("type")
        if kind in ("thread.started", "turn.started", "item.started", "item.updated"):
            seen = True
        elif kind == "item.completed":
            seen = True
            item = as_dict(obj.get("item"))
            if answer is None and item.get("type") in ("agent_message", "assistant_message"):
                answer = as_text(item.get("text"))
            elif item.get("type") == "error":
                last_error = last_error or clip(str(item.get("message") or "error"))
        elif kind == "turn.completed":
            seen = completed = True
            for key, value in as_dict(obj.get("usage")).items():
                if (n := integer(value)) is not None:
                    name = key.removesuffix("_tokens")
                    usage_sum[name] = usage_sum.get(name, 0) + n
        elif kind == "turn.failed":
            seen = True
            err = obj.get("error")
            message = err.get("message") if isinstance(err, dict) else err
            failed = failed or clip(str(message or "turn failed"))
        elif kind == "error":
            seen = True
            last_error = last_error or clip(str(obj.get("message") or "error"))
    if not seen:
        return None
    error = failed or (last_error if not completed else None)
    return Envelope(
        "codex",
        answer or "",
        None,
        usage_sum or None,
        f"codex reported an error: {error}" if error else None,
    )


AGENT = Agent(
    name="codex",
    head=("codex", "exec", "--sandbox", "workspace-write", "--json"),
    tail=("-",),
    unwrap=unwrap,
)
