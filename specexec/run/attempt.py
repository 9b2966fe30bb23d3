"""One attempt of one task, from worktree to merge (DESIGN §3). Runs in a worker thread
of the executor; touches nothing but its own worktree, its run files and the git layer."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from specexec.errors import SpecexecError
from specexec.git.pool import WorktreePool
from specexec.git.workspace import Workspace, Worktree, checkout_patterns
from specexec.plan import patterns as paths
from specexec.run.processes import ProcessOutcome, run_process, worker_env
from specexec.run.prompt import BlockerResult, MergedInput, ParallelContext, render_prompt
from specexec.tasksfile.types import Spec, Task, WorkerConfig
from specexec.workers.base import build_invocation
from specexec.workers.result import WorkerResult, parse_result


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


def run_attempt(ctx: AttemptContext) -> AttemptOutcome:
    task, spec = ctx.task, ctx.spec
    wt: Worktree | None = None
    out = AttemptOutcome("fail")
    try:
        if ctx.workspace is not None:
            sparse = checkout_patterns(task)
            if ctx.pool is not None:
                wt = ctx.pool.acquire(spec.name, task.id, sparse=sparse)
            else:
                wt = ctx.workspace.create_worktree(spec.name, task.id, sparse=sparse)
        cwd = wt.path if wt is not None else ctx.cwd
        files = {
            k: ctx.run_dir / f"{task.id}.{k}"
            for k in ("prompt.md", "result.json", "inputs.json", "log")
        }
        files["result.json"].unlink(missing_ok=True)
        prompt = render_prompt(
            spec, task, parallel=ctx.parallel, inputs=ctx.inputs, merged=ctx.merged
        )
        _write_private(files["prompt.md"], prompt)
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
        inv = build_invocation(ctx.worker, task, spec, placeholders)
        env = worker_env(
            ctx.base_env,
            task_id=task.id,
            spec_dir=spec.dir,
            worktree=cwd,
            prompt_file=files["prompt.md"],
            result_file=files["result.json"],
            run_id=ctx.run_id,
            attempt=ctx.attempt,
        )
        env["SPECEXEC_INPUTS_FILE"] = str(files["inputs.json"])

        def run(command: str | tuple[str, ...], stdin: Path | None) -> ProcessOutcome:
            return run_process(
                command,
                cwd=cwd,
                env=env,
                stdin_path=stdin,
                log_path=files["log"],
                timeout_s=ctx.timeout_minutes * 60,
                grace_s=ctx.grace_s,
                cancel=ctx.cancel,
                registry_dir=ctx.registry_dir,
            )

        proc = run(inv.command, files["prompt.md"] if inv.stdin_prompt else None)
        out = replace(out, worker_seconds=proc.duration_s)
        if proc.cancelled:
            return _cancelled(ctx, wt, out)
        if proc.start_error is not None:
            return _finish(
                ctx,
                wt,
                replace(
                    out, blocker=f"worker could not start: {proc.start_error}", retryable=False
                ),
            )
        if proc.timed_out:
            return _finish(
                ctx,
                wt,
                replace(
                    out, blocker=f"timed out after {ctx.timeout_minutes:g} min", timed_out=True
                ),
            )

        result = parse_result(
            files["result.json"], files["log"], proc.returncode, preset=inv.preset
        )
        out = replace(out, result=result)
        if wt is not None and ctx.workspace is not None:
            changed = tuple(ctx.workspace.changed_files(wt))
            out = replace(
                out,
                files_changed=changed,
                scope_violations=tuple(paths.scope_violations(changed, task.relevant_files)),
            )
        if result.status != "pass":
            blocked = result.status == "blocked"
            return _finish(
                ctx,
                wt,
                replace(
                    out,
                    status="blocked" if blocked else "fail",
                    retryable=not blocked,
                    blocker=result.blocker or f"worker reported {result.status}",
                ),
            )
        if out.scope_violations and ctx.strict_scope:
            return _finish(
                ctx,
                wt,
                replace(
                    out,
                    retryable=False,
                    blocker="changed files outside relevant_files "
                    "(--strict-scope): " + ", ".join(out.scope_violations[:10]),
                ),
            )
        if task.verify:
            vproc = run(task.verify, None)
            out = replace(out, worker_seconds=out.worker_seconds + vproc.duration_s)
            if vproc.cancelled:
                return _cancelled(ctx, wt, out)
            if vproc.returncode != 0:
                why = "timed out" if vproc.timed_out else f"exit code {vproc.returncode}"
                return _finish(
                    ctx, wt, replace(out, blocker=f"verify failed ({why}): {task.verify}")
                )

        if wt is not None and ctx.workspace is not None:
            message = f"{task.id}: {task.summary}\n\nspecexec run {ctx.run_id}, spec {spec.name}"
            task_commit = ctx.workspace.commit_all(wt, message)
            if task_commit is not None:
                merged = ctx.workspace.merge(
                    spec.name, task_commit, f"Merge task {task.id} ({spec.name})"
                )
                if not merged.merged:
                    return _finish(
                        ctx,
                        wt,
                        replace(
                            out,
                            retryable=False,
                            branch=wt.branch,
                            blocker="merge conflict in "
                            + ", ".join(merged.conflicts)
                            + f" (branch {wt.branch} kept)",
                        ),
                    )
                out = replace(out, commit=merged.commit, branch_to_delete=wt.branch)
        return _finish(ctx, wt, replace(out, status="pass", blocker=None))
    except SpecexecError as e:
        # A problem of this task (bad placeholder, template error, git failure in its
        # worktree): the task fails with the reason; the run goes on.
        return _finish(ctx, wt, replace(out, status="fail", blocker=str(e), retryable=False))


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
