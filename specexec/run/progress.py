"""What a run shows while it goes: a live view on a terminal, one plain line per state
change in a pipe, or one JSON object per line with ``--json``."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

from specexec import fmt, system
from specexec.fmt import clean as clean  # re-exported: worker text is cleaned here
from specexec.run.excerpt import shown_path


class Reporter(Protocol):
    def event(self, kind: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


def _now() -> str:
    return system.utc_iso(ms=True)


class JsonReporter:
    """One JSON object per line: ``{"time", "event", ...fields}``."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self._lock = threading.Lock()

    def event(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"time": _now(), "event": kind, **fields}, default=str)
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        pass


def describe(kind: str, f: dict[str, Any]) -> str | None:
    """The plain-text line for an event, or None for events not worth a line."""
    who = f"{f.get('spec', '')}/{f.get('task', '')}"
    if kind == "run_started":
        return (
            f"run {f['run_id']}: {f['pending']} task(s) to run in {f['specs']} spec(s), "
            f"--jobs {f['jobs']}, schedule {f['schedule']}"
        )
    if kind == "task_started":
        extra = f" (attempt {f['attempt']})" if f.get("attempt", 1) > 1 else ""
        return f"start  {who}{extra}"
    if kind == "task_retry":
        return f"retry  {who}: {clean(f.get('reason', ''))}"
    if kind == "task_finished":
        status = f["status"]
        line = f"{status:6} {who} in {fmt.seconds(f.get('seconds', 0.0))}"
        if f.get("error_class"):
            line += f" [{f['error_class']}]"
        excerpt = [clean(x, 200) for x in f.get("excerpt") or ()]
        blocker = str(f.get("blocker") or "")
        if excerpt:
            # The cause first, in the worker's own words; the exit code after it.
            blocker = blocker.split("; last output: ")[0]
            line += ": " + " | ".join(excerpt) + (f" ({clean(blocker, 200)})" if blocker else "")
        elif blocker:
            line += f": {clean(blocker)}"
        if f.get("scope_violations"):
            outside = ", ".join(clean(p, 100) for p in f["scope_violations"][:5])
            more = len(f["scope_violations"]) - 5
            outside += f" and {more} more" if more > 0 else ""
            line += f" (outside relevant_files: {outside})"
        if status == "fail" and f.get("log"):
            line += f"; log: {shown_path(f['log'])}"
        return line
    if kind == "task_blocked":
        return f"blocked {who}: {clean(f.get('blocker', ''))}"
    if kind == "task_waiting":
        resume = str(f.get("resume_at", ""))[11:19]  # HH:MM:SS of the ISO time (UTC)
        return (
            f"wait   {who}: {f.get('error_class')}, resumes {resume} UTC "
            f"(in {fmt.seconds(f.get('seconds', 0.0))}): {clean(f.get('reason') or '')}"
        )
    if kind == "concurrency":
        return f"note: {clean(f['worker'], 80)}: at most {f['limit']} at once ({f['why']})"
    if kind == "resource_wait":
        return f"note: no new task starts: {f['reason']}"
    if kind == "resource_ok":
        return f"note: starting tasks again after {fmt.seconds(f.get('seconds', 0.0))}"
    if kind == "task_recovered":
        return f"recovered {who}: {clean(f.get('note', ''))}"
    if kind == "notice":
        return f"note: {clean(f['message'])}"
    if kind == "run_finished":
        return None  # the summary is printed by the command
    return None


class PlainReporter:
    """One line per state change, no control characters (for logs and pipes)."""

    def __init__(self, out: IO[str] | None = None, stamp: bool = True) -> None:
        self.out = out or sys.stdout
        self.stamp = stamp
        self._lock = threading.Lock()

    def event(self, kind: str, **fields: Any) -> None:
        line = describe(kind, fields)
        if line is None:
            return
        if self.stamp:
            line = time.strftime("%H:%M:%S ") + line
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        pass


def make_reporter(as_json: bool, eta: Callable[[], float | None] | None = None) -> Reporter:
    if as_json:
        return JsonReporter()
    if sys.stdout.isatty():
        from specexec.run.live import LiveView  # it imports describe() from here

        return LiveView(eta)
    return PlainReporter()
