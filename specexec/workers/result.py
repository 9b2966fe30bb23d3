"""Reading what a worker reported (DESIGN §3.5).

Where the result comes from, first match wins:

1. ``result_file`` ($SPECEXEC_RESULT_FILE), if the worker wrote it (an empty file counts as
   not written). Trusted even when the exit code is non-zero (a note says so): writing it
   is a deliberate act. It is read with jsonio.loads (no duplicate keys, NaN, BOM or
   nesting over 64). Invalid JSON, a non-object, or an unreadable / symlinked / FIFO /
   huge file -> ``fail`` with a blocker saying so.
2. The output (the latest attempt in the log, at most its last LOG_TAIL_BYTES): the agent
   CLI's own envelope is unwrapped first (Claude Code JSON, Codex JSONL events, Gemini CLI
   JSON, Aider's text), then the last fenced ```json block holding an object with a
   "status", else the last line that is a JSON object with a "status".
3. The exit code: 0 = pass, anything else (or none: killed, not started) = fail.

Fail-safe rules: a result found in the *output* that says ``pass`` while the exit code is
not 0 (or the agent CLI reported an error) becomes ``fail``. An unknown or missing status is
``fail`` with a blocker naming it. Cost and token figures from the envelope are kept
whichever source the result came from.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from specexec.errors import InvalidInput
from specexec.run.processes import ATTEMPT_FOOTER, ATTEMPT_HEADER
from specexec.tasksfile import jsonio
from specexec.workers.agent import (
    Envelope,
    as_text,
    classify_text,
    clip,
    integer,
    loads,
    number,
    retry_after,
)
from specexec.workers.registry import AGENTS

ResultStatus = Literal["pass", "fail", "blocked"]
Source = Literal["result_file", "output", "exit_code"]
RESULT_STATUSES: tuple[ResultStatus, ...] = ("pass", "fail", "blocked")

LOG_TAIL_BYTES = 4 * 1024 * 1024
RESULT_FILE_MAX_BYTES = 4 * 1024 * 1024
_MAX_LINE_IN_BLOCKER = 200


@dataclass(frozen=True, slots=True)
class WorkerResult:
    status: ResultStatus
    files_modified: tuple[str, ...] = ()
    files_created: tuple[str, ...] = ()
    test_results: Mapping[str, int] | None = None  # {ran, passed, failed}
    blocker: str | None = None
    notes: str | None = None
    data: list[Any] | None = None
    duration_minutes: float | None = None
    cost_usd: float | None = None
    tokens: Mapping[str, int] | None = None  # {input, output, ...}
    denials: tuple[str, ...] = ()  # tool calls the agent CLI refused the agent
    source: Source = "exit_code"
    # A failure's class as the output tells it (one of agent.ERROR_CLASSES: the plugin's
    # reading, or classify_text on a shell worker's last lines), and the wait it stated.
    error_class: str | None = None
    retry_after_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as reported

    def to_json(self) -> dict[str, Any]:
        """The ``result`` object specexec records in tasks.json (None fields left out)."""
        out: dict[str, Any] = {"status": self.status, "source": self.source}
        if self.files_modified:
            out["files_modified"] = list(self.files_modified)
        if self.files_created:
            out["files_created"] = list(self.files_created)
        for key in ("test_results", "tokens"):
            value = getattr(self, key)
            if value is not None:
                out[key] = dict(value)
        if self.denials:
            out["denials"] = list(self.denials)
        for key in ("blocker", "notes", "data", "duration_minutes", "cost_usd"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


# --------------------------------------------------------------------------- helpers

_loads = loads
_number = number
_int = integer
_text = as_text
_clip = clip


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def read_log_tail(log_path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The latest attempt's output: at most the last ``max_bytes`` of the log, starting
    after the last attempt header, without specexec's own end line."""
    try:
        fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        # One read of what is there: a buffered read of max_bytes maps that much per task.
        size = os.fstat(fd).st_size
        length = min(size, max_bytes)
        data = os.pread(fd, length, size - length)
    except OSError:
        return ""
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    start = text.rfind("\n" + ATTEMPT_HEADER)
    if start >= 0:
        start += 1
    elif text.startswith(ATTEMPT_HEADER):
        start = 0
    if start >= 0:
        eol = text.find("\n", start)
        text = "" if eol < 0 else text[eol + 1 :]
    end = text.rfind(ATTEMPT_FOOTER)
    if end >= 0 and (end == 0 or text[end - 1] == "\n"):
        text = text[:end]
    return text


