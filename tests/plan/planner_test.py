"""Planning: waves and their reasons, critical path, makespan estimates (pure, in memory)."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from itertools import pairwise

import pytest
from conftest import task_obj as t
from hypothesis import given, settings
from hypothesis import strategies as st

from specexec.errors import InvalidInput
from specexec.plan.patterns import conflict_graph, overlap, patterns_conflict
from specexec.plan.planner import (
    execution_strategy,
    find_cycle,
    make_plan,
    remaining_critical_path,
)
from specexec.plan.schedule import simulate
from specexec.tasksfile.types import Task


def waves(tasks: Sequence[Task], jobs: int = 4) -> list[list[str]]:
    return [list(w.tasks) for w in make_plan(tasks, jobs).waves]


def test_independent_tasks_with_disjoint_files_form_one_wave() -> None:
    plan = make_plan([t("T1", "a.py"), t("T2", "b.py"), t("T3", "docs/")], jobs=4)
    assert [w.tasks for w in plan.waves] == [("T1", "T2", "T3")]
    assert plan.waves[0].rationale == "3 independent tasks with disjoint files"
    assert plan.mode == "fully_parallel"


def test_a_chain_forms_one_wave_per_task() -> None:
    plan = make_plan(
        [t("T1", "a.py"), t("T2", "b.py", after=["T1"]), t("T3", "c.py", after=["T2"])], 4
    )
    assert [w.tasks for w in plan.waves] == [("T1",), ("T2",), ("T3",)]
    assert plan.waves[1].rationale == "1 task; after T1 (blocked_by)"
    assert plan.waves[2].rationale == "1 task; after T2 (blocked_by)"
    assert plan.mode == "sequential"
    assert plan.critical_path == ("T1", "T2", "T3")


def test_conflicting_tasks_are_split_with_the_shared_path_named() -> None:
    plan = make_plan([t("T4", "src/x.py"), t("T5", "src/x.py", "b.py"), t("T6", "c.py")], 4)
    assert [w.tasks for w in plan.waves] == [("T4", "T6"), ("T5",)]
    assert "T5 moved out of wave 1: shares src/x.py with T4" in plan.waves[1].rationale
    assert plan.mode == "parallel_waves"
    assert plan.conflicts == (("T4", "T5"),)


def test_directory_and_glob_conflicts_split_waves() -> None:
    assert waves([t("A", "docs/"), t("B", "docs/x.md")]) == [["A"], ["B"]]
    assert waves([t("A", "src/**"), t("B", "src/a/b.py")]) == [["A"], ["B"]]
    assert waves([t("A", "src/*.py"), t("B", "src/a/b.py")]) == [["A", "B"]]
    assert waves([t("A", "a.py"), t("B", "a.pyc")]) == [["A", "B"]]


def test_longest_remaining_path_wins_the_early_wave() -> None:
    # B and A share a file; B heads a long chain, so B goes first.
    plan = make_plan(
        [
            t("A", "x.py", minutes=5),
            t("B", "x.py", minutes=5),
            t("C", "c.py", after=["B"], minutes=30),
        ],
        jobs=2,
    )
    assert [w.tasks for w in plan.waves] == [("B",), ("A", "C")]


def test_figures_for_jobs() -> None:
    tasks = [t(f"T{i}", f"f{i}.py", minutes=10) for i in range(4)]
    plan = make_plan(tasks, jobs=2)
    assert plan.sequential_minutes == 40
    assert plan.waves_minutes == 20
    assert plan.eager_minutes == 20
    assert plan.max_concurrent == 2
    assert make_plan(tasks, jobs=8).max_concurrent == 4


def test_eager_beats_waves_at_a_barrier() -> None:
    tasks = [
        t("A", "a.py", minutes=10),
        t("B", "b.py", minutes=1),
        t("C", "c.py", after=["B"], minutes=1),
        t("D", "d.py", after=["C"], minutes=1),
    ]
    plan = make_plan(tasks, jobs=2)
    assert plan.waves_minutes == 12  # 10 + 1 + 1: wave 2 waits for A
    assert plan.eager_minutes == 10  # C and D run beside A
    assert plan.critical_path == ("A",) and plan.critical_path_minutes == 10


def test_estimates_fall_back_to_last_duration_then_one() -> None:
    tasks = [
        Task("A", "a", relevant_files=("a",), duration_minutes=7),
        Task("B", "b", relevant_files=("b",), blocked_by=("A",)),
    ]
    plan = make_plan(tasks, jobs=1)
    assert plan.sequential_minutes == 8
    assert plan.critical_path_minutes == 8


def test_execution_strategy_has_the_design_shape() -> None:
    tasks = [
        t("T1", "a.py", minutes=15),
        t("T2", "b.py", minutes=10),
        t("T3", "c.py", after=["T1"], minutes=2.5),
    ]
    doc = execution_strategy(make_plan(tasks, jobs=2))
    assert doc == {
        "mode": "parallel_waves",
        "waves": [
            {
                "wave_id": 1,
                "tasks": ["T1", "T2"],
                "rationale": "2 independent tasks with disjoint files",
            },
            {"wave_id": 2, "tasks": ["T3"], "rationale": "1 task; after T1 (blocked_by)"},
        ],
        "total_sequential_minutes": 27.5,
        "estimated_parallel_minutes": 17.5,
        "max_concurrent": 2,
    }


def test_tasks_without_files_get_a_warning() -> None:
    plan = make_plan([t("T1"), t("T2", "a.py")], 2)
    assert len(plan.warnings) == 1 and plan.warnings[0].startswith("T1 has no relevant_files")
    assert [w.tasks for w in plan.waves] == [("T1", "T2")]


def test_unknown_blockers_count_as_satisfied() -> None:
    plan = make_plan([t("T2", "a.py", after=["T1"]), t("T3", "b.py", after=["T2"])], 2)
    assert [w.tasks for w in plan.waves] == [("T2",), ("T3",)]


def test_statuses_do_not_change_the_plan() -> None:
    a = make_plan([t("T1", "a", status="pass"), t("T2", "b", after=["T1"], status="fail")], 2)
    b = make_plan([t("T1", "a"), t("T2", "b", after=["T1"])], 2)
    assert a == b


def test_empty_spec() -> None:
    plan = make_plan([], 4)
    assert plan.waves == () and plan.mode == "sequential" and plan.eager_minutes == 0
    assert execution_strategy(plan)["max_concurrent"] == 0


def test_find_cycle_reports_a_path() -> None:
    tasks = [t("T1", after=["T3"]), t("T2"), t("T3", after=["T1"])]
    assert find_cycle(tasks) == ["T1", "T3", "T1"]
    assert find_cycle([t("T1", after=["T1"])]) == ["T1", "T1"]
    assert find_cycle([t("T1"), t("T2", after=["T1", "nope"])]) is None
    with pytest.raises(InvalidInput, match="T1 -> T3 -> T1"):
        make_plan(tasks, 2)


def test_find_cycle_handles_deep_chains() -> None:
    n = 20_000
    tasks = [t("T0", after=[f"T{n - 1}"])] + [t(f"T{i}", after=[f"T{i - 1}"]) for i in range(1, n)]
    cycle = find_cycle(tasks)
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1]


def test_remaining_critical_path() -> None:
    tasks = [
        t("A", minutes=1),
        t("B", after=["A"], minutes=5),
        t("C", after=["A"], minutes=2),
        t("D", after=["C"], minutes=2),
    ]
    assert remaining_critical_path(tasks) == {"A": 6, "B": 5, "C": 4, "D": 2}


def test_planning_leaves_the_garbage_collector_on() -> None:
    assert gc.isenabled()
    make_plan([t("A", "a"), t("B", "a")], 2)
    with pytest.raises(InvalidInput):
        make_plan([t("A", after=["A"])], 2)
    assert gc.isenabled()


def test_bad_jobs() -> None:
    with pytest.raises(InvalidInput):
        make_plan([t("A")], 0)


# -- properties -------------------------------------------------------------------------

FILES = [
    "a.py",
    "b.py",
    "src/",
    "src/a.py",
    "src/*.py",
    "src/**",
    "src/a/b.py",
    "docs/x.md",
    "*.md",
]


@st.composite
def dags(draw: st.DrawFn) -> list[Task]:
    n = draw(st.integers(1, 12))
    tasks = []
    for i in range(n):
        blockers = draw(st.lists(st.integers(0, max(i - 1, 0)), max_size=3)) if i else []
        tasks.append(
            Task(
                f"T{i}",
                "x",
                relevant_files=tuple(draw(st.lists(st.sampled_from(FILES), max_size=2))),
                blocked_by=tuple(f"T{b}" for b in blockers),
                estimated_minutes=draw(st.sampled_from([None, 1, 2, 5, 13])),
            )
        )
    return draw(st.permutations(tasks))  # file order need not be topological


@settings(max_examples=150, deadline=None)
@given(dags(), st.integers(1, 4))
def test_waves_respect_blockers_and_conflicts(tasks: list[Task], jobs: int) -> None:
    plan = make_plan(tasks, jobs)
    wave_of = {tid: w.wave_id for w in plan.waves for tid in w.tasks}
    # Every task in exactly one wave.
    assert sorted(wave_of) == sorted(x.id for x in tasks)
    assert sum(len(w.tasks) for w in plan.waves) == len(tasks)
    by_id = {x.id: x for x in tasks}

    def ancestors(tid: str) -> set[str]:
        seen: set[str] = set()
        stack = list(by_id[tid].blocked_by)
        while stack:
            b = stack.pop()
            if b not in seen:
                seen.add(b)
                stack.extend(by_id[b].blocked_by)
        return seen

    graph = conflict_graph(tasks)
    for x in tasks:
        for b in ancestors(x.id):
            assert wave_of[b] < wave_of[x.id]
    for w in plan.waves:
        for i, a in enumerate(w.tasks):
            for b in w.tasks[i + 1 :]:
                assert b not in graph[a]
                assert not any(
                    patterns_conflict(p, q)
                    for p in by_id[a].relevant_files
                    for q in by_id[b].relevant_files
                )
    # The waves figure is what the schedule does in waves mode.
    assert plan.waves_minutes == pytest.approx(simulate(tasks, jobs, "waves")[0])
    # Figures are consistent with each other.
    assert plan.critical_path_minutes <= plan.eager_minutes + 1e-9
    assert plan.eager_minutes <= plan.sequential_minutes + 1e-9
    assert plan.waves_minutes <= plan.sequential_minutes + 1e-9
    assert 1 <= plan.max_concurrent <= jobs
    assert [w.wave_id for w in plan.waves] == list(range(1, len(plan.waves) + 1))


@settings(max_examples=150, deadline=None)
@given(dags(), st.integers(1, 4))
def test_plan_details_agree_with_direct_computation(tasks: list[Task], jobs: int) -> None:
    plan = make_plan(tasks, jobs)
    by_id = {x.id: x for x in tasks}
    position = {x.id: i for i, x in enumerate(tasks)}
    wave_of = {tid: w.wave_id for w in plan.waves for tid in w.tasks}
    graph = conflict_graph(tasks)
    # Each task moved for shared files names the first task of that wave it conflicts
    # with, and what they share.
    for w in plan.waves:
        for part in w.rationale.split("; "):
            if " moved out of wave " not in part:
                continue
            tid, rest = part.split(" moved out of wave ")
            low, rest = rest.split(": shares ")
            shared, other = rest.rsplit(" with ", 1)
            holders = [x.id for x in tasks if wave_of[x.id] == int(low) and x.id in graph[tid]]
            assert other == min(holders, key=position.__getitem__)
            assert shared == overlap(by_id[tid].relevant_files, by_id[other].relevant_files)
    # The eager figures are those of a plain simulation.
    eager, slots = simulate(tasks, jobs)
    assert plan.eager_minutes == eager
    # Most tasks at once: an event sweep, ends before starts at the same minute.
    events = sorted([(s, 1) for _, s, _ in slots] + [(e, -1) for _, _, e in slots])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert plan.max_concurrent == peak
    # The critical path is a blocked_by chain as long as the longest remaining path.
    path = plan.critical_path
    assert all(a in by_id[b].blocked_by for a, b in pairwise(path))
    assert plan.critical_path_minutes == pytest.approx(max(remaining_critical_path(tasks).values()))
    assert plan.critical_path_minutes == pytest.approx(sum(by_id[x].estimate for x in path))
