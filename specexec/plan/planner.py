"""The plan of a spec: waves with their reasons, the critical path, makespan estimates.

Pure: no I/O. ``make_plan`` plans the tasks it is given as if each were still to run
(callers that want the remaining work pass only those tasks); blocker ids that are not
among them count as already satisfied. The eager figure comes from driving
``specexec.plan.schedule.Schedule``, the same rule a run uses; the waves figure is that rule's
closed form for waves mode (a test holds it equal to ``simulate(mode="waves")``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, Literal

from specexec.errors import InvalidInput
from specexec.plan.patterns import ConflictIndex, conflict_index
from specexec.plan.schedule import (
    Prepared,
    Slot,
    TaskGraph,
    assign_waves,
    remaining_critical_path,
    simulate,
)
from specexec.tasksfile.types import Task

__all__ = [
    "Mode",
    "Plan",
    "Wave",
    "execution_strategy",
    "find_cycle",
    "make_plan",
    "remaining_critical_path",
]

Mode = Literal["sequential", "parallel_waves", "fully_parallel"]

# Rationales stay one line even for huge waves.
_MAX_NAMES = 5
_MAX_MOVES = 3


@dataclass(frozen=True, slots=True)
class Wave:
    wave_id: int
    tasks: tuple[str, ...]
    rationale: str


@dataclass(frozen=True, slots=True)
class Plan:
    jobs: int
    waves: tuple[Wave, ...]
    mode: Mode
    critical_path: tuple[str, ...]
    critical_path_minutes: float
    sequential_minutes: float  # every estimate, one after the other
    waves_minutes: float  # waves run one after the other, each on `jobs` slots
    eager_minutes: float  # the eager rule (the default for `run`)
    max_concurrent: int  # most tasks running at once under the eager rule
    conflicts: tuple[tuple[str, str], ...]  # conflicting pairs, in file order
    warnings: tuple[str, ...]


def find_cycle(tasks: Sequence[Task]) -> list[str] | None:
    """A blocked_by cycle as a path along blocked_by, e.g. ``["T1", "T3", "T1"]``.

    Blocker ids not among ``tasks`` are ignored. None when the graph is acyclic.
    """
    graph = TaskGraph.build(tasks)
    if len(graph.order) == len(tasks):
        return None
    color = [0] * len(tasks)  # 0 new, 1 on the DFS stack, 2 done
    for start in range(len(tasks)):
        if color[start]:
            continue
        # Iterative DFS: deep chains must not hit the recursion limit.
        path = [start]
        iters = [iter(graph.deps[start])]
        color[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                color[path.pop()] = 2
                iters.pop()
            elif color[nxt] == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                return [graph.ids[i] for i in cycle]
            elif color[nxt] == 0:
                color[nxt] = 1
                path.append(nxt)
                iters.append(iter(graph.deps[nxt]))
    return None  # unreachable when order is short, kept for safety


def _critical_path(graph: TaskGraph, est: Sequence[float]) -> tuple[tuple[str, ...], float]:
    finish = list(est)
    pred = [-1] * len(est)
    deps = graph.deps
    for i in graph.order:
        best, arg = 0.0, -1
        for d in deps[i]:
            if finish[d] > best:
                best, arg = finish[d], d
        finish[i] = est[i] + best
        pred[i] = arg
    if not graph.order:
        return (), 0.0
    # The longest chain's end; the first in file order among equals.
    top = max([finish[i] for i in graph.order])
    end = min([i for i in graph.order if finish[i] == top])
    path = []
    i = end
    while i != -1:
        path.append(graph.ids[i])
        i = pred[i]
    return tuple(reversed(path)), finish[end]


def _names(ids: Sequence[str], positions: Sequence[int]) -> str:
    if len(positions) <= _MAX_NAMES:
        return ", ".join([ids[i] for i in positions])
    shown = ", ".join([ids[i] for i in positions[:_MAX_NAMES]])
    return shown + f" and {len(positions) - _MAX_NAMES} more"


def _rationales(
    graph: TaskGraph,
    index: ConflictIndex,
    wave: Sequence[int],
    members: Sequence[Sequence[int]],
) -> list[str]:
    """Why each wave exists: its size, what it waits for, who was moved out of where."""
    ids, deps, conflicts = graph.ids, graph.deps, index.conflicts
    out = []
    for mem in members:
        n = len(mem)
        parts = [f"{n} independent tasks with disjoint files" if n > 1 else "1 task"]
        blockers = sorted(set(chain.from_iterable([deps[i] for i in mem])))
        if blockers:
            parts.append(f"after {_names(ids, blockers)} (blocked_by)")
        moved = 0
        for i in mem:
            low = 1
            for d in deps[i]:
                if wave[d] >= low:
                    low = wave[d] + 1
            if wave[i] == low:
                continue
            moved += 1
            if moved > _MAX_MOVES:
                continue
            # Some conflicting task holds the wave i would otherwise be in: name the
            # first. Wave ``low`` lists its tasks in file order; scan the shorter side.
            held, cs = members[low - 1], conflicts[i]
            if len(held) < len(cs):
                c = next(c for c in held if c in cs)
            else:
                c = min([c for c in cs if wave[c] == low])
            shared = index.overlap(i, c)
            parts.append(f"{ids[i]} moved out of wave {low}: shares {shared} with {ids[c]}")
        if moved > _MAX_MOVES:
            parts.append(f"{moved - _MAX_MOVES} more moved for shared files")
        out.append("; ".join(parts))
    return out


def _waves_minutes(
    members: Sequence[Sequence[int]], est: Sequence[float], prio: Sequence[float], jobs: int
) -> float:
    """Makespan of ``--schedule waves``: each wave packed on ``jobs`` slots, in turn.

    Inside a wave every task is ready at once and none conflicts with another, so the
    schedule's rule (longest remaining path first, as slots free up) reduces to this list
    scheduling; a test checks it against ``simulate(mode="waves")``, which costs more.
    """
    total = 0.0
    for mem in members:
        # Longest path first, ties in file order: ``mem`` is in file order and a reverse
        # sort is stable, so no (priority, position) key tuples are needed.
        order = sorted(mem, key=prio.__getitem__, reverse=True)
        free = [0.0] * min(jobs, len(order))  # when each slot is next free
        span = 0.0
        for i in order:
            end = free[0] + est[i]
            heapq.heapreplace(free, end)
            if end > span:
                span = end
        total += span
    return total


def _peak(slots: Sequence[Slot]) -> int:
    """Most intervals open at once (an end at t frees its slot before a start at t)."""
    ends = sorted([e for _, _, e in slots])
    peak = 0
    # Open just after the k-th start: k started, less those ended by then.
    for k, s in enumerate(sorted([s for _, s, _ in slots]), start=1):
        live = k - bisect_right(ends, s)
        if live > peak:
            peak = live
    return peak


def make_plan(tasks: Sequence[Task], jobs: int) -> Plan:
    """Plan ``tasks`` for ``jobs`` parallel slots. Raises InvalidInput on a cycle."""
    if jobs < 1:
        raise InvalidInput(f"--jobs must be at least 1 (got {jobs})")
    # Statuses do not matter here: the plan is of running all of these tasks.
    todo = [t if t.status == "pending" else replace(t, status="pending") for t in tasks]
    graph = TaskGraph.build(todo)
    if len(graph.order) < len(todo):
        raise InvalidInput("blocked_by cycle: " + " -> ".join(find_cycle(todo) or ["?"]))
    est = [t.estimate for t in todo]
    index = conflict_index(todo)
    conflicts = index.conflicts
    prio = graph.bottom_levels(est)
    wave = assign_waves(graph, conflicts, prio)

    members: list[list[int]] = [[] for _ in range(max(wave, default=0))]
    for i, w in enumerate(wave):
        members[w - 1].append(i)
    rationales = _rationales(graph, index, wave, members)
    del index  # its compiled patterns: free them before the simulation's peak
    ids = graph.ids
    waves = tuple(
        Wave(w, tuple([ids[i] for i in mem]), rationales[w - 1])
        for w, mem in enumerate(members, start=1)
    )
    if all(len(w.tasks) == 1 for w in waves):
        mode: Mode = "sequential"
    elif len(waves) == 1:
        mode = "fully_parallel"
    else:
        mode = "parallel_waves"

    prepared = {"": Prepared(graph, conflicts, prio)}
    eager, slots = simulate([("", todo)], jobs, "eager", prepared=prepared)
    path, path_minutes = _critical_path(graph, est)

    warnings = tuple(
        f"{t.id} has no relevant_files: it is assumed to conflict with no other task"
        for t in todo
        if not t.relevant_files and t.isolation != "none"  # analysis tasks: by design
    )
    pairs = tuple([(ids[i], ids[j]) for i, cs in enumerate(conflicts) for j in sorted(cs) if i < j])
    return Plan(
        jobs=jobs,
        waves=waves,
        mode=mode,
        critical_path=path,
        critical_path_minutes=path_minutes,
        sequential_minutes=float(sum(est)),
        waves_minutes=_waves_minutes(members, est, prio, jobs),
        eager_minutes=eager,
        max_concurrent=_peak(slots),
        conflicts=pairs,
        warnings=warnings,
    )


def _minutes(x: float) -> float | int:
    """Whole minutes as ints, the rest to two decimals: stable, small JSON."""
    r = round(float(x), 2)
    return int(r) if r.is_integer() else r


def execution_strategy(plan: Plan) -> dict[str, Any]:
    """The ``execution_strategy`` object of tasks.json (DESIGN §1)."""
    return {
        "mode": plan.mode,
        "waves": [
            {"wave_id": w.wave_id, "tasks": list(w.tasks), "rationale": w.rationale}
            for w in plan.waves
        ],
        "total_sequential_minutes": _minutes(plan.sequential_minutes),
        "estimated_parallel_minutes": _minutes(plan.eager_minutes),
        "max_concurrent": plan.max_concurrent,
    }