def _last_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if line.strip():
            return _clip(line.strip())
    return None


# --------------------------------------------------------------------------- finding JSON

_FENCE_RE = re.compile(r"```json[ \t]*\r?\n(.*?)\r?\n[ \t]*```", re.S | re.I)


def find_result_object(text: str) -> dict[str, Any] | None:
    """The last fenced ```json block holding an object with "status", else the last line
    that is such an object."""
    found: dict[str, Any] | None = None
    for m in _FENCE_RE.finditer(text):
        try:
            obj = _loads(m.group(1))
        except ValueError:
            continue
        if isinstance(obj, dict) and "status" in obj:
            found = obj
    if found is not None:
        return found
    for line in reversed(text.splitlines()):
        s = line.strip()
        if s.startswith("{") and s.endswith("}") and '"status"' in s:
            try:
                obj = _loads(s)
            except ValueError:
                continue
            if isinstance(obj, dict) and "status" in obj:
                return obj
    return None


# --------------------------------------------------------------------------- envelopes


def unwrap(output: str, preset: str) -> Envelope:
    """The agent's answer inside its CLI's output. ``shell`` output is taken as it is; a
    custom command (a wrapper script, say) is tried against every agent's shapes."""
    agent = AGENTS.get(preset)
    order = [agent] if agent is not None else list(AGENTS.values())
    for a in order:
        if a.unwrap is not None and (env := a.unwrap(output)) is not None:
            return env
    return Envelope("plain", output)


# --------------------------------------------------------------------------- parsing


