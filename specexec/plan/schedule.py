"""The scheduling rule, once: a pure state machine the executor and the planner both drive.

Pure: no I/O, no clock. The caller says what finished; ``Schedule`` says what may start.
Several spec folders ("groups") share one pool of ``jobs`` slots; blocked_by edges and
file conflicts only exist inside a group. Keys are ``(group, task_id)``.

The rule (DESIGN §2): a pending task starts when all its blockers passed, a slot is free
and no running task of its group conflicts with it; among ready tasks the one with the
longest remaining critical path goes first (ties: file order). In ``waves`` mode a group
only runs the tasks of its current wave, and moves to the next wave once every task of
the current one has finished.

Cost: every task enters the ready heap once per time it becomes ready; a task that meets
a conflicting running task is parked on that task and re-queued when it finishes, so no
event rescans all tasks: O((n + e) log n) for a whole run.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Literal

from specexec.errors import InvalidInput
from specexec.plan.patterns import conflict_indices, overlap
from specexec.tasksfile.types import Task

__all__ = [
    "Key",
    "Prepared",
    "Schedule",
    "ScheduleMode",
    "Slot",
    "TaskGraph",
    "assign_waves",
    "remaining_critical_path",
    "simulate",
]

Key = tuple[str, str]
ScheduleMode = Literal["eager", "waves"]
Slot = tuple[Key, float, float]  # (key, start minute, end minute)


@dataclass(frozen=True, slots=True)
class TaskGraph:
    """blocked_by edges between the given tasks, by position.

    Blocker ids that are not among the tasks count as satisfied (callers plan subsets);
    repeated ids count once.
    """

    ids: tuple[str, ...]
    deps: tuple[tuple[int, ...], ...]
    dependents: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]  # a topological order; tasks on a cycle are left out

    @classmethod
    def build(cls, tasks: Sequence[Task]) -> TaskGraph:
        ids = tuple([t.id for t in tasks])
        index = {tid: i for i, tid in enumerate(ids)}
        if len(index) < len(ids):
            seen: set[str] = set()
            for tid in ids:
                if tid in seen:
                    raise InvalidInput(f"duplicate task id {tid!r}")
                seen.add(tid)
        get = index.get
        deps: list[tuple[int, ...]] = []
        dependents: list[list[int]] = [[] for _ in ids]
        for i, t in enumerate(tasks):
            blocked_by = t.blocked_by
            if not blocked_by:
                deps.append(())
                continue
            if len(blocked_by) <= 8:
                # The usual few blockers: dedup by scanning, cheaper than a dict.
                found: list[int] = []
                for b in blocked_by:
                    d = get(b)
                    if d is not None and d not in found:
                        found.append(d)
                ds = tuple(found)
            else:
                ds = tuple(dict.fromkeys([index[b] for b in blocked_by if b in index]))
            deps.append(ds)
            for d in ds:
                dependents[d].append(i)
        # Kahn's algorithm in file order: deterministic, and it cannot loop on a cycle.
        # ``order`` is its own FIFO queue: the loop visits what it appends.
        indeg = [len(d) for d in deps]
        order = [i for i, k in enumerate(indeg) if not k]
        for i in order:
            for d in dependents[i]:
                indeg[d] -= 1
                if not indeg[d]:
                    order.append(d)
        return cls(ids, tuple(deps), tuple(map(tuple, dependents)), tuple(order))

    def bottom_levels(self, estimates: Sequence[float]) -> list[float]:
        """Each task's estimate plus the longest chain of its dependents."""
        bl = list(estimates)
        dependents = self.dependents
        for i in reversed(self.order):
            best = 0.0
            for d in dependents[i]:
                if bl[d] > best:
                    best = bl[d]
            bl[i] = estimates[i] + best
        return bl


@dataclass(frozen=True, slots=True)
class Prepared:
    """A group's graph and conflicts (``paths.conflict_indices``), computed once.

    Lets the planner hand what it already computed to the simulations it runs.
    """

    graph: TaskGraph
    conflicts: Sequence[Set[int]]
    # ``graph.bottom_levels`` of the tasks' estimates, when the caller has it already.
    priority: Sequence[float] | None = None


def remaining_critical_path(tasks: Sequence[Task]) -> dict[str, float]:
    """Task id -> its estimate plus the longest chain (by estimate) of its dependents."""
    g = TaskGraph.build(tasks)
    bl = g.bottom_levels([t.estimate for t in tasks])
    return dict(zip(g.ids, bl, strict=True))


