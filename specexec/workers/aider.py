"""Aider (tested: aider-chat 0.86.2; see tests/conformance/FINDINGS_aider.md).

``aider --yes-always --no-auto-commits --no-gitignore --no-pretty --no-stream
--no-fancy-input --no-check-update --analytics-disable --no-show-release-notes [args]
--message-file {prompt_file}``; stdin is /dev/null, the working directory the worktree.

- ``--message-file``: run the one message (the prompt file lives in the run folder, outside
  the worktree; aider does not add it to the chat), apply the edits, exit.
- ``--yes-always``: answer aider's questions (create the file? edit a file not in the
  chat? fix the lint errors?) with yes. It still runs no shell command the model suggests
  (those need an explicit yes). It also says yes to every "open this URL?", hence
  ``BROWSER`` below, and to the analytics opt-in and the release notes of a first run
  (every fresh HOME), hence the next two flags.
- ``--analytics-disable``: no analytics (posthog), never asked. ``--no-show-release-notes``:
  a first run otherwise opens the release notes in a browser. ``--no-check-update``: no
  PyPI version check.
- ``--no-auto-commits``: specexec commits; it also turns off aider's "dirty commits" (a
  commit of a file about to be edited again). Aider still ``git add``s the files it
  creates; specexec resets the result file and the ``leaves`` to the base before cleaning.
- ``--no-gitignore``: otherwise aider adds ``.aider*`` to the task's ``.gitignore``. (Do not
  exclude the result file either: aider refuses to edit an ignored path.)
- ``--no-pretty``/``--no-fancy-input``: a plain log; no prompt_toolkit on a stdin that is
  not a terminal ("Input is not a terminal" on stderr).
- ``--no-stream``: the ``Tokens:`` line then holds the usage the server reported (when
  streaming, aider counts with a local tokenizer: an estimate).

Environment defaults (the user's own values win): ``LITELLM_LOCAL_MODEL_COST_MAP=True``
(litellm otherwise downloads its price list from GitHub on import) and ``BROWSER=true``
(what ``--yes-always`` "opens": the URLs in API errors and model warnings). Not changed:
aider downloads litellm's price list itself for a model missing from
``~/.aider.model.metadata.json`` (no flag; the metadata file is the user's setup), and its
retries of 429/5xx/connection errors (about a minute, hard-coded; each attempt also retried
twice by the openai client unless the user's ``.aider.model.settings.yml`` says
``max_retries: 0``): not absurd for a real endpoint, and specexec's task timeout bounds it.
Aider needs a model (``--model`` in the worker's args, ``AIDER_MODEL``, ``.aider.conf.yml``)
or a provider key in the environment: with neither, ``--yes-always`` accepts its OpenRouter
login and it waits 5 minutes for a browser callback. It also needs a git identity in git's
config (``user.name``/``user.email``; the ``GIT_AUTHOR_*`` variables do not count): without
one it writes a placeholder ("Your Name") into the repository's shared ``.git/config``, and
aider processes starting side by side race for its lock (one crashes; ``unwrap`` says why).
The plugin sets none: ``GIT_CONFIG_COUNT`` would override the user's own identity.

Error classes (``Envelope.error_class``), from the litellm exception aider gave up on:
``RateLimitError`` -> ``rate_limit``; ``AuthenticationError`` (and no model and no key) ->
``auth``; ``InternalServerError``, ``ServiceUnavailableError``, ``BadGatewayError``,
``APIConnectionError``, ``Timeout`` -> ``overloaded``; the generic ``APIError`` by the status
in its text; everything else (a bad request, a context window, a refused or malformed
edit, lint errors) stays ``agent_error``. Aider prints no retry-after; the wait
(``retry_after_s``) is the provider's own "try again in 1.5s" when its message holds one.
A rate limit or overload aider recovered from itself (``Retrying in`` after it) is no
error at all.

Aider exits 0 after an API error, a rejected edit or a refused path too, so ``unwrap``
reads them from its output (stdout; stderr stays empty), see ``unwrap``. It writes
``.aider.chat.history.md`` and ``.aider.tags.cache.v4/`` (repo map) into the worktree:
``leaves``. The result goes only into the result file (``answer_block=False``): in the
``whole`` edit format, which aider uses for models it does not know, every fenced block is
a file listing, so a ```json block in the answer makes aider reject the whole reply.
"""

