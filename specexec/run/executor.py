"""The run loop (DESIGN §2, §3, §5): one single-threaded loop owns every piece of state;
worker threads run one task each and report back through a queue."""

from __future__ import annotations

import functools
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from specexec.errors import InvalidInput
from specexec.git.pool import open_pools
from specexec.git.repo import find_repo_root
from specexec.git.workspace import Workspace
from specexec.plan import planner, schedule
from specexec.run import attempt as taskrun
from specexec.run.handoff import merge_data
from specexec.run.processes import worker_env
from specexec.run.progress import Reporter
from specexec.run.prompt import MergedInput, ParallelContext
from specexec.run.report import TaskRecord, run_metrics
from specexec.system import utc_iso, utc_stamp
from specexec.tasksfile.events import EventLog
from specexec.tasksfile.store import DELETE, CoalescingWriter, TasksStore
from specexec.tasksfile.types import Spec, Task, WorkerConfig

Key = tuple[str, str]

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
class _Done:
    key: Key
    outcome: taskrun.AttemptOutcome
    attempts: int
    retried: int
    start: float
    end: float
    worker_seconds: float


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
        self.failures_since_pass = 0
        self.stopping = False
        self.interrupted = False
        self.pending_at_start = sum(1 for r in runs for t in r.spec.tasks if t.status == "pending")
        self.plans = {r.name: r.plan or planner.make_plan(r.spec.tasks, opts.jobs) for r in runs}
        self.critical = {name: plan.critical_path for name, plan in self.plans.items()}
        self.base_env = worker_env(None)
        # Seconds per estimated minute, learnt from finished tasks (for the ETA).
        self._pace: list[float] = []

    # -- state changes (loop thread only) ----------------------------------------------

    def _set(self, key: Key, frm: str | None, to: str, attempt: int | None, **fields: Any) -> None:
        r = self.runs[key[0]]
        # The event is on disk before the state is acted on; tasks.json follows coalesced.
        r.events.transition(
            key[1],
            frm,
            to,
            attempt=attempt,
            **{k: v for k, v in fields.items() if v is not DELETE and k in ("blocker",)},
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
        self.started_at[key] = time.time()
        ctx_for = self._context_factory(r, task)
        self.pool.submit(self._work, key, ctx_for, task)

    def _context_factory(
        self, r: SpecRun, task: Task
    ) -> Callable[[int, float], taskrun.AttemptContext]:
        running = [k for k in self.schedule.running if k != (r.name, task.id)]
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

        def make(attempt: int, timeout: float) -> taskrun.AttemptContext:
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
            )

        return make

    # -- worker threads ----------------------------------------------------------------

    def _take_slot(self) -> bool:
        """Wait for a slot of the shared pool; False if drained or cancelled meanwhile."""
        assert self.slots is not None
        while not self.cancel.is_set() and not (self.drain is not None and self.drain.is_set()):
            if self.slots.acquire(timeout=0.1):
                return True
        return False

    def _work(
        self, key: Key, make: Callable[[int, float], taskrun.AttemptContext], task: Task
    ) -> None:
        if self.slots is not None:
            if not self._take_slot():
                self.queue.put(_NotStarted(key))
                return
            try:
                self._work_in_slot(key, make, task)
            finally:
                self.slots.release()
        else:
            self._work_in_slot(key, make, task)

    def _work_in_slot(
        self, key: Key, make: Callable[[int, float], taskrun.AttemptContext], task: Task
    ) -> None:
        start = time.time()
        retries = self.opts.retries if self.opts.retries is not None else task.max_retries
        timeout = self.opts.timeout_minutes or task.timeout_minutes
        attempt = task.attempts
        worker_seconds = 0.0
        tries = 0
        outcome: taskrun.AttemptOutcome
        try:
            while True:
                attempt += 1
                tries += 1
                self.queue.put(_Attempt(key, attempt))
                outcome = taskrun.run_attempt(make(attempt, timeout))
                worker_seconds += outcome.worker_seconds
                if outcome.status in ("pass", "cancelled", "blocked") or not outcome.retryable:
                    break
                if tries > retries or self.cancel.is_set():
                    break
                if outcome.timed_out:
                    timeout *= 1.5  # a timed-out attempt gets more time next
                self.reporter.event(
                    "task_retry",
                    spec=key[0],
                    task=key[1],
                    attempt=attempt + 1,
                    reason=outcome.blocker or "failed",
                )
        except BaseException as e:
            outcome = taskrun.AttemptOutcome(
                "fail", f"internal error: {type(e).__name__}: {e}", retryable=False
            )
        self.queue.put(_Done(key, outcome, attempt, tries - 1, start, time.time(), worker_seconds))

    # -- the loop ----------------------------------------------------------------------

    def eta_seconds(self) -> float | None:
        """Remaining time: the eager simulation of what is left, at the observed pace."""
        pace = sorted(self._pace)[len(self._pace) // 2] if self._pace else 60.0
        groups = []
        now = time.time()
        for r in self.runs.values():
            left = []
            for t in r.spec.tasks:
                state = self.schedule.state((r.name, t.id))
                if state == "pending":
                    left.append(replace(t, status="pending"))
                elif state == "running":
                    done_min = (now - self.started_at.get((r.name, t.id), now)) / pace
                    left.append(
                        replace(
                            t, status="pending", estimated_minutes=max(t.estimate - done_min, 0.01)
                        )
                    )
            ids = {t.id for t in left}
            left = [replace(t, blocked_by=tuple(b for b in t.blocked_by if b in ids)) for t in left]
            if left:
                groups.append((r.name, left))
        if not groups:
            return 0.0
        makespan, _ = schedule.simulate(groups, self.schedule.jobs)
        return makespan * pace

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
        self.worktree_pools = (
            open_pools(
                [r.workspace for r in self.runs.values() if r.workspace is not None],
                self.opts.jobs,
                clean_ignored=self.opts.clean_ignored,
            )
            if self.opts.pool and not self.opts.keep_worktrees
            else {}
        )
        self.pool = ThreadPoolExecutor(
            max_workers=self.opts.jobs, thread_name_prefix="specexec-task"
        )
        try:
            self._loop()
        finally:
            self.pool.shutdown(wait=True)
            for wt_pool in self.worktree_pools.values():
                wt_pool.close()
            for r in self.runs.values():
                r.writer.close()  # final flush: every transition is on disk
            for r, branch in self.branches_to_delete:
                if r.workspace is not None:
                    r.workspace.delete_branch(branch)
        finished = time.time()
        records = []
        for r in self.runs.values():
            for t in r.spec.tasks:
                key = (r.name, t.id)
                if key in self.records:
                    records.append(self.records[key])
        waves = []
        for r in self.runs.values():
            waves.extend(planner.execution_strategy(self.plans[r.name])["waves"])
        return run_metrics(
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
            if not self.stopping and not self.draining:
                for key in self.schedule.start_ready():
                    self._start(key)
            if not self.schedule.running:
                if self.draining and not self.schedule.done():
                    self.interrupted = True  # tasks are left pending
                break
            try:
                msg = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(msg, _Attempt):
                self._on_attempt(msg)
            elif isinstance(msg, _NotStarted):
                self.schedule.release(msg.key)
                self.started_at.pop(msg.key, None)
            else:
                self._on_done(msg)

    def _on_attempt(self, msg: _Attempt) -> None:
        key = msg.key
        frm = (
            "pending"
            if msg.attempt == self.runs[key[0]].spec.task(key[1]).attempts + 1
            else "in_progress"
        )
        if frm == "pending" and self.slots is not None:
            self.started_at[key] = time.time()  # it started now, not when it began to wait
        self._set(
            key,
            frm,
            "in_progress",
            msg.attempt,
            attempts=msg.attempt,
            started_at=utc_iso(self.started_at.get(key)),
            blocker=DELETE,
            completed_at=DELETE,
        )
        self.reporter.event("task_started", spec=key[0], task=key[1], attempt=msg.attempt)

    def _on_done(self, msg: _Done) -> None:
        key, out = msg.key, msg.outcome
        if out.status == "cancelled":
            self._release_cancelled(msg)
            return
        self._record_finished(msg)
        passed = out.status == "pass"
        blocked = self.schedule.finish(
            key, passed, "blocked" if out.status == "blocked" else "fail"
        )
        for bkey, reason in blocked:
            self._block(bkey, reason)
        if passed:
            self.failures_since_pass = 0
        else:
            self._after_failure(key)

    def _release_cancelled(self, msg: _Done) -> None:
        """An interrupted task goes back to pending, its attempt not counted."""
        key = msg.key
        task = self.runs[key[0]].spec.task(key[1])
        self.schedule.release(key)
        self._set(
            key,
            "in_progress",
            "pending",
            msg.attempts,
            started_at=DELETE,
            attempts=max(msg.attempts - 1, task.attempts),
        )
        self.records[key] = TaskRecord(
            spec=key[0], task=key[1], status="pending", summary=task.summary, blocker="interrupted"
        )
        self.reporter.event("task_released", spec=key[0], task=key[1])

    def _record_finished(self, msg: _Done) -> None:
        """A finished attempt's outcome: in tasks.json, in the run's records, on screen."""
        key, out = msg.key, msg.outcome
        r = self.runs[key[0]]
        task = r.spec.task(key[1])
        res = out.result
        result_doc = res.to_json() if res is not None else None
        if result_doc is not None:
            r.results[key[1]] = result_doc
        seconds = msg.end - msg.start
        fields: dict[str, Any] = {
            "attempts": msg.attempts,
            "completed_at": utc_iso(msg.end),
            "duration_minutes": round(seconds / 60, 3),
            "blocker": out.blocker if out.blocker else DELETE,
            "files_changed": list(out.files_changed),
            "scope_violations": list(out.scope_violations),
        }
        if result_doc is not None:
            fields["result"] = result_doc
        if out.commit:
            fields["commit"] = out.commit
        fields["branch"] = out.branch if out.branch else DELETE
        passed = out.status == "pass"
        self._set(key, "in_progress", out.status, msg.attempts, **fields)
        if passed and out.branch_to_delete:
            self.branches_to_delete.append((r, out.branch_to_delete))
        self.records[key] = TaskRecord(
            spec=key[0],
            task=key[1],
            status=out.status,
            attempts=msg.attempts - task.attempts,
            start=msg.start,
            end=msg.end,
            worker_seconds=msg.worker_seconds,
            blocker=out.blocker,
            summary=task.summary,
            notes=res.notes if res else None,
            data=list(res.data) if res is not None and res.data is not None else None,
            cost_usd=res.cost_usd if res else None,
            tokens=dict(res.tokens) if res and res.tokens else None,
            branch=out.branch,
            commit=out.commit,
            scope_violations=out.scope_violations,
            retried=msg.retried,
            wave=r.waves.get(key[1]),
            critical=key[1] in self.critical[key[0]],
        )
        if passed and task.estimate > 0:
            self._pace.append(max(seconds, 0.001) / task.estimate)
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
        )

    def _after_failure(self, key: tuple[str, str]) -> None:
        self.failures_since_pass += 1
        if self.opts.fail_fast and not self.stopping:
            self.stopping = True
            self.reporter.event(
                "notice", message=f"--fail-fast: {key[1]} failed; no new task starts"
            )
        elif self.schedule.jobs > 1 and self.failures_since_pass >= self.schedule.jobs:
            # Pattern 003: when every worker in flight fails at once, something shared is
            # wrong (rate limits, a broken base); go on one task at a time.
            self.schedule.set_jobs(1)
            self.reporter.event(
                "notice",
                message=f"the last {self.failures_since_pass} tasks in flight all failed: "
                "running one task at a time from now on",
            )