def assign_waves(
    graph: TaskGraph,
    conflicts: Sequence[Set[int]],
    priority: Sequence[float],
) -> list[int]:
    """Wave number (from 1) of each task by position; 0 for a task on a cycle.

    Tasks are placed in dependency order, highest ``priority`` first among those whose
    lowest possible wave is equal, each in the earliest wave after all its blockers'
    waves that holds no conflicting task.
    """
    n = len(graph.ids)
    wave = [0] * n
    lo = [1] * n
    dependents = graph.dependents
    indeg = [len(d) for d in graph.deps]
    heap = [(1, -priority[i], i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        low, _, i = pop(heap)
        taken = set()  # a loop, not a comprehension: that costs a call per task
        for c in conflicts[i]:
            if wave[c] >= low:
                taken.add(wave[c])
        w = low
        while w in taken:
            w += 1
        wave[i] = w
        for d in dependents[i]:
            if lo[d] <= w:
                lo[d] = w + 1
            indeg[d] -= 1
            if indeg[d] == 0:
                push(heap, (lo[d], -priority[d], d))
    return wave


class Schedule:
    """Which task may start now, given what runs and what finished.

    Task states: the status from tasks.json, then ``running`` while started. Only
    ``pending`` tasks are ever started; a task ``in_progress`` in the file is left alone
    (its dependents wait for it). ``prepared`` may hold each group's graph and conflicts,
    computed once elsewhere (they must be of exactly that group's task sequence).
    """

    def __init__(
        self,
        groups: Sequence[tuple[str, Sequence[Task]]],
        jobs: int,
        mode: ScheduleMode = "eager",
        *,
        prepared: Mapping[str, Prepared] | None = None,
    ) -> None:
        if jobs < 1:
            raise InvalidInput(f"--jobs must be at least 1 (got {jobs})")
        if mode not in ("eager", "waves"):
            raise InvalidInput(f"unknown schedule {mode!r} (use eager or waves)")
        self._groups = [(name, tuple(tasks)) for name, tasks in groups]
        self._jobs = jobs
        self._mode: ScheduleMode = mode
        self._waves_mode = mode == "waves"

        keys: list[Key] = []
        tasks_flat: list[Task] = []
        est: list[float] = []
        group_of: list[int] = []
        deps: list[Sequence[int]] = []
        dependents: list[Sequence[int]] = []
        conf: list[Set[int]] = []
        prio: list[float] = []
        self._base: list[int] = []
        self._prepared: list[Prepared] = []
        seen: set[str] = set()
        for gi, (name, gtasks) in enumerate(self._groups):
            if name in seen:
                raise InvalidInput(f"spec {name!r} given twice")
            seen.add(name)
            base = len(keys)
            self._base.append(base)
            prep = prepared.get(name) if prepared is not None else None
            if prep is None:
                prep = Prepared(TaskGraph.build(gtasks), conflict_indices(gtasks))
            self._prepared.append(prep)
            keys.extend([(name, t.id) for t in gtasks])
            tasks_flat.extend(gtasks)
            group_of.extend([gi] * len(gtasks))
            gest = [t.estimate for t in gtasks]
            est.extend(gest)
            prio.extend(prep.graph.bottom_levels(gest) if prep.priority is None else prep.priority)
            if base == 0:  # the common case: one spec, positions are global already
                deps.extend(prep.graph.deps)
                dependents.extend(prep.graph.dependents)
                conf.extend(prep.conflicts)
            else:
                deps.extend(tuple(base + d for d in ds) for ds in prep.graph.deps)
                dependents.extend(tuple(base + d for d in ds) for ds in prep.graph.dependents)
                conf.extend(frozenset(base + c for c in cs) for cs in prep.conflicts)
        self._keys = keys
        self._index: dict[Key, int] | None = None  # built on first use: see _pos
        self._tasks = tasks_flat
        self._est = est
        self._group_of = group_of
        self._deps = deps
        self._dependents = dependents
        self._conf = conf
        self._prio = prio
        # The ready heap holds ranks (longest remaining path first, ties in file order)
        # rather than (-priority, position) pairs: ints compare faster than tuples. A
        # reverse sort is stable, so equal priorities keep file order.
        self._by_rank = by_rank = sorted(range(len(keys)), key=prio.__getitem__, reverse=True)
        self._rank = rank = [0] * len(keys)
        for r, i in enumerate(by_rank):
            rank[i] = r
        self._state: list[str] = [t.status for t in tasks_flat]
        self._reason: list[str | None] = [t.blocker for t in tasks_flat]
        state = self._state
        # Blockers not yet passed; a plan has none passed, so skip the scan then.
        self._unmet = unmet = [len(ds) for ds in deps]
        if "pass" in state:
            for i, st in enumerate(state):
                if st == "pass":
                    for d in dependents[i]:  # each edge once, as in deps
                        unmet[d] -= 1
        self._running: dict[int, None] = {}  # insertion-ordered: start order
        self._running_in: list[set[int]] = [set() for _ in self._groups]
        self._heap: list[int] = []
        self._parked: dict[int, list[int]] = {}

        # A pending task behind a failed or blocked task can never run.
        roots = []
        if "fail" in state or "blocked" in state:
            roots = [i for i, s in enumerate(state) if s in ("fail", "blocked")]
        self._initially_blocked = self._block_dependents(roots, count_waves=False)

        # Waves are planned over what is still to run; the rest counts as satisfied.
        self._wave = [0] * len(keys)
        self._current = [0] * len(self._groups)
        self._last = [0] * len(self._groups)
        self._left: list[dict[int, int]] = [{} for _ in self._groups]
        self._held: list[dict[int, list[int]]] = [{} for _ in self._groups]
        if self._waves_mode:
            self._plan_waves()
            for i in range(len(keys)):
                if state[i] == "pending" and not self._unmet[i]:
                    self._make_ready(i)
        else:
            self._heap = [rank[i] for i, st in enumerate(state) if st == "pending" and not unmet[i]]
            heapq.heapify(self._heap)

    # -- queries ---------------------------------------------------------------------

    def _pos(self, key: Key) -> int:
        # A simulation never asks by key: it does not pay for the map.
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self._keys)}
        return self._index[key]

    @property
    def jobs(self) -> int:
        return self._jobs

    @property
    def mode(self) -> ScheduleMode:
        return self._mode

    @property
    def running(self) -> tuple[Key, ...]:
        """The running tasks, in the order they started."""
        return tuple(self._keys[i] for i in self._running)

    def task(self, key: Key) -> Task:
        return self._tasks[self._pos(key)]

    def state(self, key: Key) -> str:
        """pending | running | pass | fail | blocked | in_progress (left alone)."""
        return self._state[self._pos(key)]

    def blocker(self, key: Key) -> str | None:
        """Why a blocked task is blocked."""
        return self._reason[self._pos(key)]

    def wave_of(self, key: Key) -> int | None:
        """The task's wave in ``waves`` mode (None in eager mode or when not to run)."""
        w = self._wave[self._pos(key)]
        return w or None

    def initially_blocked(self) -> list[tuple[Key, str]]:
        """Pending tasks found blocked at the start: a blocker had already failed."""
        return list(self._initially_blocked)

    def done(self) -> bool:
        """True when nothing runs and nothing more can start."""
        if self._running:
            return False
        heap = self._heap
        while heap and not self._startable(self._by_rank[heap[0]]):
            heapq.heappop(heap)
        return not heap

    def why_waiting(self, key: Key) -> str:
        """Why a task is not running now (for ``--dry-run`` and status displays)."""
        i = self._pos(key)
        state = self._state[i]
        if state == "running":
            return "running"
        if state == "pass":
            return "passed"
        if state == "fail":
            return f"failed: {self._reason[i]}" if self._reason[i] else "failed"
        if state == "blocked":
            return self._reason[i] or "blocked"
        if state != "pending":
            return f"{state} in tasks.json: not picked up"
        waiting = [self._keys[d][1] for d in self._deps[i] if self._state[d] != "pass"]
        if waiting:
            return "waits for " + ", ".join(waiting)
        g = self._group_of[i]
        if self._waves_mode and self._wave[i] != self._current[g]:
            if self._wave[i] == 0:
                return "not placed in any wave (blocked_by cycle)"
            return f"in wave {self._wave[i]}: waits for wave {self._current[g]} to finish"
        c = self._conflicting_running(i)
        if c is not None:
            shared = overlap(self._tasks[i].relevant_files, self._tasks[c].relevant_files)
            return f"conflicts with running {self._keys[c][1]} on {shared}"
        if len(self._running) >= self._jobs:
            return "no free job slot"
        return "ready"

    def dry_run_order(self) -> list[Key]:
        """The order a run in which every task passes would start the tasks (estimates)."""
        fresh = Schedule(self._groups, self._jobs, self._mode)
        _, slots = _drive(fresh)
        return [k for k, _, _ in slots]

    # -- events ----------------------------------------------------------------------

    def start_ready(self) -> list[Key]:
        """Mark as running, and return, every task that may start now."""
        keys = self._keys
        return [keys[i] for i in self._start()]

    def finish(
        self, key: Key, passed: bool, outcome: Literal["fail", "blocked"] = "fail"
    ) -> list[tuple[Key, str]]:
        """Record the end of a running task; return the dependents it newly blocks.

        ``outcome`` is the status of a task that did not pass (the worker may report
        ``blocked``); it only changes the wording of the dependents' reasons.
        """
        i = self._pos(key)
        if self._state[i] != "running":
            raise ValueError(f"{key} is not running")
        return self._finish(i, passed, outcome)

    def release(self, key: Key) -> None:
        """Put a running task back to pending (e.g. interrupted); it may start again."""
        i = self._pos(key)
        if self._state[i] != "running":
            raise ValueError(f"{key} is not running")
        self._stop(i)
        self._state[i] = "pending"
        heapq.heappush(self._heap, self._rank[i])

    def set_jobs(self, n: int) -> None:
        """Change the pool size; running tasks above it finish, none is stopped."""
        if n < 1:
            raise InvalidInput(f"--jobs must be at least 1 (got {n})")
        self._jobs = n

    # -- internals (by position; the simulation drives these directly) ---------------

    def _start(self) -> list[int]:
        started: list[int] = []
        heap, state, unmet, running = self._heap, self._state, self._unmet, self._running
        conf, jobs, waves, by_rank = self._conf, self._jobs, self._waves_mode, self._by_rank
        running_in, group_of = self._running_in, self._group_of
        pop = heapq.heappop
        while heap and len(running) < jobs:
            i = by_rank[pop(heap)]
            if state[i] != "pending" or unmet[i] or (waves and not self._startable(i)):
                continue  # stale entry: started, released again or blocked meanwhile
            if conf[i]:
                c = self._conflicting_running(i)
                if c is not None:
                    # Nothing changes for i until c stops: wait on c instead of the heap.
                    self._parked.setdefault(c, []).append(i)
                    continue
            state[i] = "running"
            running[i] = None
            running_in[group_of[i]].add(i)
            started.append(i)
        return started

    def _finish(self, i: int, passed: bool, outcome: str) -> list[tuple[Key, str]]:
        self._stop(i)
        state = self._state
        state[i] = "pass" if passed else outcome
        newly: list[tuple[Key, str]] = []
        if passed:
            unmet, waves, heap, rank = self._unmet, self._waves_mode, self._heap, self._rank
            for d in self._dependents[i]:
                if state[d] == "pending":
                    unmet[d] -= 1
                    if not unmet[d]:
                        if waves:
                            self._make_ready(d)
                        else:  # _make_ready in eager mode, without the call
                            heapq.heappush(heap, rank[d])
        else:
            newly = self._block_dependents([i], count_waves=True)
        if self._waves_mode:
            self._wave_task_done(i)
        return newly

    def _startable(self, i: int) -> bool:
        if self._state[i] != "pending" or self._unmet[i]:
            return False
        return not self._waves_mode or self._wave[i] == self._current[self._group_of[i]]

    def _make_ready(self, i: int) -> None:
        if self._waves_mode:
            g = self._group_of[i]
            if self._wave[i] != self._current[g]:
                if self._wave[i] > self._current[g]:
                    self._held[g].setdefault(self._wave[i], []).append(i)
                return
        heapq.heappush(self._heap, self._rank[i])

    def _stop(self, i: int) -> None:
        del self._running[i]
        self._running_in[self._group_of[i]].discard(i)
        for j in self._parked.pop(i, ()):
            heapq.heappush(self._heap, self._rank[j])

    def _conflicting_running(self, i: int) -> int | None:
        conf = self._conf[i]
        if not conf:
            return None
        run = self._running_in[self._group_of[i]]
        if len(conf) < len(run):
            for c in conf:
                if c in run:
                    return c
        else:
            for r in run:
                if r in conf:
                    return r
        return None

    def _block_dependents(
        self, roots: Sequence[int], *, count_waves: bool
    ) -> list[tuple[Key, str]]:
        """Block, transitively, the pending dependents of failed/blocked ``roots``."""
        out: list[tuple[Key, str]] = []
        origin: dict[int, int] = {r: r for r in roots}
        queue = deque(roots)
        while queue:
            b = queue.popleft()
            root = origin[b]
            if b == root:
                why = f"blocked by {self._keys[b][1]} ({self._state[b]})"
            else:
                why = (
                    f"blocked by {self._keys[b][1]} "
                    f"(blocked by {self._keys[root][1]} ({self._state[root]}))"
                )
            for d in self._dependents[b]:
                if self._state[d] != "pending":
                    continue
                self._state[d] = "blocked"
                self._reason[d] = why
                origin[d] = root
                out.append((self._keys[d], why))
                queue.append(d)
                if count_waves and self._waves_mode:
                    self._wave_task_done(d)
        return out

    def _plan_waves(self) -> None:
        for gi, (_, gtasks) in enumerate(self._groups):
            base = self._base[gi]
            todo = [i for i in range(base, base + len(gtasks)) if self._state[i] == "pending"]
            prio = [self._prio[i] for i in todo]
            prep = self._prepared[gi]
            if len(todo) == len(gtasks):  # all still to run: reuse the group's graph
                waves = assign_waves(prep.graph, prep.conflicts, prio)
            else:
                pos = {g: k for k, g in enumerate(todo)}
                graph = TaskGraph.build([self._tasks[i] for i in todo])
                conf = [frozenset(pos[c] for c in self._conf[i] if c in pos) for i in todo]
                waves = assign_waves(graph, conf, prio)
            left = self._left[gi]
            for k, i in enumerate(todo):
                self._wave[i] = waves[k]
                if waves[k]:
                    left[waves[k]] = left.get(waves[k], 0) + 1
            self._current[gi] = min(left) if left else 0
            self._last[gi] = max(left) if left else 0

    def _wave_task_done(self, i: int) -> None:
        g, w = self._group_of[i], self._wave[i]
        if not w:
            return
        left = self._left[g]
        left[w] -= 1
        if w != self._current[g] or left[w]:
            return
        # The barrier: the current wave is over, open the next one that has work.
        while left.get(self._current[g], 0) == 0:
            self._current[g] += 1
            if self._current[g] > self._last[g]:
                return
        for j in self._held[g].pop(self._current[g], ()):
            if self._startable(j):
                heapq.heappush(self._heap, self._rank[j])


