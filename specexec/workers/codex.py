"""Codex CLI (tested: @openai/codex 0.171.0; tests/conformance/FINDINGS_codex.md).

``codex exec --sandbox workspace-write --json -c analytics.enabled=false [args] -``, prompt
on stdin (``-``), cwd = the task's worktree.

- ``exec``: non-interactive; with no TTY the approval policy is ``never``, so nothing ever
  waits for an answer (a refused action goes back to the model as its tool output).
- ``--sandbox workspace-write``: the worktree is writable, the rest of the filesystem and
  ``<worktree>/.git`` are read-only (bubblewrap + seccomp; works as root, no extra flag).
  By default /tmp and $TMPDIR stay writable too (``[sandbox_workspace_write]
  exclude_slash_tmp`` / ``exclude_tmpdir_env_var`` in the user's config turn that off);
  specexec leaves that to the user, since tests and builds use a temporary directory.
- ``--json``: JSONL events on stdout (shapes below). ``--full-auto`` is an error in 0.171.
- ``-c analytics.enabled=false``: else every run resolves and calls ab.chatgpt.com
  (product analytics). It is the one network use besides the model that a plain config
  makes (seen with strace); a user who wants it back passes ``-c analytics.enabled=true``
  in the worker's args (a later ``-c`` wins). Codex has no environment variable for it,
  so ``env`` stays empty.
- Not set, because it is the user's setup: the endpoint and key. ``OPENAI_BASE_URL`` is
  ignored and the built-in provider's retries cannot be bounded, so a non-OpenAI endpoint
  needs a ``[model_providers.X]`` in ``$CODEX_HOME/config.toml`` (``base_url``,
  ``env_key``, ``wire_api = "responses"``, ``supports_websockets = false``,
  ``request_max_retries`` / ``stream_max_retries``). Codex's default retries are left
  alone (a 500 is retried for about 26 s, 30 requests; a 401 6 times in 8 s): bounded,
  and what a real endpoint's transient errors need; the task timeout bounds a run anyway.
  Offline, ``[features] plugins = false`` stops a ``git clone`` of OpenAI's plugin
  marketplace at start and ``unbounded_connection_retries = false`` stops "Reconnecting...
  waiting for network" from waiting forever.
- ``leaves`` is empty: Codex writes its state (sessions, sqlite, shell snapshots) in
  ``$CODEX_HOME``, never in the worktree.

Output read by ``unwrap``:

- the answer: the ``text`` of the last ``item.completed`` ``agent_message``;
- tokens: ``turn.completed.usage`` (one per turn, covering all the turn's model calls; one
  ``exec`` is one turn, several are summed). ``cached_input_tokens`` is part of
  ``input_tokens`` and ``reasoning_output_tokens`` part of ``output_tokens``: they are kept
  as ``cached_input`` / ``reasoning_output`` and never added in. No cost is reported.
- errors: ``turn.failed`` (HTTP errors, missing key; exit 1), or an ``error`` event with no
  completed turn. An ``error`` event or ``error`` item in a turn that completed is a warning
  (a retry, "Model metadata ... not found") and is ignored.
- a rejected edit (a patch outside the worktree or into ``.git``): exit 0, nothing in the
  JSONL, the model only gets "patch rejected: ..." as its tool output and may still report
  pass. The one trace is a log line on stderr,
  ``<time> ERROR codex_core::tools::router: error=patch rejected: ...``; it sets ``error``
  (and a denial), so such a task can never pass. (It relies on Codex's default stderr log
  level: a user's ``RUST_LOG=off`` or ``codex_core=off`` hides the line; ``warn`` keeps it.
  An unset ``RUST_LOG`` already logs it, so ``env`` does not set one.)
- shell commands the sandbox refused (``Read-only file system`` in their output) and
  ``file_change`` items that failed are listed in ``denials`` only: a build or test run
  commonly trips over a read-only cache directory without that being the task's edit.
"""

from __future__ import annotations

import re
from typing import Any

from specexec.workers.agent import (
    Agent,
    Envelope,
    as_dict,
    as_text,
    classify_text,
    clip,
    integer,
    objects_reversed,
    retry_after,
)

# A tracing line on stderr (never a JSONL line: those start with "{").
_REJECTED_RE = re.compile(
    r"^(?!\{)[^\n]*?\bERROR\b[^\n]*?\berror=(?P<what>patch rejected:[^\n]*)$", re.M
)
_SANDBOX_DENIED = "Read-only file system"
_MISSING_KEY = "Missing environment variable"  # env_key names an unset variable


def _paths(item: dict[str, Any]) -> str:
    changes = item.get("changes")
    paths = [str(as_dict(c).get("path")) for c in changes or () if as_dict(c).get("path")]
    return ", ".join(paths) or "?"


def unwrap(text: str) -> Envelope | None:
    answer: str | None = None
    usage_sum: dict[str, int] = {}
    failed: str | None = None
    last_error: str | None = None
    denials: list[str] = []
    completed = seen = False
    for obj in objects_reversed(text):
        kind = obj.get("type")
        if kind in ("thread.started", "turn.started", "item.started", "item.updated"):
            seen = True
        elif kind == "item.completed":
            seen = True
            item = as_dict(obj.get("item"))
            item_type = item.get("type")
            if item_type in ("agent_message", "assistant_message"):
                if answer is None:
                    answer = as_text(item.get("text"))
            elif item_type == "error":
                last_error = last_error or clip(str(item.get("message") or "error"))
            elif item_type == "file_change" and item.get("status") == "failed":
                denials.append(clip(f"file change failed: {_paths(item)}"))
            elif item_type == "command_execution" and _SANDBOX_DENIED in str(
                item.get("aggregated_output") or ""
            ):
                denials.append(clip(f"sandbox refused a write: {item.get('command')}"))
        elif kind == "turn.completed":
            seen = completed = True
            for key, value in as_dict(obj.get("usage")).items():
                if (n := integer(value)) is not None:
                    name = key.removesuffix("_tokens")
                    usage_sum[name] = usage_sum.get(name, 0) + n
        elif kind == "turn.failed":
            seen = True
            err = obj.get("error")
            detail = err.get("message") if isinstance(err, dict) else err
            failed = failed or clip(str(detail or "turn failed"))
        elif kind == "error":
            seen = True
            last_error = last_error or clip(str(obj.get("message") or "error"))
    if not seen:
        return None
    denials.reverse()  # read last first
    rejected = (
        list(dict.fromkeys(clip(m["what"]) for m in _REJECTED_RE.finditer(text)))
        if "patch rejected:" in text
        else []
    )
    error = failed or (last_error if not completed else None)
    cls: str | None = None
    if error:
        message: str | None = f"codex reported an error: {error}"
        # "unexpected status 401 Unauthorized", "exceeded retry limit, last status: 429
        # Too Many Requests", "We're currently experiencing high demand" (its 5xx text).
        cls = "auth" if _MISSING_KEY in error else classify_text(error)
    elif rejected:
        message = "codex rejected the agent's edit: " + "; ".join(rejected[:3])
    else:
        message = None
    return Envelope(
        "codex",
        answer or "",
        None,
        usage_sum or None,
        message,
        tuple(rejected) + tuple(denials),
        error_class=cls,
        retry_after_s=retry_after(error) if cls in ("rate_limit", "overloaded") and error else None,
    )


AGENT = Agent(
    name="codex",
    head=(
        "codex",
        "exec",
        "--sandbox",
        "workspace-write",
        "--json",
        "-c",
        "analytics.enabled=false",
    ),
    tail=("-",),
    unwrap=unwrap,
)
