"""The live view of a run on a terminal, on rich's own live rendering.

One state object, changed only by the executor's events (the same ones the plain and
JSON reporters get), is the single source of truth: the footer's counts and the list of
running tasks are both read from it, in one snapshot per frame, so a finished task is
never shown as running and the done counter is the number of ``task_finished`` events.
Lines (a task's end, notices, any event this module does not know) scroll above the live
area. Every piece of text is a ``rich.text.Text``: nothing from a worker, a file or a
task id is ever parsed as markup."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from specexec import fmt
from specexec.fmt import clean
from specexec.run.progress import describe

# Events the live area shows itself (no line of their own).
_SILENT = frozenset({"task_started", "task_released", "run_finished"})
_LINE_STYLE = {"task_blocked": "yellow", "task_waiting": "yellow", "notice": "bold"}
# How many running tasks the live area lists before "and N more".
MAX_ROWS = 12


@dataclass
class LiveState:
    """What the live area shows; changed by ``apply`` (one event at a time)."""

    total: int = 0
    finished: int = 0  # task_finished events
    blocked: int = 0  # task_blocked events
    failed: int = 0
    running: dict[str, tuple[float, int]] = field(default_factory=dict)  # -> since, attempt
    waiting: dict[str, str] = field(default_factory=dict)  # -> resume time (UTC HH:MM:SS)
    started: float | None = None  # monotonic time of run_started
    # Issue 17: each worker's limit while below --jobs, the run's spend, why no task starts.
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> limit, --jobs
    jobs: int = 0
    cost_usd: float = 0.0
    tokens: int = 0
    held: str | None = None

    def apply(self, kind: str, f: dict[str, Any], now: float) -> None:
        who = f"{f.get('spec', '')}/{f.get('task', '')}"
        if kind == "run_started":
            self.total += int(f.get("pending") or 0)
            self.jobs = int(f.get("jobs") or 0)
            if self.started is None:
                self.started = now
        elif kind == "task_started":
            self.waiting.pop(who, None)
            self.running[who] = (now, int(f.get("attempt") or 1))
        elif kind == "task_finished":
            self.running.pop(who, None)
            self.waiting.pop(who, None)
            self.finished += 1
            self.failed += f.get("status") == "fail"
            self.cost_usd = float(f.get("total_cost_usd") or self.cost_usd)
            self.tokens = int(f.get("total_tokens") or self.tokens)
        elif kind == "concurrency":
            worker, limit = str(f.get("worker", "")), int(f.get("limit") or 1)
            if limit >= self.jobs:
                self.limits.pop(worker, None)
            else:
                self.limits[worker] = (limit, self.jobs)
        elif kind == "resource_wait":
            self.held = str(f.get("reason", ""))
        elif kind == "resource_ok":
            self.held = None
        elif kind == "task_blocked":
            self.blocked += 1
        elif kind == "task_waiting":
            self.running.pop(who, None)
            self.waiting[who] = str(f.get("resume_at", ""))[11:19]
        elif kind == "task_released":
            self.running.pop(who, None)
            self.waiting.pop(who, None)

    def footer(self, now: float, eta: float | None) -> Text:
        """``3/10 done · 1 failed · 2 running · 1 waiting · 4.1s · ETA ~6.0s``."""
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{self.finished}/{self.total} done", style="bold")
        if self.failed:
            t.append(f" · {self.failed} failed", style="red")
        if self.blocked:
            t.append(f" · {self.blocked} blocked", style="yellow")
        t.append(f" · {len(self.running)} running")
        if self.waiting:
            t.append(f" · {len(self.waiting)} waiting")
        if self.cost_usd or self.tokens:
            t.append(f" · ${self.cost_usd:.4f}, {self.tokens} tokens")
        since = self.started if self.started is not None else now
        t.append(f" · {fmt.duration(now - since)}")
        if eta is not None and (self.running or self.waiting):
            t.append(f" · ETA ~{fmt.duration(eta)}")
        return t

    def render(self, now: float, eta: float | None) -> RenderableType:
        if self.started is None:
            return Text("")  # no frame before the run says what it will do
        rows: list[RenderableType] = []
        for who, (since, attempt) in sorted(self.running.items())[:MAX_ROWS]:
            row = Text(no_wrap=True, overflow="ellipsis")
            row.append("running  ", style="cyan")
            row.append(clean(who, 80))
            row.append(f"  {fmt.duration(now - since)}")
            if attempt > 1:
                row.append(f"  attempt {attempt}", style="yellow")
            rows.append(row)
        if len(self.running) > MAX_ROWS:
            rows.append(Text(f"and {len(self.running) - MAX_ROWS} more running"))
        for who, resume in sorted(self.waiting.items())[:MAX_ROWS]:
            row = Text(no_wrap=True, overflow="ellipsis")
            row.append("waiting  ", style="yellow")
            row.append(clean(who, 80))
            row.append(f"  until {clean(resume, 8)} UTC")
            rows.append(row)
        for worker, (limit, jobs) in sorted(self.limits.items())[:MAX_ROWS]:
            row = Text(no_wrap=True, overflow="ellipsis")
            row.append("limit    ", style="yellow")
            row.append(f"{clean(worker, 60)}: {limit} of {jobs} at once")
            rows.append(row)
        if self.held:
            row = Text(no_wrap=True, overflow="ellipsis")
            row.append("held     ", style="yellow")
            row.append(f"no new task starts: {clean(self.held, 100)}")
            rows.append(row)
        rows.append(self.footer(now, eta))
        return Group(*rows)


def event_line(kind: str, f: dict[str, Any]) -> Text | None:
    """The line an event prints above the live area, or None. An event this module does
    not know still gets one: its name and fields."""
    if kind in _SILENT:
        return None
    line = describe(kind, f)
    if line is None:
        shown = ", ".join(
            f"{k}={clean(v, 80)}" for k, v in f.items() if v is not None and k not in ("time",)
        )
        line = f"{kind.replace('_', ' ')}" + (f": {shown}" if shown else "")
    style = _LINE_STYLE.get(kind, "")
    if kind == "task_finished":
        style = "green" if f.get("status") == "pass" else "red"
    return Text(line, style=style)


class LiveView:
    """The reporter for a terminal: ``event`` updates the state and prints the event's
    line; rich redraws the live area from the state a few times a second."""

    def __init__(
        self,
        eta: Callable[[], float | None] | None = None,
        console: Console | None = None,
        refresh_per_second: float = 8,
    ) -> None:
        self.console = console or Console(highlight=False)
        self.eta = eta
        self.state = LiveState()
        self._lock = threading.Lock()
        self._live = Live(
            console=self.console,
            refresh_per_second=refresh_per_second,
            transient=True,
            get_renderable=self._frame,  # stray prints go above the live area
        )
        self._on = False

    def _frame(self) -> RenderableType:
        eta: float | None = None
        if self.eta is not None:
            try:
                eta = self.eta()
            except Exception:  # an estimate must never break the view
                eta = None
        with self._lock:
            return self.state.render(time.monotonic(), eta)

    def event(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self.state.apply(kind, fields, time.monotonic())
            start = kind == "run_started" and not self._on
            self._on = self._on or start
        if start:
            self._live.start()
        line = event_line(kind, fields)
        # Printed outside the lock: rich's refresh thread holds its own lock while it
        # asks for a frame (which takes ours).
        if line is not None:
            self.console.print(line, soft_wrap=True)  # the terminal wraps; no newline
        elif kind in ("task_started", "task_released") and self._on:
            self._live.refresh()  # show the change now, not at the next tick

    def close(self) -> None:
        if self._on:
            self._live.stop()
            self._on = False