def _drive(schedule: Schedule) -> tuple[float, list[Slot]]:
    """Discrete-event simulation: every task takes ``Task.estimate`` minutes and passes."""
    est, keys = schedule._est, schedule._keys
    now = 0.0
    events: list[tuple[float, int]] = []
    slots: list[Slot] = []
    makespan = 0.0
    push, pop = heapq.heappush, heapq.heappop
    start, finish = schedule._start, schedule._finish
    while True:
        for i in start():
            end = now + est[i]
            push(events, (end, i))
            slots.append((keys[i], now, end))
            if end > makespan:
                makespan = end
        if not events:
            return makespan, slots
        now, i = pop(events)
        finish(i, True, "fail")
        while events and events[0][0] == now:  # free every slot that ends at once
            finish(pop(events)[1], True, "fail")


def simulate(
    work: Sequence[Task] | Sequence[tuple[str, Sequence[Task]]],
    jobs: int,
    mode: ScheduleMode = "eager",
    *,
    prepared: Mapping[str, Prepared] | None = None,
) -> tuple[float, list[Slot]]:
    """Makespan (minutes) and (key, start, end) of each task, in start order.

    ``work`` is either one task list (group ``""``) or ``(group, tasks)`` pairs. Every
    task is assumed to pass in ``Task.estimate`` minutes.
    """
    groups: list[tuple[str, Sequence[Task]]] = []
    if work and isinstance(work[0], Task):
        groups = [("", [t for t in work if isinstance(t, Task)])]
    else:
        groups = [g for g in work if not isinstance(g, Task)]
    return _drive(Schedule(groups, jobs, mode, prepared=prepared))
