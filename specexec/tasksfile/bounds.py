"""What a run may add to tasks.json, so that specexec never writes a file it would refuse to
load again (``jsonio.MAX_BYTES``).

- Before a run: ``room_problem`` refuses a spec whose tasks could not all be recorded (each
  finished task needs at least ``min_record`` bytes, the plan its ``execution_strategy``).
- At its start: ``plan_records`` gives each task to run an equal share of the room left
  (at most ``RECORD_MAX``).
- When a task finishes: ``bound_record`` keeps its fields within that share. What does not
  fit (a result of a few MiB, a list of 100,000 changed files) is written whole to
  ``<run folder>/<task>.record.json`` and tasks.json gets a bounded summary pointing to it.
- ``full_result`` reads such a result back (a later run hands it to dependent tasks).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from specexec import fmt, system
from specexec.errors import InvalidInput
from specexec.plan import planner
from specexec.tasksfile import jsonio
from specexec.tasksfile.store import DELETE, TasksStore
from specexec.tasksfile.types import RUNTIME_DIR, Spec

# The most one task's record takes in tasks.json, however much room there is.
RECORD_MAX: Final = 256 * 1024
# Encoded bytes of a blocker or of notes kept in tasks.json once a record is cut, then,
# where even that does not fit, less.
TEXT_MAX: Final = 1000
_TEXT_STEPS: Final = (TEXT_MAX, 120, 40)
# What else a run may set on a task (waiting_until, error_class, ...): a reserve.
_OTHER_FIELDS: Final = 160
# The largest record file read back (the worker's result file is capped at 4 MiB; a
# result parsed from output may be bigger).
_RECORD_FILE_MAX: Final = 64 * 1024 * 1024
_LISTS: Final = ("files_changed", "scope_violations")


def to_record(spec: Spec) -> int:
    """How many tasks of ``spec`` a run may record (every task not passed: pending, failed
    and blocked ones can be retried or blocked again)."""
    return sum(1 for t in spec.tasks if t.status != "pass")


def min_record(spec_name: str, task_id: str) -> int:
    """The bytes a finished task's record takes in tasks.json once cut as far as
    ``bound_record`` cuts it (the longest values of each field)."""
    doc = {
        "status": "blocked",
        "attempts": 100,
        "started_at": "2026-01-01T00:00:00.000Z",
        "completed_at": "2026-01-01T00:00:00.000Z",
        "duration_minutes": 1_000_000.123,
        "blocker": "b" * _TEXT_STEPS[-1],
        "files_changed": [],
        "scope_violations": [],
        "result": {
            "status": "blocked",
            "source": "exit_code",
            "truncated": True,
            "file": f".specexec/runs/{'r' * 24}/{task_id}.record.json",
            "omitted": {"files_changed": 10**9, "scope_violations": 10**9},
        },
        "commit": "0" * 64,
        "branch": f"specexec/{spec_name}@{task_id}",
    }
    return _size(doc) + _OTHER_FIELDS


def _strategy_bound(spec: Spec) -> int:
    # Each task id once in a wave, each wave at most one (long) rationale: generous.
    return 1024 + sum(len(t.id) + 16 + 400 for t in spec.tasks)


def room_problem(spec: Spec, jobs: int) -> str | None:
    """Why the run of ``spec`` could not be recorded in its tasks.json, or None."""
    n = to_record(spec)
    if n == 0:
        return None
    try:
        size = os.stat(spec.tasks_file).st_size
    except OSError:
        return None  # loading the spec reports a file that went away
    need = sum(min_record(spec.name, t.id) for t in spec.tasks if t.status != "pass")
    if size + need + _strategy_bound(spec) <= jsonio.MAX_BYTES:
        return None  # the common case: far from the limit, no plan needed
    old = spec.raw.get("execution_strategy")
    reclaimed = len(jsonio.encode(old)) if old is not None else 0
    strategy = len(jsonio.encode(planner.execution_strategy(planner.make_plan(spec.tasks, jobs))))
    if size - reclaimed + strategy + need <= jsonio.MAX_BYTES:
        return None
    return (
        f"{spec.tasks_file}: no room to record this run: the file is {fmt.size(size)}; "
        f"the plan ({fmt.size(strategy)}) and the outcome of {n} task(s) (at least "
        f"{fmt.size(need)}) would take it past the {fmt.size(jsonio.MAX_BYTES)} "
        "limit of tasks.json. Split the tasks into several spec folders."
    )


def plan_records(store: TasksStore, spec: Spec) -> int:
    """Give ``store`` the share of the room left for each task of ``spec`` to record; the
    share in bytes. Call once the plan is written (the room left is measured)."""
    n = to_record(spec)
    try:
        size = os.stat(store.path).st_size
    except OSError:
        size = 0
    budget = RECORD_MAX if n == 0 else (jsonio.MAX_BYTES - size) // n
    store.record_budget = max(0, min(RECORD_MAX, budget))
    return store.record_budget


def _size(fields: Mapping[str, Any]) -> int:
    # The fields as they sit in a task object (4 levels of indent, quotes, commas).
    kept = {k: v for k, v in fields.items() if not _deleted(v)}
    return len(jsonio.encode(kept)) + 6 * len(kept)


def _deleted(value: Any) -> bool:
    return value is DELETE


def _clip(text: Any, limit: int) -> Any:
    """``text`` cut to ``limit`` bytes as encoded in JSON (escapes count)."""
    if not isinstance(text, str) or len(jsonio.encode(text)) <= limit:
        return text
    cut = text[:limit]
    while cut and len(jsonio.encode(cut + "\u2026")) > limit:
        cut = cut[: len(cut) * 3 // 4]
    return cut + "\u2026"


def bound_record(
    store: TasksStore, task_id: str, fields: Mapping[str, Any], run_dir: Path
) -> dict[str, Any]:
    """``fields`` of a finished task as tasks.json can hold them: unchanged when they fit
    the store's ``record_budget``; else written whole to the run folder and replaced by a
    bounded summary (blocker and notes clipped, lists cut, ``data`` a pointer)."""
    budget, spec_dir = store.record_budget, store.spec_dir
    out = dict(fields)
    if _size(out) <= budget:
        return out
    file = run_dir / f"{task_id}.record.json"
    kept = {k: v for k, v in fields.items() if not _deleted(v)}
    try:
        system.atomic_write(file, jsonio.encode({"task": task_id, **kept}), mode=0o600)
        where: str | None = os.path.relpath(file, spec_dir)
    except OSError:
        where = None  # a full disk costs the whole record, never tasks.json
    pointer: dict[str, Any] = {"truncated": True, "file": where}
    given = fields.get("result")
    result: dict[str, Any] = given if isinstance(given, dict) else {}
    summary: dict[str, Any] = {
        k: result[k]
        for k in ("status", "source", "duration_minutes", "cost_usd")
        if k in result and not isinstance(result[k], dict | list)
    }
    omitted = {k: len(v) for k, v in result.items() if isinstance(v, list) and k != "data"}
    if "data" in result:
        summary["data"] = pointer
    for text_limit in _TEXT_STEPS:
        for key in ("blocker", "notes"):
            if isinstance(result.get(key), str):
                summary[key] = _clip(result[key], text_limit)
            if text_limit == _TEXT_STEPS[-1]:
                summary.pop(key, None)  # the task's own blocker says it
        if isinstance(fields.get("blocker"), str):
            out["blocker"] = _clip(fields["blocker"], text_limit)
        out["result"] = {**summary, **pointer}
        for key in _LISTS:
            value = fields.get(key)
            if isinstance(value, list):
                out[key] = []
        # Room for the counts of what the lists and the result leave out.
        room = budget - _size(out) - 80
        if room > 0:
            break
    # The lists keep their first entries while they fit; the counts of all are kept.
    for key in _LISTS:
        value = fields.get(key)
        if not isinstance(value, list):
            continue
        kept_items: list[Any] = []
        for item in value:
            cost = len(jsonio.encode(item)) + 12
            if cost > room:
                break
            kept_items.append(item)
            room -= cost
        out[key] = kept_items
        if len(kept_items) < len(value):
            omitted[key] = len(value) - len(kept_items)
    if omitted:
        out["result"] = {**out["result"], "omitted": omitted}
    return out


def full_result(spec_dir: Path, result: Mapping[str, Any]) -> dict[str, Any]:
    """The whole ``result`` a bounded record points to, or ``result`` itself. Only a
    regular file inside this spec folder's runs folder is read (the pointer is in a
    file anyone may edit), never through a link."""
    where = result.get("file")
    if result.get("truncated") is not True or not isinstance(where, str):
        return dict(result)
    runs = os.path.realpath(spec_dir / RUNTIME_DIR / "runs")
    path = os.path.realpath(spec_dir / where)
    if not path.startswith(runs + os.sep) or not path.endswith(".record.json"):
        return dict(result)
    with contextlib.suppress(InvalidInput):
        doc = jsonio.load_file(Path(path), max_bytes=_RECORD_FILE_MAX)
        if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
            return dict(doc["result"])
    return dict(result)