from __future__ import annotations

import re

from specexec.workers.agent import Agent, Envelope, classify_text, clip, retry_after

# One line per model call: "Tokens: 2.3k sent, 1.1k cache write, 2k cache hit, 150 received."
# then " Cost: $0.01 message, $0.015 session." (on a line of its own when both cache parts
# are there; missing for a model without prices). Numbers of 1000 and more are rounded.
_TOKENS_RE = re.compile(r"^Tokens: (?P<parts>[^\n]*? received)\.", re.M)
_PART_RE = re.compile(r"([\d.,]+)([kKmM]?) (sent|received|cache write|cache hit)\b")
_COST_RE = re.compile(
    r"(?:^|received\.\s)Cost: \$([\d.,]+)\s+message,\s+\$([\d.,]+)\s+session\.", re.M
)

# What aider prints when it stops without doing the job (it still exits 0). They are read
# only where aider's own output is: after the last Tokens: line (the last reply comes before
# it, so no file content the model wrote can match), or, for refused edits, after the
# first Tokens: line (the first reply, the one that usually carries the files, is before it).

# An API error line, with its wrapped continuation and aider's explanation of it.
_API_ERROR_RE = re.compile(
    r"^litellm\.[\w.]+:[^\n]*(?:\n(?!\n|Retrying in |litellm\.)[^\n]*)*", re.M
)
_RETRYING_RE = re.compile(r"^Retrying in [\d.]+ seconds\.\.\.$", re.M)
_REFLECTIONS_RE = re.compile(r"^Only (?P<n>\d+) reflections allowed, stopping\.$", re.M)
_NOT_CONFORM_RE = re.compile(
    r"^The LLM did not conform to the edit format\.\n(?:https?://\S+\n)?\s*(?P<why>[^\n]*)", re.M
)
_LINT_RE = re.compile(r"^# Fix any errors below, if possible\.$", re.M)
_STOPPED_RE = re.compile(
    r"^(?P<line>Model \S+ has hit a token limit!"
    r"|Empty response received from LLM\. Check your provider account\?"
    r"|No LLM model was specified and no API keys were provided\."
    r"|OpenRouter authentication did not complete successfully\.)$",
    re.M,
)
_TRACEBACK_RE = re.compile(r"^Traceback \(most recent call last\):$", re.M)
# An uncaught exception: aider prints a bug report, then (stdin is /dev/null) exits 1.
_CRASH_RE = re.compile(r"^# Uncaught (?P<exc>\w+) in \S+ line \d+$", re.M)
# Without user.name/user.email in git's config (identity variables do not count) aider
# writes "Your Name" into the repository's shared .git/config; two aider processes starting
# together race for its lock, and one crashes.
_CONFIG_LOCK_RE = re.compile(
    r"^OSError: Lock for file '(?P<path>[^'\n]*config)' did already exist", re.M
)
# Edits aider did not apply although the reply was well formed (paths may wrap at 80
# columns, hence \s+).
_REFUSED_RE = re.compile(
    r"^(?:Skipping edits to (?P<ignored>[^\n]+?)\s+that\s+matches\s+gitignore\s+spec\."
    r"|Unable to create (?P<uncreated>[^\n]+?),\s+skipping\s+edits\."
    r"|Skipping edits to (?P<skipped>[^\n]+)$"
    r"|(?P<git>Cmd\('git'\) failed due to:[^\n]*(?:\n(?!\n)[^\n]*)*)"
    r"|(?P<exc>Exception while updating files:\n[^\n]*))",
    re.M,
)


