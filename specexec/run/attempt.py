"""One attempt of one task, from worktree to merge (DESIGN §3), as steps that a worker
thread or the executor's loop drives; touches nothing but its own worktree, its run files
and the git layer."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from specexec.errors import SpecexecError
from specexec.git import refs
from specexec.plan import patterns as paths
from specexec.run.processes import ProcessOutcome, ProcessRequest, worker_env
from specexec.run.prompt import (
    BlockerResult,
    MergedInput,
    ParallelContext,
    RenderCancelled,
    render_prompt,
)
from specexec.tasksfile.types import Spec, Task, WorkerConfig
from specexec.workers.agent import Agent
from specexec.workers.invocation import Invocation, build_invocation
from specexec.workers.registry import AGENTS
from specexec.workers.result import RESULT_FILE_MAX_BYTES, WorkerResult, parse_result

if TYPE_CHECKING:
    from specexec.git.pool import WorktreePool
    from specexec.git.workspace import Workspace, Worktree


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """Everything one attempt needs, fixed before it starts."""

    spec: Spec
    task: Task
    worker: WorkerConfig | None
    run_id: str
    run_dir: Path
    attempt: int
    timeout_minutes: float
    workspace: Workspace | None  # None: isolation "none"
    cwd: Path  # the repository root, for isolation "none"
    parallel: ParallelContext
    inputs: tuple[BlockerResult, ...]
    merged: MergedInput | None
    strict_scope: bool
    keep_worktree: bool
    cancel: threading.Event
    registry_dir: Path
    grace_s: float = 5.0
    pool: WorktreePool | None = None  # None: a fresh worktree per attempt (--no-pool)
    # The workers' environment before the SPECEXEC_* variables (worker_env(None)), made
    # once per run: cleaning os.environ for every task costs more than starting `true`.
    base_env: Mapping[str, str] | None = None
    # A rerun after a merge conflict (on_conflict "rerun"): the paths that conflicted,
    # for the prompt; and whether a conflict now keeps the branch under another name.
    conflicts: tuple[str, ...] = ()
    rerun_on_conflict: bool = False


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    status: str  # pass | fail | blocked | cancelled
    blocker: str | None = None
    result: WorkerResult | None = None
    worker_seconds: float = 0.0
    timed_out: bool = False
    retryable: bool = True
    files_changed: tuple[str, ...] = ()
    scope_violations: tuple[str, ...] = ()
    commit: str | None = None  # the integration commit that holds the change
    branch: str | None = None
    branch_to_delete: str | None = None  # merged: delete once `pass` is on disk
    extra: dict[str, Any] = field(default_factory=dict)
    # Why it failed (one of workers.agent.ERROR_CLASSES), and the wait the agent stated.
    error_class: str | None = None
    retry_after_s: float | None = None
    conflicts: tuple[str, ...] = ()  # a merge conflict's paths


def _write_private(path: Path, text: str) -> None:
    # Task fields may hold lone surrogates (JSON allows "\ud800"): keep them visible as
    # escapes rather than failing the task.
    data = text.encode("utf-8", "backslashreplace")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _inputs_doc(ctx: AttemptContext) -> dict[str, Any]:
    return {
        "blockers": [
            {
                "id": b.task_id,
                "status": b.status,
                "summary": b.summary,
                "notes": b.notes,
                "data": b.data,
            }
            for b in ctx.inputs
        ],
        "merged": (
            {"strategy": ctx.merged.strategy, "items": list(ctx.merged.items)}
            if ctx.merged is not None
            else None
        ),
    }


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An attempt's worker, ready to start: where, what, with which environment."""

    cwd: Path
    files: Mapping[str, Path]  # the run folder's prompt.md, result.json, inputs.json, log
    result_file: Path  # where the worker writes its result
    invocation: Invocation
    env: Mapping[str, str]


_T = TypeVar("_T")

# Work as steps (an attempt, a task's attempts): it yields each process it needs run and
# is sent back its outcome, so that one driver may block on it (a thread) and another wait
# on many (the loop's reactor); it returns its result.
Steps = Generator[ProcessRequest, ProcessOutcome, _T]


def run_attempt(ctx: AttemptContext) -> AttemptOutcome:
    """The whole attempt in the calling thread."""
    return drive(attempt_steps(ctx))


