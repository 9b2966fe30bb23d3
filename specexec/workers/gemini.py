"""Gemini CLI (tested: @google/gemini-cli 0.61.0).

``gemini --output-format json --approval-mode auto_edit --skip-trust [args]``, prompt on
stdin (no TTY and no ``-p``: headless).

- ``--output-format json``: ``{"response": ..., "stats": {...}}`` on stdout; errors are a
  ``{"error": {...}}`` object on stderr (which goes to the same log) with exit codes such
  as 41, 55 or 145.
- ``auto_edit``: edits approved, shell commands not.
- ``--skip-trust``: a fresh worktree is an untrusted folder, where Gemini CLI overrides the
  approval mode and then exits 55.
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

_KEYS = frozenset({"response", "stats", "error", "session_id"})


def unwrap(text: str) -> Envelope | None:
    for obj in objects_reversed(text):
        err_obj = obj.get("error")
        is_error = isinstance(err_obj, dict) and "message" in err_obj and set(obj) <= _KEYS
        if "response" not in obj and not is_error:
            continue
        answer = obj.get("response")
        counted: dict[str, int] = {}
        models = as_dict(as_dict(obj.get("stats")).get("models"))
        for model in models.values():
            # "prompt" is the input as sent and "input" the part not served from the cache:
            # counting both would count the input twice.
            for key, name in (
                ("prompt", "input"),
                ("candidates", "output"),
                ("cached", "cache_read"),
                ("total", "total"),
            ):
                if (n := integer(as_dict(as_dict(model).get("tokens")).get(key))) is not None:
                    counted[name] = counted.get(name, 0) + n
        error = None
        if err_obj:
            message = err_obj.get("message") if isinstance(err_obj, dict) else err_obj
            error = f"gemini reported an error: {clip(str(message))}"
        return Envelope("gemini", as_text(answer) or "", None, counted or None, error)
    return None


AGENT = Agent(
    name="gemini",
    head=("gemini", "--output-format", "json", "--approval-mode", "auto_edit", "--skip-trust"),
    unwrap=unwrap,
)
