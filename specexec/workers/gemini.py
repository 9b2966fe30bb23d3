"""Gemini CLI (tested: @google/gemini-cli 0.61.0; tests/conformance/FINDINGS_gemini.md).

``gemini --output-format json --approval-mode auto_edit --skip-trust [args]``, prompt on
stdin (no TTY and no ``-p``: headless mode reads stdin).

- ``--output-format json``: on success one pretty-printed
  ``{"session_id", "response", "stats"}`` object on stdout (exit 0, also when the model
  reports ``fail``). On errors stdout is empty and stderr (which goes to the same log)
  holds log lines and stack traces, then a pretty-printed ``{"session_id", "error":
  {"type", "message", "code"}}`` object. The exit code is ``error.code`` modulo 256 (HTTP
  401 -> 145, 429 -> 173, 500 -> 244; 41 = no usable auth type); for an HTTP error
  ``message`` is the raw error body, itself JSON.
- ``auto_edit``: ``write_file`` and ``replace`` run without asking; shell commands are not
  offered. The workspace is the worktree: a write outside it or into ``.git/`` is refused,
  yet the CLI exits 0 and only logs ``Error executing tool write_file: Path not in
  workspace: ...`` on stderr and counts it in ``stats.tools.byName.<tool>.fail``. A failed
  or rejected ``write_file``/``replace`` is therefore an ``error`` here (the task fails,
  whatever the model then claims). This is strict: a ``replace`` whose old text was not
  found fails the task too, even if the model then retried it successfully. A failed read
  or search is normal and ignored.
- ``--skip-trust``: a fresh worktree is an untrusted folder, where Gemini CLI overrides the
  approval mode and exits 55 before any model call (``GEMINI_CLI_TRUST_WORKSPACE=true``
  does the same).

Error classes (``Envelope.error_class``), from the HTTP status (``error.code``, or the code
in the raw body of ``message``): 429 -> ``rate_limit``; 401/403 and the CLI's own exit 41
(no usable auth type, an expired login) -> ``auth``; 5xx, 408, 499 and a dropped connection
(exit 1, ``fetch failed``) -> ``overloaded``; other 4xx (a wrong model, a bad request) and a
refused edit stay ``agent_error``; else the message's words (``classify_text``). The wait
(``retry_after_s``) is the one the CLI read from the API error: the RetryInfo delay
(``Suggested retry after 30s.`` in the message, ``retryDelayMs: 30000`` in the error object
it logs on stderr) or ``Please retry in 12.5s``; the HTTP ``retry-after`` header is ignored by
the CLI and never printed.

Tokens (``stats.models.<model>.tokens``, summed over the models: with model "auto" the
router's classifier call is a model of its own): ``prompt`` -> input (it includes the
cached part; ``input`` is ``prompt - cached``, so it is never added on top),
``candidates`` -> output, ``thoughts`` under its own name, ``cached`` -> cache_read.
``total`` is their sum and is dropped; ``roles.*`` split the same numbers again. No cost is
reported.

Environment: no defaults are set. What keeps the CLI offline lives only in
``~/.gemini/settings.json`` (or ``$GEMINI_CLI_HOME/.gemini``), which a plugin cannot set:
``privacy.usageStatisticsEnabled: false`` (else usage statistics go to
play.googleapis.com; no environment variable replaces it, and a system-defaults file named
by ``GEMINI_CLI_SYSTEM_DEFAULTS_PATH`` is only read when root owns it and every folder
above it, none writable by group or others, so a plugin cannot ship one), and
``security.auth.selectedType: "gemini-api-key"`` for a ``GOOGLE_GEMINI_BASE_URL`` endpoint
(else exit 41). Telemetry is off by default and no update check runs headless. Retries are
left at the CLI's defaults (``general.maxAttempts``: 10 tries with 5-30 s backoff for 429
and 5xx, about 5 minutes when every try fails; a 401 is not retried): bounding them would
hurt real users on a transient quota error. The CLI writes nothing into the worktree (sessions go to
``~/.gemini/tmp/<project>/``, error reports to ``$TMPDIR``), so ``leaves`` is empty.
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
    loads,
    objects_reversed,
    retry_after,
)

_KEYS = frozenset({"response", "stats", "error", "session_id"})
# The tools that change files; their failures are refused or rejected edits.
EDIT_TOOLS = ("write_file", "replace")
_TOOL_ERROR_RE = re.compile(r"^Error executing tool (?P<tool>\w+): (?P<detail>.*)$", re.M)
_ATTEMPTED_PATH_RE = re.compile(r'Attempted path "(?P<path>[^"]*)"')
_UNTRUSTED = "Gemini CLI is not running in a trusted directory"

# stats.models.<model>.tokens field -> the name specexec records.
_TOKENS = (
    ("prompt", "input"),
    ("candidates", "output"),
    ("thoughts", "thoughts"),
    ("cached", "cache_read"),
)


def _is_envelope(obj: dict[str, Any]) -> bool:
    if not (set(obj) <= _KEYS or "session_id" in obj):
        return False
    err = obj.get("error")
    return "response" in obj or "stats" in obj or (isinstance(err, dict) and "message" in err)


def _tokens(stats: dict[str, Any]) -> dict[str, int] | None:
    counted: dict[str, int] = {}
    for model in as_dict(stats.get("models")).values():
        t = as_dict(as_dict(model).get("tokens"))
        if integer(t.get("prompt")) is None and integer(t.get("input")) is not None:
            # Not seen in 0.61: the uncached input alone, with the cached part beside it.
            t = {**t, "prompt": (integer(t.get("input")) or 0) + (integer(t.get("cached")) or 0)}
        for key, name in _TOKENS:
            if (n := integer(t.get(key))) is not None:
                counted[name] = counted.get(name, 0) + n
    return counted or None


def _api_error(err: Any) -> str:
    """``error.message``; an HTTP error's message is the raw body, itself JSON."""
    if not isinstance(err, dict):
        return clip(str(err))
    message = str(err.get("message") or err.get("type") or "error")
    try:
        body = loads(message)
    except ValueError:
        body = None
    inner = as_dict(as_dict(body).get("error"))
    if inner.get("message"):
        code = inner.get("code", err.get("code"))
        status = " ".join(str(x) for x in (code, inner.get("status")) if x)
        message = f"{inner['message']} (HTTP {status})" if status else str(inner["message"])
    return clip(message)