def drive(
    steps: Steps[_T],
    value: ProcessOutcome | None = None,
    error: BaseException | None = None,
) -> _T:
    """Run ``steps`` on from ``value`` (None: from their start; or ``error`` raised in
    them) to their end in this thread, each process waited for in turn. An exception
    while a process runs is raised in the steps, at the step that asked for it."""
    while True:
        try:
            # None starts them
            req = steps.send(value) if error is None else steps.throw(error)  # type: ignore[arg-type]
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        try:
            value = req.run()
        except BaseException as e:
            error = e


def attempt_steps(ctx: AttemptContext) -> Steps[AttemptOutcome]:
    wt: Worktree | None = None
    out = AttemptOutcome("fail")
    try:
        if ctx.workspace is not None:
            from specexec.git.workspace import checkout_patterns  # worktrees only

            sparse = checkout_patterns(ctx.task)
            if ctx.pool is not None:
                wt = ctx.pool.acquire(ctx.spec.name, ctx.task.id, sparse=sparse)
            else:
                wt = ctx.workspace.create_worktree(ctx.spec.name, ctx.task.id, sparse=sparse)
        prep = _prepare(ctx, wt)
        proc = yield _request(ctx, prep, prep.invocation.command, prep.invocation.stdin_prompt)
        out = replace(out, worker_seconds=proc.duration_s)
        if proc.cancelled:
            _not_committed(ctx, wt, prep)
            return _cancelled(ctx, wt, out)
        problem = _process_problem(ctx, proc)
        if problem is not None:
            _not_committed(ctx, wt, prep)  # a timeout's kept branch too
            return _finish(ctx, wt, replace(out, **problem))
        out = _judge(ctx, wt, prep, proc, out)
        if out.status != "pass":
            return _finish(ctx, wt, out)
        if ctx.task.verify:
            vproc = yield _request(ctx, prep, ctx.task.verify, False)
            out = replace(out, worker_seconds=out.worker_seconds + vproc.duration_s)
            if vproc.cancelled:
                return _cancelled(ctx, wt, out)
            if vproc.returncode != 0:
                why = "timed out" if vproc.timed_out else f"exit code {vproc.returncode}"
                blocker = f"verify failed ({why}): {ctx.task.verify}"
                failed = replace(out, status="fail", blocker=blocker, error_class="verify_failed")
                return _finish(ctx, wt, failed)
        return _finish(ctx, wt, _land(ctx, wt, out))
    except RenderCancelled:
        return _cancelled(ctx, wt, out)
    except SpecexecError as e:
        # A problem of this task (bad placeholder, template error, git failure in its
        # worktree): the task fails with the reason; the run goes on.
        failed = replace(
            out, status="fail", blocker=str(e), retryable=False, error_class="worker_failed"
        )
        return _finish(ctx, wt, failed)


def _prepare(ctx: AttemptContext, wt: Worktree | None) -> _Prepared:
    """Write the prompt and inputs, build the command and the environment."""
    task, spec = ctx.task, ctx.spec
    cwd = wt.path if wt is not None else ctx.cwd
    files = {
        k: ctx.run_dir / f"{task.id}.{k}"
        for k in ("prompt.md", "result.json", "inputs.json", "log")
    }
    files["result.json"].unlink(missing_ok=True)
    # Inside the worktree: every agent sandbox allows writes there and refuses them
    # elsewhere. It is read, kept in the run folder and removed before the snapshot.
    result_file = cwd / RESULT_FILE if wt is not None else files["result.json"]
    if wt is not None:
        _unlink_file(result_file)
    _write_private(
        # Compact: with an indent, json runs its pure-Python encoder.
        files["inputs.json"],
        json.dumps(_inputs_doc(ctx), ensure_ascii=False) + "\n",
    )
    placeholders = {
        "prompt_file": str(files["prompt.md"]),
        "task_id": task.id,
        "worktree": str(cwd),
        "spec_dir": str(spec.dir),
    }
    inv = build_invocation(ctx.worker, task, placeholders)
    prompt = render_prompt(
        spec,
        task,
        parallel=ctx.parallel,
        inputs=ctx.inputs,
        merged=ctx.merged,
        result_file=RESULT_FILE if wt is not None else str(result_file),
        answer_block=inv.agent.answer_block if inv.agent is not None else True,
        conflicts=ctx.conflicts,
        cancel=ctx.cancel,
    )
    _write_private(files["prompt.md"], prompt)
    env = worker_env(
        ctx.base_env,
        task_id=task.id,
        spec_dir=spec.dir,
        worktree=cwd,
        prompt_file=files["prompt.md"],
        result_file=result_file,
        run_id=ctx.run_id,
        attempt=ctx.attempt,
    )
    if inv.agent is not None and inv.agent.env:
        env.update({k: v for k, v in inv.agent.env.items() if k not in env})
    env["SPECEXEC_INPUTS_FILE"] = str(files["inputs.json"])
    return _Prepared(cwd, files, result_file, inv, env)


