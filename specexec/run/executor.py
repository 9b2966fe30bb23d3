"""The run loop (DESIGN §2, §3, §5): one single-threaded loop owns every piece of state.
A task runs as steps (attempt.Steps): in a worker thread of its own, which reports back
through a queue, or, when nothing of it blocks but its processes (isolation "none"), in
the loop itself, which waits on all such processes at once (reactor)."""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from specexec import fmt
from specexec.errors import InvalidInput
from specexec.git.repo import find_repo_root
from specexec.plan import planner, schedule
from specexec.run import attempt as taskrun
from specexec.run import fleet
from specexec.run.excerpt import log_excerpt
from specexec.run.handoff import merge_data
from specexec.run.processes import worker_env
from specexec.run.progress import Reporter
from specexec.run.prompt import MergedInput, ParallelContext
from specexec.run.reactor import Reactor
from specexec.run.report import TaskRecord, run_metrics
from specexec.system import atomic_write, utc_iso, utc_stamp
from specexec.tasksfile.bounds import bound_record
from specexec.tasksfile.events import EventLog
from specexec.tasksfile.store import DELETE, CoalescingWriter, TasksStore
from specexec.tasksfile.types import Spec, Task, WorkerConfig

if TYPE_CHECKING:
    from specexec.git.workspace import Workspace

Key = tuple[str, str]
FLEET_STATE = "fleet.json"  # in the spec's .specexec/: the live run's limits and spend

WORKER_INSTRUCTIONS = (
    "Work only inside this worktree and only on the files listed above; other tasks run "
    "beside you in their own worktrees. Do not commit, push or switch branches: specexec "
    "commits and merges your changes."
)


@dataclass(frozen=True, slots=True)
class RunOptions:
    jobs: int = 4
    schedule: Literal["eager", "waves"] = "eager"
    worker: str | None = None
    retries: int | None = None
    timeout_minutes: float | None = None
    fail_fast: bool = False
    strict_scope: bool = False
    dry_run: bool = False
    keep_worktrees: bool = False
    json: bool = False
    wait: bool = False
    retry_failed: bool = False
    isolation: Literal["worktree", "none"] | None = None
    clean_ignored: bool = False
    pool: bool = True
    allow_commands: bool = True
    grace_s: float = 5.0
    # Budgets of the whole run (tasks.json defaults.max_cost_usd / max_tokens apply too).
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    # The resource guard (pattern 004's thresholds).
    max_memory_percent: float = field(default_factory=fleet.memory_threshold)
    max_cpu_percent: float = field(default_factory=fleet.cpu_threshold)
    # Waits after a rate limit or overload without a stated retry time (fleet.backoff).
    backoff_base_s: float = fleet.BACKOFF_BASE_S
    backoff_cap_s: float = fleet.BACKOFF_CAP_S
    # --fixed-concurrency: every worker keeps --jobs (fleet.Concurrency never lowers it).
    fixed_concurrency: bool = False


def new_run_id() -> str:
    return utc_stamp() + "-" + secrets.token_hex(2)


@dataclass
class SpecRun:
    """The per-spec state of a run."""

    spec: Spec
    store: TasksStore
    writer: CoalescingWriter
    events: EventLog
    workspace: Workspace | None
    run_dir: Path
    workers: dict[str, WorkerConfig | None]
    waves: dict[str, int]
    results: dict[str, dict[str, Any]]  # task id -> parsed result (this run or earlier)
    plan: planner.Plan | None = None  # of spec.tasks at opts.jobs, if already made

    @property
    def name(self) -> str:
        return self.spec.name

    @functools.cached_property
    def repo_root(self) -> Path:
        """Where workers run with isolation "none"."""
        return find_repo_root(self.spec.dir) or self.spec.dir


@dataclass(frozen=True, slots=True)
class _Attempt:
    key: Key
    attempt: int


@dataclass(frozen=True, slots=True)
class _NotStarted:
    """A task given up before its first attempt: drained or cancelled while it waited for
    a slot of the shared pool. It never left ``pending``."""

    key: Key


@dataclass(frozen=True, slots=True)
class _Resume:
    """Where a task's attempts stand when its steps start (again, after a wait): the
    loop's record, handed to the steps and back."""

    attempt: int  # the last attempt's number (tasks.json's attempts at first)
    retried: int = 0  # retries used against max_retries
    timeout: float = 0.0  # minutes for the next attempt
    rerun_done: bool = False  # the one rerun after a merge conflict
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Done:
    key: Key
    outcome: taskrun.AttemptOutcome
    attempts: int
    retried: int
    start: float
    end: float
    worker_seconds: float
    attempt_start: float = 0.0  # of the last attempt
    cost_usd: float | None = None  # summed over this thread's attempts
    tokens: dict[str, int] | None = None
    resume: _Resume | None = None  # to go on from after a wait


@dataclass
class _Progress:
    """A task's state across waits (loop thread only)."""

    resume: _Resume
    first_start: float
    waits: int = 0  # transient failures waited out
    waited_s: float = 0.0
    worker_seconds: float = 0.0
    cost_usd: float | None = None
    tokens: dict[str, int] = field(default_factory=dict)