# The class of the litellm exception aider gave up on (aider/exceptions.py lists them all);
# the rest (BadRequestError, NotFoundError, ContextWindowExceededError, ...) are errors of the
# request, not of the service: agent_error.
_EXCEPTION_CLASS = {
    "RateLimitError": "rate_limit",
    "RouterRateLimitError": "rate_limit",
    "AuthenticationError": "auth",
    "PermissionDeniedError": "auth",
    "InternalServerError": "overloaded",
    "ServiceUnavailableError": "overloaded",
    "BadGatewayError": "overloaded",
    "APIConnectionError": "overloaded",  # connection refused or reset
    "Timeout": "overloaded",  # the provider did not answer in time
}
# Exceptions that wrap whatever the provider said: classified by their text (a status in it).
_GENERIC = frozenset({"APIError", "OpenAIError", "AzureOpenAIError", "APIResponseValidationError"})
_EXCEPTION_RE = re.compile(r"^litellm\.(?P<name>\w+):")
# The provider's own wait, in its message (OpenAI: "Please try again in 1.5s", "in 20ms",
# "in 7m12s"); aider prints no retry-after header.
_TRY_AGAIN_RE = re.compile(
    r"try again in (?:(?P<h>\d+)h)?(?:(?P<m>\d+)m(?!s))?(?:(?P<s>\d+(?:\.\d+)?)s|(?P<ms>\d+)ms)?",
    re.I,
)
# No model and no key: every task of this worker stops the same way.
_NO_CREDENTIALS = (
    "No LLM model was specified and no API keys were provided.",
    "OpenRouter authentication did not complete successfully.",
)


def _stated_wait(line: str) -> float | None:
    m = _TRY_AGAIN_RE.search(line)
    if m is not None and any(m.group(g) for g in ("h", "m", "s", "ms")):
        return (
            int(m["h"] or 0) * 3600
            + int(m["m"] or 0) * 60
            + float(m["s"] or 0)
            + int(m["ms"] or 0) / 1000
        )
    return retry_after(line)


def _error_class(tail: str) -> tuple[str | None, float | None]:
    """(class, stated wait) of what made aider give up, from its output after the last
    reply: the final litellm exception it did not retry (or retried in vain), or a missing
    model and key."""
    api = list(_API_ERROR_RE.finditer(tail))
    if api and not _RETRYING_RE.search(tail, api[-1].end()):
        line = " ".join(api[-1].group(0).split())
        m = _EXCEPTION_RE.match(line)
        name = m["name"] if m else ""
        cls = _EXCEPTION_CLASS.get(name) or (classify_text(line) if name in _GENERIC else None)
        return cls, _stated_wait(line) if cls in ("rate_limit", "overloaded") else None
    if any(line in tail for line in _NO_CREDENTIALS):
        return "auth", None
    return None, None


def _count(number: str, suffix: str) -> int:
    value = float(number.replace(",", ""))
    return round(value * {"": 1, "k": 1_000, "m": 1_000_000}[suffix.lower()])


def _tokens(text: str) -> dict[str, int] | None:
    names = {"sent": "input", "received": "output", "cache write": "cache_write"}
    counted: dict[str, int] = {}
    for line in _TOKENS_RE.finditer(text):
        for number, suffix, what in _PART_RE.findall(line["parts"]):
            try:
                n = _count(number, suffix)
            except ValueError:
                continue
            name = names.get(what, "cache_hit")
            counted[name] = counted.get(name, 0) + n
    return counted or None


def _cost(text: str) -> float | None:
    costs = _COST_RE.findall(text)
    if not costs:
        return None
    try:
        return float(costs[-1][1].replace(",", ""))  # the session total, on the last line
    except ValueError:
        return None


