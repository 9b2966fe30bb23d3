"""Recovery from a run that died: the one place that decides what a dead run left and in
which order it is put right.

Each owner keeps the primitive for its own thing: ``run.processes`` stops process groups,
``git.workspace`` removes worktrees and branches, ``tasksfile.store`` writes tasks.json,
the event log records each change first. This module only decides and orders them, for
``specexec run`` (``sweep_workers`` then ``recover``, with the run lock held) and for the
daemon (``left_in_progress`` / ``left_merged_branches``: is there anything to recover?).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from specexec.errors import SpecexecError
from specexec.run.processes import sweep_orphans, sweep_spec_orphans
from specexec.tasksfile.events import EventLog
from specexec.tasksfile.store import DELETE, TasksStore, set_fields, task_objects
from specexec.tasksfile.types import Spec

if TYPE_CHECKING:
    from specexec.git.workspace import Workspace


def sweep_workers(spec: Spec) -> None:
    """Stop the worker groups a dead run of ``spec`` left running (run lock held): those
    its registry records, then those it had not recorded yet (found by environment)."""
    sweep_orphans(spec.runtime_dir / "workers")
    sweep_spec_orphans(spec.dir)


def recover(spec: Spec, store: TasksStore, events: EventLog, ws: Workspace | None) -> list[str]:
    """Make a spec folder consistent after a run that died (call with the run lock held).

    A task whose own snapshot (``refs/specexec/snapshots/<spec>/<task>``, the commit
    specexec made to merge it) is reachable from the integration branch passed (its
    change must not be merged twice); where a worker left its task branch never counts;
    a task left in_progress goes back to pending; leftover worktrees of tasks that will
    run again are removed when they start. Returns one note per change."""
    notes = []
    if ws is not None:
        _drop_stale_worktrees(spec, ws)
        notes += _pass_merged(spec, store, events, ws)
    for tid in recover_in_progress(store, events):
        notes.append(f"{tid}: left in_progress by a run that died: pending")
    return notes


def _drop_stale_worktrees(spec: Spec, ws: Workspace) -> None:
    # A worktree a dead run left for a task that will run again would keep the task's
    # branch checked out; those of failed tasks stay for inspection.
    keep = {t.id for t in spec.tasks if t.status in ("fail", "blocked")}
    for stale in ws.stale_worktrees():
        if stale.spec == spec.name and stale.task_id not in keep:
            ws.remove_worktree((stale.spec, stale.task_id), delete_branch=False)


def _pass_merged(spec: Spec, store: TasksStore, events: EventLog, ws: Workspace) -> list[str]:
    """Tasks whose snapshot a dead run merged but did not record: pass (``is_merged``:
    that very commit is reachable); then the merged branches (and any worktree) it could
    not delete go."""
    notes = []
    leftovers = ws.task_branches(spec.name)
    merged: dict[str, dict[str, Any]] = {}
    for t in spec.tasks:
        if t.id in leftovers and t.status != "pass" and ws.is_merged(spec.name, t.id):
            merged[t.id] = {
                "status": "pass",
                "blocker": DELETE,
                "commit": ws.integration_tip(spec.name),
            }
            events.transition(t.id, t.status, "pass", note="already merged by a run that died")
            notes.append(f"{t.id}: already merged by a run that died: pass")
    if merged:
        store.update(tasks=merged)
    for t in spec.tasks:
        if t.id in leftovers and (t.status == "pass" or t.id in merged):
            ws.remove_worktree((spec.name, t.id), delete_branch=True)
    return notes


def recover_in_progress(
    store: TasksStore,
    events: EventLog,
    *,
    reason: str = "the run that started it is gone",
) -> list[str]:
    """Put tasks left ``in_progress`` back to ``pending``, recording a ``recovered`` event
    for each (before the file is written). Call it while holding the ``RunLock``: then
    no live run owns those tasks. Returns the recovered ids."""
    recovered: list[str] = []

    def change(doc: dict[str, Any]) -> bool:
        recovered.clear()
        for t in task_objects(doc, store.path):
            if t.get("status") == "in_progress":
                events.append(
                    "recovered",
                    task=t["id"],
                    **{"from": "in_progress", "to": "pending"},
                    attempt=t.get("attempts"),
                    reason=reason,
                )
                # waiting_until: a rate limit the dead run was waiting out.
                set_fields(t, {"status": "pending", "started_at": DELETE, "waiting_until": DELETE})
                recovered.append(t["id"])
        return bool(recovered)

    store.edit(change)
    return list(recovered)


# -- for the daemon: is there anything a run would recover? ------------------------------


def left_in_progress(spec: Spec) -> frozenset[str]:
    """The tasks a run would put back to pending, when no live run holds the lock."""
    return frozenset(t.id for t in spec.tasks if t.status == "in_progress")


def left_merged_branches(spec: Spec, repo: Path | None) -> bool:
    """Does the repository still hold branches of tasks that passed? A run killed after
    its last write of tasks.json leaves them; only ``recover`` removes them."""
    if repo is None:
        return False
    passed = {t.id for t in spec.tasks if t.status == "pass"}
    from specexec.git.workspace import Workspace  # only with a repository

    try:
        return bool(passed & Workspace(repo).task_branches(spec.name))
    except SpecexecError:
        return False
