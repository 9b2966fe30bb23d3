"""Aider (tested: aider-chat 0.86.2).

``aider --yes-always --no-auto-commits --no-gitignore --no-pretty --no-stream
--no-check-update --analytics-disable [args] --message-file {prompt_file}``; stdin is
/dev/null.

- ``--message-file``: run one message, then exit. ``--yes-always``: answer its questions
  (it still runs no shell command unasked). ``--analytics-disable``: otherwise
  ``--yes-always`` also says yes to the analytics opt-in.
- ``--no-auto-commits``: specexec commits. ``--no-gitignore``: do not add ``.aider*`` to
  the task's ``.gitignore``. ``--no-pretty``/``--no-stream``: a plain log.
- Aider exits 0 when the API call fails and when it rejects the model's edit, so both are
  read from its output. It writes ``.aider*`` files (chat and input history, tag cache)
  into the worktree: never the task's change.
"""

from __future__ import annotations

import re

from specexec.workers.agent import Agent, Envelope, clip

_TOKENS_RE = re.compile(r"^Tokens:\s*(.+?)\.\s*(?:Cost:|$)", re.M)
_PART_RE = re.compile(r"([\d.,]+)\s*([kKmM]?)\s+(sent|received|cache write|cache hit)")
_COST_RE = re.compile(r"Cost:\s*\$([\d.,]+)\s*message,\s*\$([\d.,]+)\s*session")
# Lines with which aider reports a failure it then exits 0 after.
_ERROR_RE = re.compile(
    r"^(?P<line>(?:litellm\.\w+(?:Error|Exception)\b.*"
    r"|.*did not conform to the edit format.*"
    r"|The LLM did not conform.*"
    r"|Model \S+ has hit a token limit.*"
    r"|Unable to (?:list|find|edit|write).*"
    r"|Error: .*))$",
    re.M,
)


def _count(number: str, suffix: str) -> int:
    value = float(number.replace(",", ""))
    return round(value * {"": 1, "k": 1_000, "m": 1_000_000}[suffix.lower()])


def unwrap(text: str) -> Envelope | None:
    names = {"sent": "input", "received": "output", "cache write": "cache_write"}
    counted: dict[str, int] = {}
    for line in _TOKENS_RE.finditer(text):
        for number, suffix, what in _PART_RE.findall(line.group(1)):
            try:
                n = _count(number, suffix)
            except ValueError:
                continue
            name = names.get(what, "cache_hit")
            counted[name] = counted.get(name, 0) + n
    cost = None
    costs = _COST_RE.findall(text)
    if costs:
        try:
            cost = float(costs[-1][1].replace(",", ""))  # the session total
        except ValueError:
            cost = None
    errors = [m["line"] for m in _ERROR_RE.finditer(text)]
    error = f"aider reported an error: {clip(errors[-1])}" if errors else None
    if not counted and cost is None and error is None:
        return None
    return Envelope("aider", text, cost, counted or None, error)


AGENT = Agent(
    name="aider",
    head=(
        "aider",
        "--yes-always",
        "--no-auto-commits",
        "--no-gitignore",
        "--no-pretty",
        "--no-stream",
        "--no-check-update",
        "--analytics-disable",
    ),
    tail=("--message-file", "{prompt_file}"),
    stdin_prompt=False,
    leaves=(":(glob).aider*", ":(glob).aider*/**"),
    unwrap=unwrap,
)
