"""The most telling lines of a failed attempt's output, for the fail line, ``status``, the
summary and the report: error lines rather than the last line (a CLI's usage error is
followed by "try --help"; a test run ends with a count, not the failing assertion)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from specexec.fmt import clean
from specexec.tasksfile.types import RUNTIME_DIR
from specexec.workers.result import read_log_tail

# Lines that say what went wrong, in the words of common tools: "error: ..." (git, ruff,
# cargo, clap), Python exceptions ("ValueError: ..."), pytest ("FAILED ...", "E   assert"),
# "fatal:", "panic:", "No such file", "command not found", "Permission denied".
_TELLING: Final = re.compile(
    r"(?i:\b(error|fatal|panic)\b\s*[:\[])"
    r"|^\s*E\s{2,}\S"
    r"|^\w+(\.\w+)*(Error|Exception|Interrupt|Exit)\b"
    r"|\bFAILED\b|\bFAIL:|^\s*>?\s*assert\b|\bAssertionError\b"
    r"|(?i:no such file|command not found|permission denied|\bcannot |\bunrecognized\b)"
)
_TRACEBACK: Final = "Traceback (most recent call last):"
# Lines that name no cause, however error-like they look.
_NOISE: Final = re.compile(r"^(for more information|usage:|try '.*--help')", re.IGNORECASE)
EXCERPT_LINES: Final = 3
EXCERPT_WIDTH: Final = 200


def telling_lines(text: str, limit: int = EXCERPT_LINES) -> list[str]:
    """Up to ``limit`` lines of ``text`` that name the cause (in their order); the last
    non-blank line when none does. Each line made safe for a terminal."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    picked: list[int] = []
    for i, line in enumerate(lines):
        if line.strip() == _TRACEBACK:
            # A traceback's cause is its last line: the first unindented line after it.
            for j in range(i + 1, len(lines)):
                if lines[j] and not lines[j][0].isspace():
                    picked.append(j)
                    break
        elif _TELLING.search(line) and not _NOISE.match(line.strip()):
            picked.append(i)
    chosen = sorted(set(picked))
    if len(chosen) > limit:
        # The first error is often the cause, the last the summary: keep both ends.
        chosen = [*chosen[: limit - 1], chosen[-1]]
    if not chosen:
        chosen = [i for i, ln in enumerate(lines) if ln.strip()][-1:]
    return [clean(lines[i], EXCERPT_WIDTH) for i in chosen]


def log_excerpt(log: Path, limit: int = EXCERPT_LINES) -> list[str]:
    """The telling lines of the latest attempt in a task's log: for a failed ``verify``,
    its own output (it runs after its own header in the same log)."""
    return telling_lines(read_log_tail(log), limit)


def shown_path(path: str | Path) -> str:
    """A log's path as a person types it: relative to the working directory when it is
    inside it (``specs/x/.specexec/runs/<id>/t.log``), else absolute; terminal-safe."""
    p = Path(path)
    try:
        cwd = Path.cwd()
    except OSError:  # the working directory was removed
        return clean(str(p), None)
    return clean(str(p.relative_to(cwd) if p.is_relative_to(cwd) else p), None)


def latest_log(spec_dir: Path, task_id: str) -> Path | None:
    """The task's log in the newest run folder that has one (run ids sort by time)."""
    runs = spec_dir / RUNTIME_DIR / "runs"
    try:
        names = sorted((p.name for p in runs.iterdir()), reverse=True)
    except OSError:
        return None
    for name in names:
        log = runs / name / f"{task_id}.log"
        if log.is_file():
            return log
    return None