class Executor:
    def __init__(
        self,
        runs: Sequence[SpecRun],
        opts: RunOptions,
        reporter: Reporter,
        run_id: str,
        cancel: threading.Event,
        *,
        slots: threading.BoundedSemaphore | None = None,
        drain: threading.Event | None = None,
        guard: fleet.ResourceGuard | None = None,
    ) -> None:
        self.runs = {r.name: r for r in runs}
        if len(self.runs) != len(runs):
            raise InvalidInput("two spec folders given to one run have the same spec name")
        self.opts = opts
        self.reporter = reporter
        self.run_id = run_id
        self.cancel = cancel
        # Daemon hooks: ``slots`` is one job pool shared by several executors (a worker
        # holds a slot from its first attempt to its end); ``drain`` set = start no new
        # task, let running ones finish.
        self.slots = slots
        self.drain = drain
        self.draining = False
        self.queue: queue.Queue[_Attempt | _Done | _NotStarted] = queue.Queue()
        self.schedule = schedule.Schedule(
            [(r.name, r.spec.tasks) for r in runs], opts.jobs, opts.schedule
        )
        self.records: dict[Key, TaskRecord] = {}
        self.started_at: dict[Key, float] = {}
        self.branches_to_delete: list[tuple[SpecRun, str]] = []
        self.stopping = False
        self.interrupted = False
        self.pending_at_start = sum(1 for r in runs for t in r.spec.tasks if t.status == "pending")
        self.plans = {r.name: r.plan or planner.make_plan(r.spec.tasks, opts.jobs) for r in runs}
        self.critical = {name: plan.critical_path for name, plan in self.plans.items()}
        self.base_env = worker_env(None)
        # Seconds per estimated minute, learnt from finished tasks (for the ETA).
        self._pace: list[float] = []
        # The fleet (issue 17). Every task the schedule started is in exactly one of:
        # ``held`` (may start once its worker, the machine and the budget allow), ``active``
        # (its steps running, in a thread or the loop), ``waiting`` (a rate limit or overload waited out, until
        # the time given). The schedule counts all three as running, so file conflicts
        # and blockers hold; its pool size is kept at jobs + held + waiting, so only
        # ``active`` tasks take one of the --jobs slots.
        self.held: dict[Key, None] = {}
        self.active: dict[Key, str] = {}  # -> worker id
        self.waiting: dict[Key, float] = {}  # -> when it resumes (epoch s)
        self.progress: dict[Key, _Progress] = {}
        self.worker_ids = {
            (r.name, t.id): fleet.worker_id(t, r.workers.get(t.id))
            for r in runs
            for t in r.spec.tasks
        }
        self.concurrency = fleet.Concurrency(opts.jobs, fixed=opts.fixed_concurrency)
        self.broken: dict[str, str] = {}  # worker id -> why no task of it starts
        self.guard = guard or fleet.ResourceGuard(opts.max_memory_percent, opts.max_cpu_percent)
        self.resource_wait: tuple[float, str] | None = None  # since, why
        self.resource_waits: list[dict[str, Any]] = []
        self.cost_usd = 0.0
        self.tokens = 0
        self.spend: dict[str, tuple[float, int]] = {r.name: (0.0, 0) for r in runs}
        self.budget_stop: str | None = None
        # The last fleet.json written (without its "updated") and when: see _write_fleet_state.
        self._fleet_written: tuple[str, float] | None = None

    # -- state changes (loop thread only) ----------------------------------------------

    def _set(self, key: Key, frm: str | None, to: str, attempt: int | None, **fields: Any) -> None:
        r = self.runs[key[0]]
        # The event is on disk before the state is acted on; tasks.json follows coalesced.
        r.events.transition(
            key[1],
            frm,
            to,
            attempt=attempt,
            **{
                k: v
                for k, v in fields.items()
                if v is not DELETE and k in ("blocker", "error_class")
            },
        )
        r.writer.set(key[1], status=to, **fields)

    def _block(self, key: Key, reason: str) -> None:
        self._set(key, "pending", "blocked", None, blocker=reason, completed_at=utc_iso())
        task = self.runs[key[0]].spec.task(key[1])
        self.records[key] = TaskRecord(
            spec=key[0],
            task=key[1],
            status="blocked",
            blocker=reason,
            summary=task.summary,
            critical=key[1] in self.critical[key[0]],
        )
        self.reporter.event("task_blocked", spec=key[0], task=key[1], blocker=reason)

    def _start(self, key: Key) -> None:
        r = self.runs[key[0]]
        task = r.spec.task(key[1])
        prog = self.progress.get(key)
        if prog is None:
            timeout = self.opts.timeout_minutes or task.timeout_minutes
            prog = _Progress(_Resume(task.attempts, timeout=timeout), time.time())
            self.progress[key] = prog
            self.started_at[key] = prog.first_start
        worker = self.worker_ids[key]
        self.active[key] = worker
        ctx_for = self._context_factory(r, task)
        # Without a shared pool the attempt starts now: marked in_progress here, before
        # its worker exists, instead of a message back from the thread (one hand-over of
        # the loop per task fewer). From a shared pool it starts once a slot is free.
        announced = self.slots is None
        if announced:
            self._on_attempt(_Attempt(key, prog.resume.attempt + 1))
        steps = self._task_steps(key, ctx_for, task, prog.resume, announced)
        isolation = self.opts.isolation or task.isolation
        if announced and isolation == "none" and self.reactor.available:
            # Nothing of it blocks but its processes: this loop waits on them, no thread.
            self.reactor.advance(key, steps, None)
        else:
            self.pool.submit(self._work, key, steps)

    def _context_factory(
        self, r: SpecRun, task: Task
    ) -> Callable[[int, float, tuple[str, ...], bool], taskrun.AttemptContext]:
        running = [k for k in self.active if k != (r.name, task.id)]
        concurrent = taskrun.concurrent_ids(running, r.spec, task)
        risk = "none: no running task shares its files"
        if concurrent:
            risk = "low: the tasks running beside it touch other files (each has its own worktree)"
        parallel = ParallelContext(
            wave=r.waves.get(task.id, 0),
            concurrent_tasks=concurrent,
            conflict_risk=risk,
            instructions=WORKER_INSTRUCTIONS,
        )
        inputs = taskrun.blocker_inputs(task, r.results, r.spec)
        merged = None
        if task.merge is not None:
            lists = [list(b.data or []) for b in inputs if b.status == "pass"]
            merged = MergedInput(
                strategy=task.merge.strategy, items=tuple(merge_data(task.merge, lists))
            )
        isolation = self.opts.isolation or task.isolation
        ws = r.workspace if isolation == "worktree" else None
        wt_pool = self.worktree_pools.get(ws.common_dir) if ws is not None else None

        def make(
            attempt: int, timeout: float, conflicts: tuple[str, ...], rerun: bool
        ) -> taskrun.AttemptContext:
            return taskrun.AttemptContext(
                spec=r.spec,
                task=task,
                worker=r.workers.get(task.id),
                run_id=self.run_id,
                run_dir=r.run_dir,
                attempt=attempt,
                timeout_minutes=timeout,
                workspace=ws,
                cwd=r.repo_root,
                parallel=parallel,
                inputs=inputs,
                merged=merged,
                strict_scope=self.opts.strict_scope,
                keep_worktree=self.opts.keep_worktrees,
                cancel=self.cancel,
                registry_dir=r.spec.runtime_dir / "workers",
                grace_s=self.opts.grace_s,
                pool=wt_pool,
                base_env=self.base_env,
                conflicts=conflicts,
                rerun_on_conflict=rerun,
            )

        return make

    # -- a task's steps, and the thread that runs them when it has one ------------------

    def _take_slot(self) -> bool:
        """Wait for a slot of the shared pool; False if drained or cancelled meanwhile."""
        assert self.slots is not None
        while not self.cancel.is_set() and not (self.drain is not None and self.drain.is_set()):
            if self.slots.acquire(timeout=0.1):
                return True
        return False

    def _work(self, key: Key, steps: _TaskSteps) -> None:
        """A task in a worker thread: every step of it, each process waited for here."""
        if self.slots is not None:
            if not self._take_slot():
                steps.close()
                self._post(_NotStarted(key))
                return
            try:
                self._post(taskrun.drive(steps))
            finally:
                self.slots.release()
        else:
            self._post(taskrun.drive(steps))

    def _post(self, msg: _Attempt | _Done | _NotStarted) -> None:
        self.queue.put(msg)
        if threading.get_ident() != self.loop_thread:
            self.reactor.wake()  # the loop may be waiting in the reactor

    def _task_steps(
        self, key: Key, make: _Make, task: Task, resume: _Resume, announced: bool
    ) -> _TaskSteps:
        """A task's attempts, retries and reruns, as steps (see attempt.Steps); its
        _Done at the end."""
        start = attempt_start = time.time()
        retries = self.opts.retries if self.opts.retries is not None else task.max_retries
        attempt, retried, timeout = resume.attempt, resume.retried, resume.timeout
        rerun_done, conflicts = resume.rerun_done, resume.conflicts
        worker_seconds = 0.0
        cost: float | None = None
        tokens: dict[str, int] = {}
        outcome: taskrun.AttemptOutcome
        try:
            while True:
                attempt += 1
                if not announced:
                    self._post(_Attempt(key, attempt))
                announced = False  # a retry is announced from here
                attempt_start = time.time()
                rerun = task.on_conflict == "rerun" and not rerun_done
                outcome = yield from taskrun.attempt_steps(make(attempt, timeout, conflicts, rerun))
                worker_seconds += outcome.worker_seconds
                res = outcome.result
                if res is not None and res.cost_usd is not None:
                    cost = (cost or 0.0) + res.cost_usd
                if res is not None and res.tokens:
                    for k, v in res.tokens.items():
                        tokens[k] = tokens.get(k, 0) + v
                if outcome.status in ("pass", "cancelled", "blocked"):
                    break
                cls = outcome.error_class
                if cls in fleet.TRANSIENT or cls in fleet.SYSTEMIC:
                    break  # the loop waits it out or stops the worker
                if cls == "merge_conflict" and rerun and not self.cancel.is_set():
                    # Once more from the new tip, told what conflicted; not a retry.
                    rerun_done, conflicts = True, outcome.conflicts
                    self.reporter.event(
                        "task_retry",
                        spec=key[0],
                        task=key[1],
                        attempt=attempt + 1,
                        reason=f"on_conflict rerun: {outcome.blocker}",
                    )
                    continue
                if not outcome.retryable or retried >= retries or self.cancel.is_set():
                    break
                retried += 1
                if outcome.timed_out:
                    timeout *= 1.5  # a timed-out attempt gets more time next
                self.reporter.event(
                    "task_retry",
                    spec=key[0],
                    task=key[1],
                    attempt=attempt + 1,
                    reason=outcome.blocker or "failed",
                )
        except GeneratorExit:
            raise
        except BaseException as e:
            outcome = taskrun.AttemptOutcome(
                "fail",
                f"internal error: {type(e).__name__}: {e}",
                retryable=False,
                error_class="worker_failed",
            )
        return _Done(
            key,
            outcome,
            attempt,
            retried,
            start,
            time.time(),
            worker_seconds,
            attempt_start=attempt_start,
            cost_usd=cost,
            tokens=tokens or None,
            resume=_Resume(attempt, retried, timeout, rerun_done, conflicts),
        )

    # -- the loop ----------------------------------------------------------------------

    def eta_seconds(self) -> float | None:
        """Remaining seconds: the eager simulation of what is left, each task at its best
        estimate. The pace (seconds per declared minute) is that of the tasks finished in
        this run, else that of earlier runs (tasks.json's recorded durations); a task's own
        recorded duration beats its declared minutes. None while nothing is known (declared
        minutes alone are guesses). A running task has at least 1 s left."""
        ratios = list(self._pace)
        if not ratios:
            ratios = [
                t.duration_minutes * 60 / t.estimated_minutes
                for r in self.runs.values()
                for t in r.spec.tasks
                if t.duration_minutes and t.estimated_minutes and t.status == "pass"
            ]
        pace = sorted(ratios)[len(ratios) // 2] if ratios else None
        groups = []
        now = time.time()
        for r in self.runs.values():
            left = []
            for t in r.spec.tasks:
                key = (r.name, t.id)
                state = self.schedule.state(key)
                if state not in ("pending", "running"):
                    continue
                if t.duration_minutes:
                    need = t.duration_minutes * 60  # measured before (an earlier attempt)
                elif pace is not None:
                    need = t.estimate * pace
                else:
                    return None
                if state == "running" and key in self.started_at:
                    need = max(need - (now - self.started_at[key]), 1.0)
                left.append(replace(t, status="pending", estimated_minutes=max(need, 0.001) / 60))
            ids = {t.id for t in left}
            left = [replace(t, blocked_by=tuple(b for b in t.blocked_by if b in ids)) for t in left]
            if left:
                groups.append((r.name, left))
        if not groups:
            return 0.0
        makespan, _ = schedule.simulate(groups, self.opts.jobs)
        return makespan * 60

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.reporter.event(
            "run_started",
            run_id=self.run_id,
            specs=len(self.runs),
            pending=self.pending_at_start,
            jobs=self.opts.jobs,
            schedule=self.opts.schedule,
        )
        for key, reason in self.schedule.initially_blocked():
            self._block(key, reason)
        # Warm worktrees, one pool per repository (--keep-worktrees keeps fresh ones).
        workspaces = [r.workspace for r in self.runs.values() if r.workspace is not None]
        self.worktree_pools = {}
        if workspaces and self.opts.pool and not self.opts.keep_worktrees:
            from specexec.git.pool import open_pools  # worktrees only: not imported otherwise

            self.worktree_pools = open_pools(
                workspaces, self.opts.jobs, clean_ignored=self.opts.clean_ignored
            )
        self.pool = ThreadPoolExecutor(
            max_workers=self.opts.jobs, thread_name_prefix="specexec-task"
        )
        self.loop_thread = threading.get_ident()
        self.reactor: Reactor[Key, _Done] = Reactor(self.pool, self._post, self.cancel)
        try:
            self._loop()
        finally:
            self.pool.shutdown(wait=True)  # first: its threads post (and wake) until done
            self.reactor.close()
            for wt_pool in self.worktree_pools.values():
                wt_pool.close()
            for r in self.runs.values():
                r.writer.close()  # final flush: every transition is on disk
            for r, branch in self.branches_to_delete:
                if r.workspace is not None:
                    r.workspace.delete_branch(branch)
        finished = time.time()
        self._record_not_started()
        records = []
        for r in self.runs.values():
            for t in r.spec.tasks:
                key = (r.name, t.id)
                if key in self.records:
                    records.append(self.records[key])
        waves = []
        for r in self.runs.values():
            waves.extend(planner.execution_strategy(self.plans[r.name])["waves"])
        metrics = run_metrics(
            run_id=self.run_id,
            specs=list(self.runs),
            jobs=self.opts.jobs,
            schedule=self.opts.schedule,
            started=started,
            finished=finished,
            records=records,
            critical_path=[t for r in self.runs.values() for t in self.critical[r.name]],
            waves=waves,
            integration_branches=[f"specexec/{r.name}" for r in self.runs.values() if r.workspace],
        )
        metrics["concurrency"] = list(self.concurrency.log)
        metrics["resource_waits"] = list(self.resource_waits)
        metrics["budget_reached"] = self.budget_stop
        metrics["stopped_workers"] = dict(self.broken)
        return metrics

    def _loop(self) -> None:
        while True:
            if self.cancel.is_set() and not self.stopping:
                self.stopping = self.interrupted = True
                self.reporter.event("notice", message="interrupted: stopping running tasks")
            if self.drain is not None and self.drain.is_set() and not self.draining:
                self.draining = True
                self.reporter.event(
                    "notice", message="draining: no new task starts; running ones finish"
                )
            now = time.time()
            halted = self.stopping or self.draining
            if halted:
                for key in list(self.waiting):
                    self._release_waiting(key)
                for key in list(self.held):
                    self._release_held(key)
            else:
                self.guard.sample(now)
                for key, at in list(self.waiting.items()):
                    if at <= now:
                        del self.waiting[key]
                        self.held[key] = None
                self._fill()
            if not self.active and not self.waiting:
                # Nothing runs and nothing waits: whatever is held cannot start (its
                # worker stopped, the budget is spent); it stays pending.
                for key in list(self.held):
                    self._release_held(key)
                if self.draining and not self.schedule.done():
                    self.interrupted = True  # tasks are left pending
                break
            for msg in self._messages():
                self._dispatch(msg)

    def _messages(self) -> list[_Attempt | _Done | _NotStarted]:
        """What the tasks reported. While there is nothing, waits in the reactor (which
        runs the loop's own tasks' steps meanwhile) up to 0.2 s, so that a cancel or a
        drain is seen."""
        out = self._queued()
        if not out:
            self.reactor.wait(0.2)
            out = self._queued()
        return out

    def _queued(self) -> list[_Attempt | _Done | _NotStarted]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.queue.get_nowait())
        return out

    def _dispatch(self, msg: _Attempt | _Done | _NotStarted) -> None:
        if isinstance(msg, _Attempt):
            self._on_attempt(msg)
        elif isinstance(msg, _NotStarted):
            self.active.pop(msg.key, None)
            self.schedule.release(msg.key)
            prog = self.progress.get(msg.key)
            task = self.runs[msg.key[0]].spec.task(msg.key[1])
            if prog is not None and prog.resume.attempt > task.attempts:
                self._back_to_pending(msg.key)  # it had run, then waited out a limit
            else:
                self.started_at.pop(msg.key, None)
                self.progress.pop(msg.key, None)
        else:
            self.active.pop(msg.key, None)
            self._on_done(msg)

    # How many ready tasks the loop takes from the schedule beyond what can start now
    # (tasks of a worker at its limit): enough that another worker's tasks behind them
    # still start, without moving a whole large spec into the held list.
    HELD_MAX_PER_JOB = 4

    def _sync_jobs(self) -> None:
        self.schedule.set_jobs(self.opts.jobs + len(self.held) + len(self.waiting))

    def _fill(self) -> None:
        """Start what may start: ready tasks in the schedule's order, as far as each
        worker's limit, the breaker, the budget and the resource guard allow."""
        started = False
        guard_reason = None
        while True:
            pulled = False
            if len(self.held) < self.HELD_MAX_PER_JOB * self.opts.jobs:
                self._sync_jobs()
                for key in self.schedule.start_ready():
                    self.held[key] = None
                    pulled = True
            now_started, guard_reason = self._start_held()
            started = started or now_started
            # Tasks taken but not startable (their worker stopped, at its limit): take
            # the next ones while slots are free, so other workers' tasks still start.
            if not pulled or guard_reason is not None or len(self.active) >= self.opts.jobs:
                break
        self._sync_jobs()
        if guard_reason is not None and self.resource_wait is None:
            self.resource_wait = (time.time(), guard_reason)
            self._fleet_event("resource_wait", reason=guard_reason, held=len(self.held))
        elif self.resource_wait is not None and (started or not self.held):
            since, why = self.resource_wait
            self.resource_wait = None
            seconds = round(time.time() - since, 3)
            self.resource_waits.append(
                {"t": utc_iso(since, ms=True), "seconds": seconds, "why": why}
            )
            self._fleet_event("resource_ok", seconds=seconds)

    def _start_held(self) -> tuple[bool, str | None]:
        """Start the held tasks that may start; (any started, why the guard held)."""
        started = False
        per_worker: dict[str, int] = {}
        for w in self.active.values():
            per_worker[w] = per_worker.get(w, 0) + 1
        guard_reason = None
        for key in list(self.held):
            if len(self.active) >= self.opts.jobs:
                break
            worker = self.worker_ids[key]
            if worker in self.broken or self._budget_reason(key[0]) is not None:
                continue
            if per_worker.get(worker, 0) >= self.concurrency.limit(worker):
                continue
            if self.active:  # with nothing running, one task may always start
                guard_reason = self.guard.busy()
                if guard_reason is not None:
                    break
            del self.held[key]
            per_worker[worker] = per_worker.get(worker, 0) + 1
            self._start(key)
            started = True
        return started, guard_reason

    def _fleet_event(self, kind: str, **fields: Any) -> None:
        """A run-wide fleet event: on screen and in every spec's event log."""
        self.reporter.event(kind, **fields)
        for r in self.runs.values():
            r.events.append(kind, **fields)
        self._write_fleet_state()

    def _write_fleet_state(self) -> None:
        """What `specexec status` shows of a live run beyond tasks.json: the workers'
        current limits, the run's cost and tokens, why no task starts (if so)."""
        doc = {
            "run_id": self.run_id,
            "updated": None,
            "jobs": self.opts.jobs,
            "limits": dict(self.concurrency.limits),
            "cost_usd": round(self.cost_usd, 6),
            "tokens": self.tokens,
            "resource_wait": self.resource_wait[1] if self.resource_wait else None,
            "budget_reached": self.budget_stop,
            "stopped_workers": dict(self.broken),
        }
        # Written at every task's end, but it is a display aid: the same content is written
        # again only once a second ("updated" still says the run is alive), not per task.
        same = json.dumps(doc)
        now = time.monotonic()
        last = self._fleet_written
        if last is not None and last[0] == same and now - last[1] < 1.0:
            return
        self._fleet_written = (same, now)
        doc["updated"] = utc_iso(ms=True)
        text = json.dumps(doc) + "\n"
        for r in self.runs.values():
            with contextlib.suppress(OSError):  # a display aid: never fails the run
                atomic_write(r.spec.runtime_dir / FLEET_STATE, text, durable=False)

    def _budget_reason(self, spec_name: str) -> str | None:
        """Why no task of this spec may start (a budget is spent), or None."""
        o, spec = self.opts, self.runs[spec_name].spec
        cost, tokens = self.spend[spec_name]
        if o.max_cost_usd is not None and self.cost_usd >= o.max_cost_usd:
            return f"cost budget reached: ${self.cost_usd:.4f} of --max-cost ${o.max_cost_usd:g}"
        if o.max_tokens is not None and self.tokens >= o.max_tokens:
            return f"token budget reached: {self.tokens} of --max-tokens {o.max_tokens}"
        if spec.max_cost_usd is not None and cost >= spec.max_cost_usd:
            return (
                f"cost budget reached: ${cost:.4f} of defaults.max_cost_usd "
                f"${spec.max_cost_usd:g} ({spec_name})"
            )
        if spec.max_tokens is not None and tokens >= spec.max_tokens:
            return (
                f"token budget reached: {tokens} of defaults.max_tokens {spec.max_tokens} "
                f"({spec_name})"
            )
        return None

    def _spend(self, key: Key, msg: _Done) -> None:
        """Count what an attempt cost; say so once a budget is reached."""
        n = fleet.token_count(msg.tokens)
        cost = msg.cost_usd or 0.0
        self.cost_usd += cost
        self.tokens += n
        c, t = self.spend[key[0]]
        self.spend[key[0]] = (c + cost, t + n)
        if self.budget_stop is None and (why := self._budget_reason(key[0])) is not None:
            self.budget_stop = why
            self._fleet_event("notice", message=f"{why}: no new task starts; running ones finish")

    def _release_held(self, key: Key) -> None:
        """A task taken from the schedule but never (re)started goes back to pending."""
        del self.held[key]
        self.schedule.release(key)
        if key in self.progress:  # it ran before a wait: tasks.json says in_progress
            self._back_to_pending(key)

    def _release_waiting(self, key: Key) -> None:
        del self.waiting[key]
        self.schedule.release(key)
        self._back_to_pending(key)

    def _back_to_pending(self, key: Key) -> None:
        prog = self.progress.pop(key)
        task = self.runs[key[0]].spec.task(key[1])
        self._set(
            key,
            "in_progress",
            "pending",
            prog.resume.attempt,
            started_at=DELETE,
            waiting_until=DELETE,
            attempts=prog.resume.attempt,
        )
        self.records[key] = TaskRecord(
            spec=key[0],
            task=key[1],
            status="pending",
            summary=task.summary,
            blocker=self._why_not_started(key) or "interrupted",
            attempts=prog.resume.attempt - task.attempts,
            waits=prog.waits,
            waited_seconds=round(prog.waited_s, 3),
            cost_usd=prog.cost_usd,
        )
        self.reporter.event("task_released", spec=key[0], task=key[1])

    def _why_not_started(self, key: Key) -> str | None:
        worker = self.worker_ids[key]
        if worker in self.broken:
            return f"not started: {self.broken[worker]}"
        if (why := self._budget_reason(key[0])) is not None:
            return f"not started: {why}"
        return None

    def _record_not_started(self) -> None:
        """With a budget spent or a worker stopped, the pending tasks left are part of
        the result (the run did not finish them): recorded as pending, with why."""
        if self.budget_stop is None and not self.broken and not self.interrupted:
            return
        for r in self.runs.values():
            for t in r.spec.tasks:
                key = (r.name, t.id)
                if key in self.records or self.schedule.state(key) != "pending":
                    continue
                why = self._why_not_started(key) or (
                    "not started: the run was interrupted" if self.interrupted else None
                )
                if why is None:
                    continue
                self.records[key] = TaskRecord(
                    spec=key[0], task=key[1], status="pending", summary=t.summary, blocker=why
                )

    def _on_attempt(self, msg: _Attempt) -> None:
        key = msg.key
        frm = (
            "pending"
            if msg.attempt == self.runs[key[0]].spec.task(key[1]).attempts + 1
            else "in_progress"
        )
        if frm == "pending" and self.slots is not None:
            self.started_at[key] = time.time()  # it started now, not when it began to wait
            if key in self.progress:
                self.progress[key].first_start = self.started_at[key]
        self._set(
            key,
            frm,
            "in_progress",
            msg.attempt,
            attempts=msg.attempt,
            started_at=utc_iso(self.started_at.get(key)),
            blocker=DELETE,
            completed_at=DELETE,
            waiting_until=DELETE,
        )
        self.reporter.event("task_started", spec=key[0], task=key[1], attempt=msg.attempt)

    def _on_done(self, msg: _Done) -> None:
        key, out = msg.key, msg.outcome
        prog = self.progress[key]
        if msg.resume is not None:
            prog.resume = replace(msg.resume)
        prog.worker_seconds += msg.worker_seconds
        if msg.cost_usd is not None:
            prog.cost_usd = (prog.cost_usd or 0.0) + msg.cost_usd
        for k, v in (msg.tokens or {}).items():
            prog.tokens[k] = prog.tokens.get(k, 0) + v
        self._spend(key, msg)
        if out.status == "cancelled":
            self._release_cancelled(msg)
            return
        worker = self.worker_ids[key]
        cls = out.error_class if out.status == "fail" else None
        if cls in fleet.TRANSIENT:
            new = self.concurrency.lower(worker, msg.attempt_start, cls or "")
            if new is not None:
                self._concurrency_event(worker, new, cls or "")
            if not self.stopping and not self.draining:
                waited = self._wait(key, msg)
                if waited is None:
                    return
                out = waited  # the wait budget is spent: it fails
        if cls in fleet.SYSTEMIC and worker not in self.broken:
            why = f"worker {worker} stopped after {cls} ({key[1]}: {out.blocker})"
            self.broken[worker] = why
            self._fleet_event("notice", message=f"{why}; no more tasks of it start", worker=worker)
        self._record_finished(msg, out)
        passed = out.status == "pass"
        blocked = self.schedule.finish(
            key, passed, "blocked" if out.status == "blocked" else "fail"
        )
        for bkey, reason in blocked:
            self._block(bkey, reason)
        self.progress.pop(key, None)
        if passed:
            new = self.concurrency.grow(worker)
            if new is not None:
                self._concurrency_event(worker, new, "success")
        elif self.opts.fail_fast and not self.stopping:
            self.stopping = True
            self.reporter.event(
                "notice", message=f"--fail-fast: {key[1]} failed; no new task starts"
            )

    def _concurrency_event(self, worker: str, limit: int, why: str) -> None:
        self._fleet_event("concurrency", worker=worker, limit=limit, why=why)

    def _wait(self, key: Key, msg: _Done) -> taskrun.AttemptOutcome | None:
        """Wait out a rate limit or overload: the task resumes at a later turn of the loop
        (None). If that would pass the spec's max_wait_minutes, the failed outcome."""
        out, prog = msg.outcome, self.progress[key]
        r = self.runs[key[0]]
        cls = out.error_class or "rate_limit"
        delay = fleet.backoff(
            prog.waits + 1,
            out.retry_after_s,
            base=self.opts.backoff_base_s,
            cap=self.opts.backoff_cap_s,
        )
        budget = r.spec.max_wait_minutes * 60
        if prog.waited_s + delay > budget:
            why = (
                f"{cls}: gave up after waiting {fmt.seconds(prog.waited_s)} "
                f"(defaults.max_wait_minutes {r.spec.max_wait_minutes:g}; next wait "
                f"{fmt.seconds(delay)}): {out.blocker}"
            )
            return replace(out, blocker=why, retryable=False)
        prog.waits += 1
        prog.waited_s += delay
        resume = time.time() + delay
        self.waiting[key] = resume
        self._sync_jobs()
        resume_at = utc_iso(resume, ms=True)
        blocker = f"{cls}: waiting until {resume_at}: {out.blocker}"
        r.writer.set(key[1], waiting_until=resume_at, error_class=cls, blocker=blocker)
        r.events.append(
            "task_waiting",
            task=key[1],
            attempt=msg.attempts,
            error_class=cls,
            seconds=round(delay, 3),
            resume_at=resume_at,
        )
        self.reporter.event(
            "task_waiting",
            spec=key[0],
            task=key[1],
            attempt=msg.attempts,
            error_class=cls,
            seconds=round(delay, 3),
            resume_at=resume_at,
            reason=out.blocker,
        )
        return None

    def _release_cancelled(self, msg: _Done) -> None:
        """An interrupted task goes back to pending, its attempt not counted."""
        key = msg.key
        task = self.runs[key[0]].spec.task(key[1])
        self.schedule.release(key)
        prog = self.progress.pop(key, None)
        self._set(
            key,
            "in_progress",
            "pending",
            msg.attempts,
            started_at=DELETE,
            attempts=max(msg.attempts - 1, task.attempts),
        )
        self.records[key] = TaskRecord(
            spec=key[0],
            task=key[1],
            status="pending",
            summary=task.summary,
            blocker="interrupted",
            # It ran until stopped: counted as interrupted, in task time and concurrency.
            start=prog.first_start if prog is not None else msg.start,
            end=msg.end,
            worker_seconds=prog.worker_seconds if prog is not None else msg.worker_seconds,
        )
        self.reporter.event("task_released", spec=key[0], task=key[1])

    def _record_finished(self, msg: _Done, out: taskrun.AttemptOutcome) -> None:
        """A finished task's outcome: in tasks.json, in the run's records, on screen."""
        key = msg.key
        r = self.runs[key[0]]
        task = r.spec.task(key[1])
        prog = self.progress[key]
        res = out.result
        result_doc = res.to_json() if res is not None else None
        if result_doc is not None:
            r.results[key[1]] = result_doc
        start = prog.first_start
        seconds = msg.end - start
        passed = out.status == "pass"
        cls = None if passed else (out.error_class or "worker_failed")
        fields: dict[str, Any] = {
            "attempts": msg.attempts,
            "completed_at": utc_iso(msg.end),
            "duration_minutes": round(seconds / 60, 3),
            "blocker": out.blocker if out.blocker else DELETE,
            "error_class": cls if cls else DELETE,
            "waiting_until": DELETE,
            "files_changed": list(out.files_changed),
            "scope_violations": list(out.scope_violations),
            "cost_usd": round(prog.cost_usd, 6) if prog.cost_usd is not None else DELETE,
            "tokens": dict(prog.tokens) if prog.tokens else DELETE,
        }
        if result_doc is not None:
            fields["result"] = result_doc
        if out.commit:
            fields["commit"] = out.commit
        fields["branch"] = out.branch if out.branch else DELETE
        # Within this task's share of tasks.json; the rest goes to the run folder.
        fields = bound_record(r.store, key[1], fields, r.run_dir)
        self._set(key, "in_progress", out.status, msg.attempts, **fields)
        log = r.run_dir / f"{key[1]}.log"
        has_log = log.is_file()
        why = tuple(log_excerpt(log)) if out.status == "fail" and has_log else ()
        if passed and out.branch_to_delete:
            self.branches_to_delete.append((r, out.branch_to_delete))
        self.records[key] = TaskRecord(
            spec=key[0],
            task=key[1],
            status=out.status,
            attempts=msg.attempts - task.attempts,
            start=start,
            end=msg.end,
            worker_seconds=prog.worker_seconds,
            blocker=out.blocker,
            summary=task.summary,
            notes=res.notes if res else None,
            data=list(res.data) if res is not None and res.data is not None else None,
            cost_usd=prog.cost_usd,
            tokens=dict(prog.tokens) if prog.tokens else None,
            branch=out.branch,
            commit=out.commit,
            scope_violations=out.scope_violations,
            retried=prog.resume.retried,
            wave=r.waves.get(key[1]),
            critical=key[1] in self.critical[key[0]],
            error_class=cls,
            waits=prog.waits,
            waited_seconds=round(prog.waited_s, 3),
            log=str(log) if has_log else None,
            excerpt=why,
        )
        if passed and task.estimate > 0:
            self._pace.append(max(seconds, 0.001) / task.estimate)
        self._write_fleet_state()
        self.reporter.event(
            "task_finished",
            spec=key[0],
            task=key[1],
            status=out.status,
            seconds=seconds,
            attempts=msg.attempts,
            blocker=out.blocker,
            scope_violations=list(out.scope_violations),
            commit=out.commit,
            error_class=cls,
            cost_usd=prog.cost_usd,
            tokens=dict(prog.tokens) if prog.tokens else None,
            total_cost_usd=round(self.cost_usd, 6),
            total_tokens=self.tokens,
            log=str(log) if has_log else None,
            excerpt=list(why),
        )


_Make = Callable[[int, float, tuple[str, ...], bool], taskrun.AttemptContext]
_TaskSteps = taskrun.Steps[_Done]
