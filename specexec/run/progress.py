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
from specexec.fmt import clean  # worker-provided text may carry newlines or escape codes


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
        if f.get("blocker"):
            line += f": {clean(f['blocker'])}"
        if f.get("scope_violations"):
            outside = ", ".join(clean(p, 100) for p in f["scope_violations"][:5])
            more = len(f["scope_violations"]) - 5
            outside += f" and {more} more" if more > 0 else ""
            line += f" (outside relevant_files: {outside})"
        return line
    if kind == "task_blocked":
        return f"blocked {who}: {clean(f.get('blocker', ''))}"
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


class LiveReporter:
    """A live view for terminals: the lines of PlainReporter scroll above a panel of the
    running tasks with elapsed time and attempt, done/total, elapsed and ETA."""

    def __init__(self, eta: Callable[[], float | None] | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(highlight=False)
        self.eta = eta
        self.running: dict[str, tuple[float, int]] = {}
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.live = Live(
            console=self.console, refresh_per_second=4, transient=True, get_renderable=self._render
        )
        self.live.start()

    def _render(self) -> Any:
        from rich.table import Table

        with self._lock:
            now = time.monotonic()
            table = Table.grid(padding=(0, 2))
            for who, (since, attempt) in sorted(self.running.items()):
                tries = f"attempt {attempt}" if attempt > 1 else ""
                table.add_row("[cyan]running[/]", who, fmt.seconds(now - since), tries)
            eta = self.eta() if self.eta else None
            eta_text = f" · ETA ~{fmt.seconds(eta)}" if eta is not None else ""
            table.add_row(
                "[bold]",
                f"[bold]{self.done}/{self.total} done[/] · {len(self.running)} running",
                fmt.seconds(now - self.started) + eta_text,
                "",
            )
            return table

    def event(self, kind: str, **fields: Any) -> None:
        who = f"{fields.get('spec', '')}/{fields.get('task', '')}"
        with self._lock:
            if kind == "run_started":
                self.total = int(fields["pending"])
                self.started = time.monotonic()
            elif kind == "task_started":
                self.running[who] = (time.monotonic(), int(fields.get("attempt", 1)))
            elif kind == "task_finished":
                self.running.pop(who, None)
                self.done += 1
            elif kind == "task_blocked":
                self.done += 1
            elif kind == "task_released":
                self.running.pop(who, None)
        line = describe(kind, fields)
        if line is not None and kind != "task_started":
            style = {
                "task_finished": "green" if fields.get("status") == "pass" else "red",
                "task_blocked": "yellow",
            }.get(kind, "")
            self.console.print(line, style=style, markup=False)

    def close(self) -> None:
        self.live.stop()


def make_reporter(as_json: bool, eta: Callable[[], float | None] | None = None) -> Reporter:
    if as_json:
        return JsonReporter()
    if sys.stdout.isatty():
        return LiveReporter(eta)
    return PlainReporter()