def _request(
    ctx: AttemptContext, prep: _Prepared, command: str | tuple[str, ...], stdin_prompt: bool
) -> ProcessRequest:
    return ProcessRequest(
        command,
        cwd=prep.cwd,
        env=prep.env,
        stdin_path=prep.files["prompt.md"] if stdin_prompt else None,
        log_path=prep.files["log"],
        timeout_s=ctx.timeout_minutes * 60,
        grace_s=ctx.grace_s,
        cancel=ctx.cancel,
        registry_dir=ctx.registry_dir,
    )


def _process_problem(ctx: AttemptContext, proc: ProcessOutcome) -> dict[str, Any] | None:
    """Why the worker's process itself failed (it never started, or timed out), if so."""
    if proc.start_error is not None:
        return {
            "blocker": f"worker could not start: {proc.start_error}",
            "retryable": False,
            "error_class": "not_found",
        }
    if proc.timed_out:
        return {
            "blocker": f"timed out after {ctx.timeout_minutes:g} min",
            "timed_out": True,
            "error_class": "timeout",
        }
    return None


def _judge(
    ctx: AttemptContext,
    wt: Worktree | None,
    prep: _Prepared,
    proc: ProcessOutcome,
    out: AttemptOutcome,
) -> AttemptOutcome:
    """The attempt's outcome from the facts: the worker's result, then what it changed
    (specexec's own diff of the worktree, after removing what is never the change)."""
    task, agent = ctx.task, prep.invocation.agent
    result = parse_result(
        prep.result_file, prep.files["log"], proc.returncode, preset=prep.invocation.preset
    )
    out = replace(out, result=result)
    _not_committed(ctx, wt, prep)
    if wt is not None and ctx.workspace is not None:
        changed = tuple(ctx.workspace.changed_files(wt))
        out = replace(
            out,
            files_changed=changed,
            scope_violations=tuple(paths.scope_violations(changed, task.relevant_files)),
        )
    if result.status != "pass":
        blocked = result.status == "blocked"
        blocker = result.blocker or f"worker reported {result.status}"
        cls = result.error_class or "agent_error"
        if cls == "not_found" and result.source == "exit_code":
            blocker += " (126: not executable)" if proc.returncode == 126 else " (127: not found)"
        return replace(
            out,
            status="blocked" if blocked else "fail",
            retryable=not blocked,
            blocker=blocker,
            error_class=cls,
            retry_after_s=result.retry_after_s,
        )
    if wt is not None and not out.files_changed and _expects_changes(task, agent):
        why = "the worker reported pass but changed no file"
        if result.denials:
            why += "; the agent was denied: " + ", ".join(result.denials[:5])
        return replace(out, status="fail", blocker=why, error_class="no_change")
    if out.scope_violations and ctx.strict_scope:
        shown = ", ".join(out.scope_violations[:10])
        blocker = f"changed files outside relevant_files (--strict-scope): {shown}"
        # A check of the result that failed, like verify.
        return replace(
            out, status="fail", retryable=False, blocker=blocker, error_class="verify_failed"
        )
    return replace(out, status="pass")


def _land(ctx: AttemptContext, wt: Worktree | None, out: AttemptOutcome) -> AttemptOutcome:
    """Commit the worktree to the task branch and merge it into the integration branch."""
    task, spec = ctx.task, ctx.spec
    if wt is None or ctx.workspace is None:
        return replace(out, status="pass", blocker=None)
    message = f"{task.id}: {task.summary}\n\nspecexec run {ctx.run_id}, spec {spec.name}"
    task_commit = ctx.workspace.commit_all(wt, message)
    if task_commit is None:
        return replace(out, status="pass", blocker=None)
    merged = ctx.workspace.merge(spec.name, task_commit, f"Merge task {task.id} ({spec.name})")
    if not merged.merged:
        conflicts = ", ".join(merged.conflicts)
        branch = wt.branch
        if ctx.rerun_on_conflict:
            # The rerun starts the task's branch afresh: this attempt's stays, renamed.
            branch = f"{wt.branch}-conflict{ctx.attempt}"
            ctx.workspace.git("update-ref", refs.heads(branch), task_commit)
        return replace(
            out,
            status="fail",
            retryable=False,
            branch=branch,
            blocker=f"merge conflict in {conflicts} (branch {branch} kept)",
            error_class="merge_conflict",
            conflicts=tuple(merged.conflicts),
        )
    return replace(
        out, status="pass", blocker=None, commit=merged.commit, branch_to_delete=wt.branch
    )


