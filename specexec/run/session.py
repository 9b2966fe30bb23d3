"""A run of one or more spec folders, for ``specexec run`` and the daemon alike: load and
check every folder before anything is written, recover what a dead run left, plan, run
the executor, write the report."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from specexec.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TASK_FAILED, InvalidInput
from specexec.git.repo import find_repo_root
from specexec.plan import planner, schedule
from specexec.run import checks
from specexec.run.executor import Executor, RunOptions, SpecRun, new_run_id
from specexec.run.progress import Reporter, make_reporter
from specexec.run.recovery import recover, sweep_workers
from specexec.run.report import render_markdown, summary_lines
from specexec.tasksfile import bounds
from specexec.tasksfile.events import EventLog
from specexec.tasksfile.reset import reset_tasks
from specexec.tasksfile.runlock import RunLock
from specexec.tasksfile.schema import load_spec
from specexec.tasksfile.store import CoalescingWriter, TasksStore, private_dir, runtime_dir
from specexec.tasksfile.types import Spec

if TYPE_CHECKING:
    from specexec.git.workspace import Workspace

__all__ = ["RunOptions", "run_specs"]


def _load_all(spec_dirs: Sequence[str]) -> list[Spec]:
    """Every spec folder, with the problems of all of them reported together."""
    specs: list[Spec] = []
    problems: list[str] = []
    for d in spec_dirs:
        try:
            specs.append(load_spec(d)[0])
        except InvalidInput as e:
            problems.extend(e.problems)
    if problems:
        raise InvalidInput(f"{len(problems)} problem(s) in the spec folders", problems)
    # Checked before any lock is taken or file written (the executor would refuse them only
    # after every folder was prepared; the same folder twice would wait for its own lock).
    first: dict[str, Path] = {}
    for spec in specs:
        if spec.name in first:
            problems.append(
                f"{spec.dir}: spec name {spec.name!r} is also the name of {first[spec.name]}"
            )
        first.setdefault(spec.name, spec.dir)
    if problems:
        raise InvalidInput("two spec folders given to one run have the same spec name", problems)
    return specs


def _workers(spec: Spec, opts: RunOptions) -> dict[str, Any]:
    """The resolved worker of each task, refusing what cannot run (all problems at once)."""
    workers, problems = checks.workers(spec, opts)
    if problems:
        raise InvalidInput(f"{spec.tasks_file}: {len(problems)} task(s) cannot run", problems)
    return workers


@contextlib.contextmanager
def _signals(cancel: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM stop the run cleanly: running workers are stopped, tasks go back
    to pending. A second signal is not special: cleanup is already under way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        cancel.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _dry_run(specs: Sequence[Spec], opts: RunOptions) -> int:
    for spec in specs:
        _workers(spec, opts)
    sched = schedule.Schedule([(s.name, s.tasks) for s in specs], opts.jobs, opts.schedule)
    order = sched.dry_run_order()
    print(f"dry run: {len(order)} task(s) would run, --jobs {opts.jobs}, schedule {opts.schedule}")
    for n, key in enumerate(order, 1):
        print(f"{n:4}. {key[0]}/{key[1]:24} {sched.why_waiting(key)}")
    for key, reason in sched.initially_blocked():
        print(f"   -  {key[0]}/{key[1]:24} will not run: {reason}")
    skipped = [
        f"{s.name}/{t.id} ({t.status})"
        for s in specs
        for t in s.tasks
        if t.status not in ("pending",) and (s.name, t.id) not in dict(sched.initially_blocked())
    ]
    if skipped:
        print("not run (not pending): " + ", ".join(skipped))
    return EXIT_OK


def run_specs(
    spec_dirs: Sequence[str],
    opts: RunOptions,
    reporter: Reporter | None = None,
    *,
    cancel: threading.Event | None = None,
    slots: threading.BoundedSemaphore | None = None,
    drain: threading.Event | None = None,
) -> int:
    """Run the pending tasks of ``spec_dirs``; the exit code.

    For callers that run several of these at once in threads (the daemon): ``cancel``
    stops running workers (their tasks go back to pending), ``drain`` stops starting
    tasks, ``slots`` is a job pool shared with the other runs, and with a ``reporter``
    of their own the summary is a ``run_finished`` event instead of lines on stdout."""
    specs = _load_all(spec_dirs)
    # Every check that can refuse the run, before the first lock or write: an exit 2
    # leaves no trace (and `validate` runs the same checks).
    checks.refuse(specs, opts)
    if opts.dry_run:
        return _dry_run(specs, opts)
    # Two folders of one spec name would run into one integration branch: the second
    # is refused naming both, before anything of it is written.
    claims = checks.name_claims(specs, opts)
    for claim in claims:
        claim.check()
    run_id = new_run_id()
    cancel = cancel if cancel is not None else threading.Event()
    with contextlib.ExitStack() as stack:
        for spec in specs:
            stack.enter_context(RunLock(spec.dir, wait=opts.wait, run_id=run_id))
        for claim in claims:
            stack.enter_context(claim)
        # Every folder is checked before any is changed: one that refuses the run leaves
        # the tasks.json of the others as it was too.
        checked = [_check(spec, opts, run_id) for spec in specs]
        runs = [_start(c, opts, reporter) for c in checked]
        for r in runs:
            stack.callback(r.events.close)
        specs = [r.spec for r in runs]
        rep = reporter or make_reporter(opts.json)
        stack.callback(rep.close)
        executor = Executor(runs, opts, rep, run_id, cancel, slots=slots, drain=drain)
        if hasattr(rep, "eta"):
            rep.eta = executor.eta_seconds
        with _signals(cancel):
            metrics = executor.run()
        rep.close()
        for r in runs:
            try:
                # Compact: with an indent, json runs its pure-Python encoder (1,000
                # task records take a noticeable part of a short run).
                (r.run_dir / "run.json").write_text(json.dumps(metrics, default=str) + "\n")
                (r.run_dir / "report.md").write_text(render_markdown(metrics))
            except OSError as e:
                # The tasks' states are in tasks.json already; a full disk costs the report.
                print(
                    f"specexec: {r.run_dir}: cannot write the run report: {e.strerror or e}",
                    file=sys.stderr,
                )
        if opts.json or reporter is not None:
            rep.event("run_finished", **{k: v for k, v in metrics.items() if k != "records"})
        else:
            print()
            for line in summary_lines(metrics):
                print(line)
            print(f"report: {runs[0].run_dir / 'report.md'}")
    if executor.interrupted:
        return EXIT_INTERRUPTED
    t = metrics["tasks"]
    return EXIT_TASK_FAILED if (t["fail"] or t["blocked"] or t["pending"]) else EXIT_OK


@dataclass(frozen=True, slots=True)
class _Checked:
    """A spec folder that passed every check of a run; tasks.json not written yet."""

    spec: Spec
    store: TasksStore
    events: EventLog
    workspace: Workspace | None
    run_dir: Path


def _check(spec: Spec, opts: RunOptions, run_id: str) -> _Checked:
    """Everything that can refuse the run of ``spec`` (run lock held).

    It comes before the first write of tasks.json: invalid input (a planted link, a task
    that cannot run, no repository) gets a clear error and leaves tasks.json unchanged."""
    store = TasksStore(spec.dir)
    events = EventLog(spec.dir, run_id)
    # First thing: a log or a runs folder that cannot be written (a planted link) refuses
    # the run before anything else happens.
    events.append("run_started", jobs=opts.jobs, schedule=opts.schedule)
    runs = private_dir(runtime_dir(spec.dir) / "runs")
    sweep_workers(spec)  # worker groups a dead run left
    root = find_repo_root(spec.dir)
    ws: Workspace | None = None
    if checks.needs_git(spec, opts) and root is None:
        raise InvalidInput(
            f"{spec.dir}: not inside a git repository; tasks need one for their worktrees "
            "(or use --isolation none for tasks that change nothing)"
        )
    if root is not None and checks.uses_worktrees(spec, opts):
        # Even when every task passed: a dead run may have left merged branches behind.
        from specexec.git.workspace import Workspace  # worktrees only: --isolation none skips it

        ws = Workspace(root)
    _workers(spec, opts)
    if ws is not None:
        ws.ensure_integration_branch(spec.name, spec.base_ref)
    run_dir = private_dir(runs / run_id)
    return _Checked(spec, store, events, ws, run_dir)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _start(checked: _Checked, opts: RunOptions, reporter: Reporter | None) -> SpecRun:
    """Recovery, ``--retry-failed`` and the plan: the writes of tasks.json before the
    tasks start. Nothing here refuses the run."""
    spec, store, events, ws = checked.spec, checked.store, checked.events, checked.workspace
    before = _identity(spec.tasks_file)
    for note in recover(spec, store, events, ws):
        if reporter is not None:
            reporter.event("notice", message=f"recovered {spec.name}/{note}")
        else:
            print(f"recovered {spec.name}/{note}", file=sys.stderr)
    if opts.retry_failed:
        reset_tasks(store, events, failed=True)
    if _identity(spec.tasks_file) != before:
        spec = load_spec(spec.dir)[0]  # the state after recovery and reset
    # Recovery and reset only turn tasks that _check() saw not passed into `pending` or
    # `pass`: no task is refused here that was not refused there.
    workers = _workers(spec, opts)
    plan = planner.make_plan(spec.tasks, opts.jobs)
    store.update(top={"execution_strategy": planner.execution_strategy(plan)})
    bounds.plan_records(store, spec)  # each task's share of the room left in tasks.json
    waves = {tid: w.wave_id for w in plan.waves for tid in w.tasks}
    results = {
        t.id: bounds.full_result(spec.dir, t.raw["result"])
        for t in spec.tasks
        if isinstance(t.raw.get("result"), dict)
    }
    return SpecRun(
        spec=spec,
        store=store,
        writer=CoalescingWriter(store),
        events=events,
        workspace=ws,
        run_dir=checked.run_dir,
        workers=workers,
        waves=waves,
        results=results,
        plan=plan,
    )


def prepare(spec: Spec, opts: RunOptions, run_id: str, reporter: Reporter | None = None) -> SpecRun:
    """Everything a spec folder needs before its tasks start (run lock held): every
    check first, then the writes."""
    return _start(_check(spec, opts, run_id), opts, reporter)