# Exit codes of the CLI's own fatal errors that name a class (FatalAuthenticationError: no
# usable auth type, an expired or missing login).
_AUTH_EXIT = 41
# The waits the CLI reads from a Google API error (classifyGoogleError): the RetryInfo
# detail ("Suggested retry after 30s." in the message), a "Please retry in 12.5s" in the
# message, and the retryDelayMs of the error object it logs on stderr.
_WAIT_RES = (
    re.compile(r"Suggested retry after (?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s)\b"),
    re.compile(r"Please retry in (?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s)\b"),
    re.compile(r"\bretryDelayMs: (?P<n>\d+(?:\.\d+)?)(?P<unit>)\b"),
)
# A connection dropped mid-response (exit 1): what the CLI says instead of an HTTP status.
_CONNECTION_RE = re.compile(
    r"fetch failed|ECONNRESET|ECONNREFUSED|socket hang up|TypeError: terminated"
)


def _stated_wait(text: str) -> float | None:
    for pattern in _WAIT_RES:
        found = [m for m in pattern.finditer(text)]
        if found:
            m = found[-1]  # the final failure's, after the CLI's own retries
            n = float(m["n"])
            return n / 1000 if m["unit"] in ("ms", "") else n
    return retry_after(text)


def _status(err: Any) -> int | None:
    """The HTTP status of the failed call: ``error.code`` (the exit code too), or the code
    inside the raw error body that ``message`` holds."""
    if not isinstance(err, dict):
        return None
    code = integer(err.get("code"))
    try:
        body = loads(str(err.get("message") or ""))
    except ValueError:
        body = None
    inner = integer(as_dict(as_dict(body).get("error")).get("code"))
    return inner if inner is not None and (code is None or code < 100) else code


def _error_class(err: Any, message: str, text: str) -> tuple[str | None, float | None]:
    """(class, seconds to wait) of the error object the CLI printed; ``text`` is the whole
    output (the logged error objects on stderr hold the stated retry delay)."""
    status = _status(err)
    if status == 429:
        return "rate_limit", _stated_wait(text)
    if status in (401, 403) or status == _AUTH_EXIT:
        return "auth", None
    if status is not None and (status >= 500 or status in (408, 499)):
        return "overloaded", _stated_wait(text)
    if status is not None and status >= 400:
        return None, None  # 400, 404 (model not found): the request is wrong, not the API
    if _CONNECTION_RE.search(message):
        return "overloaded", None
    cls = classify_text(message)
    return cls, _stated_wait(text) if cls in ("rate_limit", "overloaded") else None


def _failed_edits(stats: dict[str, Any], text: str) -> tuple[str | None, tuple[str, ...]]:
    """(the error naming the failed or rejected edit tool calls, the refused paths)."""
    by_name = as_dict(as_dict(stats.get("tools")).get("byName"))
    counts = []
    for tool in EDIT_TOOLS:
        entry = as_dict(by_name.get(tool))
        n = max(
            integer(entry.get("fail")) or 0,
            integer(as_dict(entry.get("decisions")).get("reject")) or 0,
        )
        if n:
            counts.append(f"{tool} failed {n}x" if n > 1 else f"{tool} failed")
    details = [m for m in _TOOL_ERROR_RE.finditer(text) if m["tool"] in EDIT_TOOLS]
    if not counts and not details:
        return None, ()
    # Refused by the workspace check (outside the worktree, or into .git/): denials.
    denials = [
        f"{m['tool']} {path['path']}"
        for m in details
        if (path := _ATTEMPTED_PATH_RE.search(m["detail"]))
    ]
    what = ", ".join(counts) or f"{details[0]['tool']} failed"
    why = f": {details[0]['detail']}" if details else ""
    return clip(f"gemini rejected an edit ({what}){why}"), tuple(dict.fromkeys(denials))


def unwrap(text: str) -> Envelope | None:
    for obj in objects_reversed(text):
        if not _is_envelope(obj):
            continue
        stats = as_dict(obj.get("stats"))
        error = None
        cls: str | None = None
        wait: float | None = None
        if obj.get("error"):
            message = _api_error(obj["error"])
            error = f"gemini reported an error: {message}"
            cls, wait = _error_class(obj["error"], message, text)
        edit_error, denials = _failed_edits(stats, text)
        error = error or edit_error  # a refused edit stays agent_error (no class)
        answer = as_text(obj.get("response")) or ""
        return Envelope(
            "gemini",
            answer,
            None,
            _tokens(stats),
            error,
            denials,
            error_class=cls,
            retry_after_s=wait,
        )
    if _UNTRUSTED in text:  # plain text, exit 55 (without --skip-trust)
        line = next(ln for ln in text.splitlines() if _UNTRUSTED in ln)
        return Envelope("gemini", "", error=f"gemini refused to run: {clip(line)}")
    return None


AGENT = Agent(
    name="gemini",
    head=("gemini", "--output-format", "json", "--approval-mode", "auto_edit", "--skip-trust"),
    unwrap=unwrap,
)
