"""Making tasks pending again: the fields a run writes are removed, everything else in
the task (unknown fields included) is kept. For ``specexec reset`` and ``run
--retry-failed``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from specexec.errors import InvalidInput
from specexec.tasksfile.events import EventLog
from specexec.tasksfile.store import DELETE, TasksStore, set_fields, task_objects

RUN_FIELDS: Final = (
    "started_at",
    "completed_at",
    "duration_minutes",
    "blocker",
    "result",
    "scope_violations",
    "files_changed",
    "commit",
    "branch",
    "attempts",
    "error_class",  # issue 17: the failure's class, a wait in progress, the spend
    "waiting_until",
    "cost_usd",
    "tokens",
)
FAILED_STATUSES: Final = frozenset({"fail", "blocked"})


def reset_tasks(
    store: TasksStore, events: EventLog, task_ids: Sequence[str] = (), failed: bool = False
) -> list[str]:
    """Reset tasks under the store's lock (the caller holds the run lock); return one
    line per task reset. Unknown ids raise InvalidInput and nothing is changed."""
    wanted = list(dict.fromkeys(task_ids))
    lines: list[str] = []

    def change(doc: dict[str, Any]) -> bool:
        lines.clear()
        tasks = task_objects(doc, store.path)
        by_id: dict[str, dict[str, Any]] = {}
        for t in tasks:
            by_id.setdefault(t["id"], t)
        unknown = [tid for tid in wanted if tid not in by_id]
        if unknown:
            raise InvalidInput(
                f"{store.path}: no task with id {', '.join(unknown)}; nothing was reset",
                [f"{store.path}: no task with id {tid!r}" for tid in unknown],
            )
        selected = [by_id[tid] for tid in wanted] if wanted else tasks
        if failed:
            selected = [t for t in selected if t.get("status") in FAILED_STATUSES]
        for t in selected:
            before = t.get("status", "pending")
            fields: dict[str, Any] = dict.fromkeys(RUN_FIELDS, DELETE)
            if before != "pending":
                fields["status"] = "pending"
            if set_fields(t, fields):
                events.append("reset", task=t["id"], **{"from": before, "to": "pending"})
                lines.append(f"{t['id']}: {before} -> pending")
        return bool(lines)

    store.edit(change)
    return list(lines)
