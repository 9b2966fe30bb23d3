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


# A rate limit among at least this many successes per failure, since the limit was last
# lowered, is sporadic: the limit holds (see Concurrency).
SPORADIC_RATIO = 2


@dataclass
class _Worker:
    """What one worker's limit has seen: since it was last lowered (``ok``, ``failed``), and
    since it last changed (``window``)."""

    lowered_at: float = float("-inf")
    ok: int = 0  # successes since the last decrease
    failed: int = 0  # rate limits and overloads since then (the burst's own not counted)
    window: int = 0  # successes since the last change, toward the next step up


@dataclass
class Concurrency:
    """How many tasks of each worker may run at once: additive increase, multiplicative
    decrease (AIMD, as TCP's congestion control), per worker.

    - It starts at ``jobs``.
    - A ``rate_limit`` or ``overloaded`` failure halves it (never below 1), once per
      episode: a failure of an attempt that started before the last decrease belongs to
      the burst that caused it, and one among at least ``SPORADIC_RATIO`` times as many
      successes since the last decrease (counting at most the last two windows of them) is
      sporadic. Either way the limit holds.
    - It grows back one at a time, up to ``jobs``: one more after each whole window of
      successes at the current limit (``limit`` successes since its last change), not one
      per success, which would double it in one round of tasks and meet the same limit again.

    ``fixed`` (``--fixed-concurrency``): every worker stays at ``jobs``.
    """

    jobs: int
    fixed: bool = False
    clock: Callable[[], float] = time.time
    limits: dict[str, int] = field(default_factory=dict)
    # Changes over time; a worker's "start" entry (its first task, at --jobs) is written
    # with its first change, so a run of many workers that never hit a limit logs nothing.
    log: list[dict[str, Any]] = field(default_factory=list)
    first_seen: dict[str, str] = field(default_factory=dict)
    _seen: dict[str, _Worker] = field(default_factory=dict, repr=False)

    def limit(self, worker: str) -> int:
        if worker not in self.limits:
            self.limits[worker] = self.jobs
            self.first_seen[worker] = utc_iso(ms=True)
        return self.limits[worker]

    def lower(self, worker: str, attempt_started: float, why: str) -> int | None:
        """After a transient failure of an attempt that started at ``attempt_started``
        (epoch s): the new limit, or None if it holds."""
        cur = self.limit(worker)
        seen = self._seen.setdefault(worker, _Worker())
        if self.fixed or attempt_started < seen.lowered_at:
            return None
        seen.failed += 1
        if min(seen.ok, 2 * cur) >= SPORADIC_RATIO * seen.failed:
            return None
        self._seen[worker] = _Worker(lowered_at=self.clock())
        new = max(1, cur // 2)
        if new == cur:
            return None
        self._set(worker, new, why)
        return new

    def grow(self, worker: str) -> int | None:
        """After a success: the new limit, or None if it holds."""
        cur = self.limit(worker)
        seen = self._seen.setdefault(worker, _Worker())
        if self.fixed:
            return None
        seen.ok += 1
        seen.window += 1
        if cur >= self.jobs or seen.window < cur:
            return None
        self._set(worker, cur + 1, "success")
        return cur + 1

    def _set(self, worker: str, limit: int, why: str) -> None:
        self.limits[worker] = limit
        self._seen.setdefault(worker, _Worker()).window = 0
        if worker in self.first_seen:
            start = self.first_seen.pop(worker)
            self.log.append({"t": start, "worker": worker, "limit": self.jobs, "why": "start"})
        self.log.append({"t": utc_iso(ms=True), "worker": worker, "limit": limit, "why": why})


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