def _refused(text: str) -> tuple[list[str], list[str]]:
    """(denials, error texts) for the edits aider refused to apply."""
    denials: list[str] = []
    errors: list[str] = []
    for m in _REFUSED_RE.finditer(text):
        if m["ignored"]:
            denials.append(f"edit {m['ignored']}")
            errors.append(f"aider skipped the edit to {m['ignored']} (it matches .gitignore)")
        elif m["uncreated"]:
            denials.append(f"edit {m['uncreated']}")
            errors.append(f"aider could not create {m['uncreated']} and skipped its edits")
        elif m["skipped"]:
            denials.append(f"edit {m['skipped']}")
            errors.append(f"aider skipped the edit to {m['skipped']}")
        elif m["git"]:
            # The line before is the path aider was confirming ("create new file?"), e.g.
            # one outside the worktree: its `git add` fails and no edit is applied at all.
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            path = before if before and not any(c.isspace() for c in before) else None
            denials.append(f"edit {path}" if path else "edits (git failed)")
            where = f" to {path}" if path else ""
            errors.append(
                f"git failed while aider applied the edits{where} (none was applied): "
                + " ".join(m["git"].split())
            )
        elif m["exc"]:
            errors.append("aider failed while applying the edits: " + m["exc"].split("\n", 1)[1])
    return list(dict.fromkeys(denials)), errors


def _stopped(tail: str) -> list[str]:
    """Why aider stopped without finishing, from its output after the last reply."""
    errors: list[str] = []
    reflections = _REFLECTIONS_RE.search(tail)
    not_conform = list(_NOT_CONFORM_RE.finditer(tail))
    if reflections:
        if not_conform:
            why = f"the LLM did not conform to the edit format: {not_conform[-1]['why']}"
        elif _LINT_RE.search(tail):
            why = "lint errors are left in the edited files"
        else:
            why = "the last reply still needed a follow-up"
        errors.append(f"aider stopped after {reflections['n']} reflections ({why})")
    elif not_conform:
        errors.append(f"the LLM did not conform to the edit format: {not_conform[-1]['why']}")
    api = list(_API_ERROR_RE.finditer(tail))
    if api and not _RETRYING_RE.search(tail, api[-1].end()):
        errors.append(" ".join(api[-1].group(0).split()))  # the final one, not retried
    errors.extend(m["line"] for m in _STOPPED_RE.finditer(tail))
    lock = _CONFIG_LOCK_RE.search(tail)
    if lock:
        errors.append(
            f"aider could not lock {lock['path']} (another aider was writing the placeholder "
            "git identity it adds when git has no user.name/user.email: set them in git's "
            "config)"
        )
    elif not errors and (_CRASH_RE.search(tail) or _TRACEBACK_RE.search(tail)):
        last = [line for line in tail.splitlines() if line.strip()][-1]
        errors.append(f"aider stopped on an exception: {last.strip()}")
    return errors


def unwrap(text: str) -> Envelope | None:
    """Aider's plain-text output: tokens summed over its ``Tokens:`` lines, the session
    cost of the last one, and ``error`` when aider gave up (an API error it did not retry or
    retried in vain, reflections used up on a malformed edit or lint errors, a token limit,
    no model) or did not apply an edit of a well-formed reply (a path it cannot create, e.g.
    in ``.git/``; an ignored path; a git failure, e.g. a path outside the worktree), which
    are also ``denials``. None when nothing in ``text`` is aider's."""
    lines = list(_TOKENS_RE.finditer(text))
    tail = text[lines[-1].end() :] if lines else text
    after_first = text[lines[0].end() :] if lines else ""
    denials, refused = _refused(after_first)
    errors = _stopped(tail) + refused
    error = f"aider reported an error: {clip('; '.join(dict.fromkeys(errors)))}" if errors else None
    counted, cost = _tokens(text), _cost(text)
    if not counted and cost is None and error is None:
        return None
    # A refused edit, a malformed reply, lint errors left: no class (agent_error).
    cls, wait = _error_class(tail) if error is not None else (None, None)
    return Envelope(
        "aider", text, cost, counted, error, tuple(denials), error_class=cls, retry_after_s=wait
    )


AGENT = Agent(
    name="aider",
    head=(
        "aider",
        "--yes-always",
        "--no-auto-commits",
        "--no-gitignore",
        "--no-pretty",
        "--no-stream",
        "--no-fancy-input",
        "--no-check-update",
        "--analytics-disable",
        "--no-show-release-notes",
    ),
    tail=("--message-file", "{prompt_file}"),
    stdin_prompt=False,
    env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "BROWSER": "true"},
    leaves=(":(glob).aider*", ":(glob).aider*/**"),
    answer_block=False,
    unwrap=unwrap,
)