def _read_result_file(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None), (None, None) if not written, or (None, why it is unusable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if path.is_symlink():
            return None, f"the result file {path} is a symlink; refusing to read it"
        return None, f"cannot read the result file {path}: {exc.strerror or exc}"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, f"the result file {path} is not a regular file"
        if st.st_size > RESULT_FILE_MAX_BYTES:
            return None, (
                f"the result file {path} is {st.st_size} bytes "
                f"(more than {RESULT_FILE_MAX_BYTES}); refusing to read it"
            )
        data = f.read(RESULT_FILE_MAX_BYTES + 1)
    if not data.strip():
        return None, None
    try:
        obj = jsonio.loads(data, source=str(path))
    except InvalidInput as exc:  # "<path>:<line>:<col>: <what>"
        return None, f"the result file is not usable: {exc}"
    if not isinstance(obj, dict):
        return None, f"the result file {path} must hold a JSON object, not {type(obj).__name__}"
    return obj, None


def _test_results(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    out = {k: n for k in ("ran", "passed", "failed") if (n := _int(value.get(k))) is not None}
    return out or None


def _from_object(obj: Mapping[str, Any], source: Source, env: Envelope) -> WorkerResult:
    raw_status = obj.get("status")
    status = raw_status.strip().lower() if isinstance(raw_status, str) else None
    blocker = _text(obj.get("blocker"))
    if status not in RESULT_STATUSES:
        what = "reported no status" if raw_status is None else f"reported status {raw_status!r}"
        why = f"the worker {what} (expected pass, fail or blocked)"
        blocker = f"{why}; its blocker: {blocker}" if blocker else why
        status = "fail"
    data = obj.get("data")
    return WorkerResult(
        status=cast(ResultStatus, status),
        files_modified=_str_list(obj.get("files_modified")),
        files_created=_str_list(obj.get("files_created")),
        test_results=_test_results(obj.get("test_results")),
        blocker=blocker,
        notes=_text(obj.get("notes")),
        data=None if data is None else data if isinstance(data, list) else [data],
        duration_minutes=_number(obj.get("duration_minutes")),
        cost_usd=env.cost_usd,
        tokens=env.tokens,
        source=source,
        raw=dict(obj),
    )


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "did not exit normally (stopped or never started)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def _append(text: str | None, extra: str) -> str:
    return f"{text} ({extra})" if text else extra


def parse_result(
    result_file: Path, log_path: Path, returncode: int | None, *, preset: str
) -> WorkerResult:
    """The worker's result, from its result file, its output or its exit code."""
    output = read_log_tail(log_path)
    env = unwrap(output, preset)
    result = _decide(result_file, output, env, returncode)
    if env.denials:
        result = replace(result, denials=env.denials)
    if result.status == "fail":
        result = _classify(result, env, output, returncode)
    return result


CLASSIFY_TAIL_LINES = 20  # of a shell worker's output, searched for an API's error words
_NUMBER = re.compile(r"(?<![\w.])\d{3}(?![\w.])")
_STATUS_WORDS = re.compile(r"(?:http|status|error|code|api|returned|response)\W{0,3}$", re.I)
_FILE_DENIED = re.compile(r"permission denied", re.I)


def _shell_words(text: str) -> str:
    """A shell worker's output as classify_text may read it: a three-digit number counts
    only right after a status word ("HTTP 429", "status: 503"), so "512 passed" is no
    overload, and "Permission denied" is a file's mode, not a login."""

    def number(m: re.Match[str]) -> str:
        before = text[max(0, m.start() - 12) : m.start()]
        return m.group(0) if _STATUS_WORDS.search(before) else ""

    return _FILE_DENIED.sub("", _NUMBER.sub(number, text))


def _classify(
    result: WorkerResult, env: Envelope, output: str, returncode: int | None
) -> WorkerResult:
    """The class of a failed result, as far as the output tells it (specexec adds the
    ones it decides itself: timeout, no_change, verify_failed, ...)."""
    if env.error is not None:
        cls = env.error_class or "agent_error"
        return replace(result, error_class=cls, retry_after_s=env.retry_after_s)
    if returncode in (126, 127):  # sh: found but not executable / not found
        return replace(result, error_class="not_found")
    if returncode is not None and returncode != 0 and env.kind == "plain":
        tail = "\n".join(output.splitlines()[-CLASSIFY_TAIL_LINES:])
        named = classify_text(_shell_words(tail))
        if named is not None:
            return replace(result, error_class=named, retry_after_s=retry_after(tail))
        return replace(result, error_class="worker_failed")
    if result.source != "exit_code":
        return replace(result, error_class="agent_error")  # the worker reported it
    return replace(result, error_class="worker_failed")


def _decide(result_file: Path, output: str, env: Envelope, returncode: int | None) -> WorkerResult:

    obj, problem = _read_result_file(result_file)
    if problem is not None:
        return WorkerResult(
            "fail", blocker=problem, cost_usd=env.cost_usd, tokens=env.tokens, source="result_file"
        )
    if obj is not None:
        result = _from_object(obj, "result_file", env)
        if result.status == "pass" and env.error:  # e.g. an edit the CLI denied the agent
            return replace(result, status="fail", blocker=env.error)
        if returncode != 0:
            note = f"the worker {_exit_description(returncode)} after writing its result file"
            result = replace(result, notes=_append(result.notes, note))
        return result

    found = find_result_object(env.text)
    if found is None and env.text is not output:
        found = find_result_object(output)  # e.g. the result printed outside the envelope
    if found is not None:
        result = _from_object(found, "output", env)
        if result.status == "pass" and env.error:
            return replace(result, status="fail", blocker=env.error)
        if result.status == "pass" and returncode != 0:
            why = f"the worker reported pass but {_exit_description(returncode)}"
            return replace(result, status="fail", blocker=why)
        return result

    if env.error:
        return WorkerResult(
            "fail", blocker=env.error, cost_usd=env.cost_usd, tokens=env.tokens, source="exit_code"
        )
    if returncode == 0:
        return WorkerResult(
            "pass",
            notes="no structured result; exit code 0",
            cost_usd=env.cost_usd,
            tokens=env.tokens,
            source="exit_code",
        )
    why = f"the worker {_exit_description(returncode)} without a structured result"
    last = _last_line(output)
    return WorkerResult(
        "fail",
        blocker=f"{why}; last output: {last}" if last else why,
        cost_usd=env.cost_usd,
        tokens=env.tokens,
        source="exit_code",
    )