RESULT_FILE = ".specexec-result.json"


def _not_the_change(agent: Agent | None) -> tuple[str, ...]:
    """What is removed from a worktree before its snapshot: the result file and the files
    the agent writes for itself (of every agent, when a custom command hides which)."""
    leaves = (
        agent.leaves if agent is not None else tuple(p for a in AGENTS.values() for p in a.leaves)
    )
    return (f":(literal){RESULT_FILE}", *leaves)


def _not_committed(ctx: AttemptContext, wt: Worktree | None, prep: _Prepared) -> None:
    """Keep the result file in the run folder, then remove it and what the agent wrote for
    itself from the worktree: never committed, never left for the slot's next task."""
    if wt is not None and ctx.workspace is not None:
        _keep_result_file(prep.result_file, prep.files["result.json"])
        ctx.workspace.remove_untracked(wt, _not_the_change(prep.invocation.agent))


def _expects_changes(task: Task, agent: Agent | None) -> bool:
    if task.expect_changes is not None:
        return task.expect_changes
    return agent.expect_changes if agent is not None else False


def _unlink_file(path: Path) -> None:
    # A worker may have left a directory (or anything) under the name: never follow it.
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        path.unlink()


def _keep_result_file(worktree_file: Path, run_file: Path) -> None:
    """Copy the result file the worker wrote into the run folder, for the record (a
    regular file only, read without following links, at most what the parser reads)."""
    try:
        fd = os.open(worktree_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    with os.fdopen(fd, "rb") as f:
        if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            data = f.read(RESULT_FILE_MAX_BYTES)
            _write_private(run_file, data.decode("utf-8", "replace"))


def _finish(ctx: AttemptContext, wt: Worktree | None, out: AttemptOutcome) -> AttemptOutcome:
    """Clean up the worktree: removed on pass, kept on failure for inspection (the next
    attempt or `specexec gc` removes it), kept always with --keep-worktrees. A pooled
    worktree goes back to the pool; on failure its state is committed to the task branch."""
    if wt is None or ctx.workspace is None:
        return out
    if out.status == "pass" and not ctx.keep_worktree:
        # The branch of a merged task is deleted by the executor once `pass` is on disk,
        # so a crash in between can still tell the task was merged.
        if ctx.pool is not None:
            ctx.pool.release(wt, delete_branch=out.commit is None)
        else:
            ctx.workspace.remove_worktree(wt, delete_branch=out.commit is None)
        return out
    # A pooled worktree's state is committed to the (kept) task branch and the slot reused.
    kept: Path | None = wt.path
    if ctx.pool is not None:
        kept = ctx.pool.keep_failed(
            wt, f"{ctx.task.id}: state of failed attempt {ctx.attempt} (not merged)"
        )
    extra = {**out.extra, "worktree": str(kept)} if kept is not None else out.extra
    return replace(out, branch=out.branch or wt.branch, extra=extra)


def _cancelled(ctx: AttemptContext, wt: Worktree | None, out: AttemptOutcome) -> AttemptOutcome:
    # Interrupted work is thrown away: the task goes back to pending and starts afresh.
    if wt is not None and ctx.pool is not None:
        ctx.pool.release(wt, delete_branch=True)
    elif wt is not None and ctx.workspace is not None:
        ctx.workspace.remove_worktree(wt, delete_branch=True)
    return replace(out, status="cancelled", blocker="interrupted")


def blocker_inputs(
    task: Task, results: dict[str, dict[str, Any]], spec: Spec
) -> tuple[BlockerResult, ...]:
    """The results of the task's blockers, in the order the task lists them."""
    out = []
    for b in task.blocked_by:
        res = results.get(b) or {}
        bt = spec.task(b)
        data = res.get("data")
        out.append(
            BlockerResult(
                task_id=b,
                status=str(res.get("status", bt.status)),
                summary=bt.summary,
                notes=res.get("notes") if isinstance(res.get("notes"), str) else None,
                data=data if isinstance(data, list) else None,
            )
        )
    return tuple(out)


def concurrent_ids(running: Sequence[tuple[str, str]], spec: Spec, task: Task) -> tuple[str, ...]:
    return tuple(tid for sname, tid in running if sname == spec.name and tid != task.id)
