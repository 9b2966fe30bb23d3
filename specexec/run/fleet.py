"""The policies that let a run of many agents go on unattended (issue 17, patterns 002 and
004): which failures are waited out, how long, how many tasks of one worker run at once,
when the machine is too busy to start another, and what counts against a budget.

Pure but for the clock and psutil: the executor's loop calls these and owns the state.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from specexec.system import utc_iso
from specexec.tasksfile.types import Task, WorkerConfig

# Waited out and retried, without using up max_retries (bounded by max_wait_minutes).
TRANSIENT = frozenset({"rate_limit", "overloaded"})
# Not retried: no task of that worker starts any more (a circuit breaker).
SYSTEMIC = frozenset({"auth", "not_found"})

BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0

MAX_MEMORY_PERCENT = 85.0
MAX_CPU_PERCENT = 90.0
MEMORY_ENV = "SPECEXEC_MAX_MEMORY_PERCENT"
CPU_ENV = "SPECEXEC_MAX_CPU_PERCENT"


def env_percent(name: str, default: float) -> float:
    """A threshold's default: the environment's (e.g. 100 on a CI machine that is always
    busy, or in a test suite that times runs), else pattern 004's."""
    text = os.environ.get(name, "")
    try:
        value = float(text)
    except ValueError:
        return default
    return value if 0 < value <= 100 else default


def memory_threshold() -> float:
    return env_percent(MEMORY_ENV, MAX_MEMORY_PERCENT)


def cpu_threshold() -> float:
    return env_percent(CPU_ENV, MAX_CPU_PERCENT)


def backoff(
    failures: int,
    stated: float | None,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after the ``failures``-th transient failure of a task: the time the
    agent's service stated, else exponential (base, 2 base, 4 base ... up to cap) with
    "equal jitter" (between half and all of it), so tasks that failed together spread out."""
    if stated is not None:
        return max(stated, 0.0)
    step = min(cap, base * 2.0 ** max(failures - 1, 0))
    return step / 2 + rand() * step / 2


def worker_id(task: Task, worker: WorkerConfig | None) -> str:
    """The identity concurrency limits and the circuit breaker go by: the agent preset
    (one account, one API), a custom command as written, a shell task's own command."""
    if worker is not None and worker.command is not None:
        cmd = worker.command if isinstance(worker.command, str) else " ".join(worker.command)
        return f"command {cmd}"
    if worker is not None and worker.preset not in (None, "shell"):
        return str(worker.preset)
    return f"shell {task.command or ''}"


def token_count(tokens: Mapping[str, int] | None) -> int:
    """The tokens a result counts against --max-tokens: input + output (cache reads and
    the like are parts of or beside these, and differ by agent)."""
    if not tokens:
        return 0
    return int(tokens.get("input", 0)) + int(tokens.get("output", 0))


@dataclass
class Concurrency:
    """How many tasks of each worker may run at once: ``jobs`` at first, halved (never
    below 1) on a rate limit or overload, one more after each success."""

    jobs: int
    limits: dict[str, int] = field(default_factory=dict)
    lowered_at: dict[str, float] = field(default_factory=dict)
    # Changes over time; a worker's "start" entry (its first task, at --jobs) is written
    # with its first change, so a run of many workers that never hit a limit logs nothing.
    log: list[dict[str, Any]] = field(default_factory=list)
    first_seen: dict[str, str] = field(default_factory=dict)

    def limit(self, worker: str) -> int:
        if worker not in self.limits:
            self.limits[worker] = self.jobs
            self.first_seen[worker] = utc_iso(ms=True)
        return self.limits[worker]

    def lower(self, worker: str, attempt_started: float, why: str) -> int | None:
        """Halve after a transient failure; None if unchanged. An attempt that started
        before the last decrease belongs to the burst that caused it: not counted twice."""
        cur = self.limit(worker)
        if attempt_started < self.lowered_at.get(worker, float("-inf")):
            return None
        self.lowered_at[worker] = time.time()
        new = max(1, cur // 2)
        if new == cur:
            return None
        self.limits[worker] = new
        self._record(worker, why)
        return new

    def grow(self, worker: str) -> int | None:
        cur = self.limit(worker)
        if cur >= self.jobs:
            return None
        self.limits[worker] = cur + 1
        self._record(worker, "success")
        return cur + 1

    def _record(self, worker: str, why: str) -> None:
        if worker in self.first_seen:
            start = self.first_seen.pop(worker)
            self.log.append({"t": start, "worker": worker, "limit": self.jobs, "why": "start"})
        self.log.append(
            {"t": utc_iso(ms=True), "worker": worker, "limit": self.limits[worker], "why": why}
        )


def _memory_percent() -> float:
    import psutil

    return float(psutil.virtual_memory().percent)


def _cpu_percent() -> float:
    import psutil

    return float(psutil.cpu_percent(interval=None))  # since the previous call


@dataclass
class ResourceGuard:
    """No new worker starts while memory is above ``max_memory`` percent, or CPU above
    ``max_cpu`` percent on average over the last ``window_s`` seconds. Sampled by the run
    loop at most every ``every_s`` seconds, never per start."""

    max_memory: float = 85.0
    max_cpu: float = 90.0
    window_s: float = 5.0
    every_s: float = 1.0
    memory: Callable[[], float] = _memory_percent
    cpu: Callable[[], float] = _cpu_percent
    _cpu_samples: list[tuple[float, float]] = field(default_factory=list)
    _memory_now: float = 0.0
    _last: float = float("-inf")

    def sample(self, now: float) -> None:
        if now - self._last < self.every_s:
            return
        first = self._last == float("-inf")
        self._last = now
        self._memory_now = self.memory()
        value = self.cpu()
        if not first:  # the first reading covers nothing (psutil's interval=None)
            self._cpu_samples.append((now, value))
        self._cpu_samples = [(t, v) for t, v in self._cpu_samples if now - t <= self.window_s]

    def busy(self) -> str | None:
        """Why no worker may start now, or None."""
        if self._memory_now > self.max_memory:
            return f"memory {self._memory_now:.0f}% > --max-memory-percent {self.max_memory:g}"
        if self._cpu_samples:
            avg = sum(v for _, v in self._cpu_samples) / len(self._cpu_samples)
            if avg > self.max_cpu:
                return (
                    f"CPU {avg:.0f}% over {self.window_s:g} s > --max-cpu-percent {self.max_cpu:g}"
                )
        return None
