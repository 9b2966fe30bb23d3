"""The scheduling rule: a pure state machine driven as the executor drives it (in memory)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from conftest import task_obj as t
from hypothesis import given, settings
from hypothesis import strategies as st

from specexec.errors import InvalidInput
from specexec.plan.patterns import conflict_graph, conflict_indices, patterns_conflict
from specexec.plan.schedule import Key, Prepared, Schedule, TaskGraph, simulate
from specexec.tasksfile.types import Task


def one(tasks: Sequence[Task], jobs: int = 4, mode: str = "eager") -> Schedule:
    return Schedule([("s", tasks)], jobs, mode)  # type: ignore[arg-type]


def ids(keys: Sequence[Key]) -> list[str]:
    return [k[1] for k in keys]


def test_ready_tasks_start_up_to_jobs_longest_path_first() -> None:
    s = one(
        [
            t("A", "a", minutes=1),
            t("B", "b", minutes=1),
            t("C", "c", minutes=5),
            t("D", "d", after=["B"], minutes=10),
        ],
        jobs=2,
    )
    assert ids(s.start_ready()) == ["B", "C"]  # B heads an 11-minute chain, C is 5
    assert s.start_ready() == []
    assert s.why_waiting(("s", "A")) == "no free job slot"
    assert s.why_waiting(("s", "D")) == "waits for B"
    assert s.finish(("s", "B"), True) == []
    assert ids(s.start_ready()) == ["D"]
    assert ids(s.running) == ["C", "D"]


def test_ties_go_by_file_order() -> None:
    s = one([t("Z", "z"), t("Y", "y"), t("X", "x")], jobs=2)
    assert ids(s.start_ready()) == ["Z", "Y"]


def test_conflicting_tasks_never_run_together() -> None:
    s = one([t("T4", "src/a.py", minutes=5), t("T5", "src/", minutes=1), t("T6", "b")], jobs=4)
    assert ids(s.start_ready()) == ["T4", "T6"]
    assert s.why_waiting(("s", "T5")) == "conflicts with running T4 on src/a.py"
    s.finish(("s", "T6"), True)
    assert s.start_ready() == []
    s.finish(("s", "T4"), True)
    assert ids(s.start_ready()) == ["T5"]


def test_failure_blocks_dependents_transitively() -> None:
    s = one([t("A", "a"), t("B", "b", after=["A"]), t("C", "c", after=["B"]), t("D", "d")])
    assert ids(s.start_ready()) == ["A", "D"]
    blocked = s.finish(("s", "A"), False)
    assert blocked == [
        (("s", "B"), "blocked by A (fail)"),
        (("s", "C"), "blocked by B (blocked by A (fail))"),
    ]
    assert s.state(("s", "C")) == "blocked"
    assert s.why_waiting(("s", "C")) == "blocked by B (blocked by A (fail))"
    s.finish(("s", "D"), True)
    assert s.start_ready() == [] and s.done()


def test_worker_reported_blocked_is_named() -> None:
    s = one([t("A", "a"), t("B", "b", after=["A"])])
    s.start_ready()
    assert s.finish(("s", "A"), False, outcome="blocked") == [
        (("s", "B"), "blocked by A (blocked)")
    ]


def test_statuses_from_the_file() -> None:
    s = one(
        [
            t("A", "a", status="pass"),
            t("B", "b", status="fail"),
            t("C", "c", after=["A"]),
            t("D", "d", after=["B"]),
            t("E", "e", after=["D"]),
            t("F", "f", status="in_progress"),
            t("G", "g", after=["F"]),
        ]
    )
    assert s.initially_blocked() == [
        (("s", "D"), "blocked by B (fail)"),
        (("s", "E"), "blocked by D (blocked by B (fail))"),
    ]
    assert ids(s.start_ready()) == ["C"]  # A passed already; F is left alone
    assert s.why_waiting(("s", "G")) == "waits for F"
    s.finish(("s", "C"), True)
    assert s.done()


def test_release_puts_a_task_back() -> None:
    s = one([t("A", "a"), t("B", "a")], jobs=2)
    assert ids(s.start_ready()) == ["A"]
    s.release(("s", "A"))
    assert s.state(("s", "A")) == "pending" and s.running == ()
    assert ids(s.start_ready()) == ["A"]
    with pytest.raises(ValueError):
        s.finish(("s", "B"), True)


def test_set_jobs_falls_back_to_one() -> None:
    s = one([t(x, x) for x in "ABCD"], jobs=3)
    assert len(s.start_ready()) == 3
    s.set_jobs(1)
    s.finish(("s", "A"), True)
    assert s.start_ready() == []  # still two running
    s.finish(("s", "B"), True)
    s.finish(("s", "C"), True)
    assert ids(s.start_ready()) == ["D"]
    with pytest.raises(InvalidInput):
        s.set_jobs(0)


def test_groups_share_the_pool_but_not_conflicts_or_ids() -> None:
    a = [t("T1", "src/x.py"), t("T2", "src/x.py")]
    b = [t("T1", "src/x.py"), t("T2", "other", after=["T1"])]
    s = Schedule([("a", a), ("b", b)], jobs=3)
    # Same path, different specs: both run; b's T1 heads a longer chain, so it goes first.
    assert s.start_ready() == [("b", "T1"), ("a", "T1")]
    s.finish(("b", "T1"), False)
    assert s.state(("b", "T2")) == "blocked" and s.state(("a", "T2")) == "pending"
    assert s.why_waiting(("a", "T2")) == "conflicts with running T1 on src/x.py"


def test_waves_mode_waits_at_the_barrier() -> None:
    tasks = [t("A", "a", minutes=10), t("B", "b"), t("C", "c", after=["B"])]
    s = one(tasks, jobs=4, mode="waves")
    assert ids(s.start_ready()) == ["A", "B"]
    s.finish(("s", "B"), True)
    assert s.start_ready() == []  # C is ready but wave 1 still runs
    assert s.why_waiting(("s", "C")) == "in wave 2: waits for wave 1 to finish"
    s.finish(("s", "A"), True)
    assert ids(s.start_ready()) == ["C"]
    assert ids(one(tasks, jobs=4).start_ready()) == ["A", "B"]


def test_waves_mode_skips_a_wave_emptied_by_failure() -> None:
    tasks = [t("A", "a"), t("B", "b", after=["A"]), t("C", "c", after=["B"]), t("D", "x")]
    s = one(tasks, mode="waves")
    assert ids(s.start_ready()) == ["A", "D"]
    s.finish(("s", "A"), False)
    s.finish(("s", "D"), True)
    assert s.done()


def test_dry_run_order_and_simulation() -> None:
    tasks = [
        t("A", "a", minutes=10),
        t("B", "b", minutes=1),
        t("C", "c", after=["B"], minutes=1),
        t("D", "d", after=["C"], minutes=1),
    ]
    assert ids(one(tasks, jobs=2).dry_run_order()) == ["A", "B", "C", "D"]
    eager, slots = simulate(tasks, 2, "eager")
    waves, _ = simulate(tasks, 2, "waves")
    assert (eager, waves) == (10, 12)
    assert [(k[1], s, e) for k, s, e in slots] == [
        ("A", 0, 10),
        ("B", 0, 1),
        ("C", 1, 2),
        ("D", 2, 3),
    ]


def test_simulation_of_groups_shares_jobs() -> None:
    g = [t("A", "a", minutes=2), t("B", "b", minutes=2)]
    makespan, slots = simulate([("x", g), ("y", g)], 2)
    assert makespan == 4 and len(slots) == 4


def test_bad_input() -> None:
    with pytest.raises(InvalidInput):
        one([t("A")], jobs=0)
    with pytest.raises(InvalidInput):
        one([t("A"), t("A")])


def test_graph_keeps_each_blocker_once_in_order() -> None:
    tasks = [t(f"B{k}") for k in range(8)]
    many = [f"B{k}" for k in (3, 1, 3, 2, 9, 1, 0, 4, 5, 6, 7)]  # > 8, repeats, unknown B9
    tasks += [t("X", after=many), t("Y", after=["B2", "nope", "B2", "B0"])]
    graph = TaskGraph.build(tasks)
    assert graph.deps[8] == (3, 1, 2, 0, 4, 5, 6, 7)
    assert graph.deps[9] == (2, 0)
    assert graph.dependents[2] == (8, 9) and graph.dependents[7] == (8,)
    assert graph.order == (0, 1, 2, 3, 4, 5, 6, 7, 9, 8)  # Y is ready before X
    with pytest.raises(InvalidInput, match="'B1'"):
        TaskGraph.build([*tasks, t("B1")])


def test_prepared_priority_is_the_one_computed() -> None:
    tasks = [
        t("A", "a", minutes=10),
        t("B", "a", minutes=1),
        t("C", "c", after=["B"], minutes=30),
        t("D", "d", after=["A", "C"], minutes=2),
    ]
    graph = TaskGraph.build(tasks)
    prio = graph.bottom_levels([x.estimate for x in tasks])
    prepared = {"": Prepared(graph, conflict_indices(tasks), prio)}
    assert simulate(tasks, 2, prepared=prepared) == simulate(tasks, 2)


def test_a_long_conflict_queue_is_not_rescanned() -> None:
    """Thousands of tasks waiting on one running task: each is parked once."""
    n = 5_000
    tasks = [t("HOT", "src/", minutes=100)] + [t(f"T{i}", f"src/m{i}.py") for i in range(n)]
    s = one(tasks, jobs=4)
    assert ids(s.start_ready()) == ["HOT"]
    for _ in range(50):  # no event frees HOT: nothing may start, quickly
        assert s.start_ready() == []
    s.finish(("s", "HOT"), True)
    assert len(s.start_ready()) == 4
    makespan, _ = simulate(tasks, 4)
    assert makespan == 100 + n / 4


# -- properties -------------------------------------------------------------------------

FILES = ["a.py", "b.py", "src/", "src/a.py", "src/*.py", "src/**", "docs/x.md", "*.md"]


@st.composite
def groups(draw: st.DrawFn) -> list[tuple[str, list[Task]]]:
    out = []
    for g in range(draw(st.integers(1, 2))):
        n = draw(st.integers(1, 9))
        tasks = []
        for i in range(n):
            blockers = draw(st.lists(st.integers(0, i - 1), max_size=3)) if i else []
            tasks.append(
                Task(
                    f"T{i}",
                    "x",
                    status=draw(st.sampled_from(["pending"] * 6 + ["pass", "fail", "blocked"])),
                    relevant_files=tuple(draw(st.lists(st.sampled_from(FILES), max_size=2))),
                    blocked_by=tuple(f"T{b}" for b in blockers),
                    estimated_minutes=draw(st.sampled_from([1, 2, 7])),
                )
            )
        out.append((f"g{g}", draw(st.permutations(tasks))))
    return out


@settings(max_examples=150, deadline=None)
@given(groups(), st.integers(1, 3), st.sampled_from(["eager", "waves"]), st.data())
def test_schedule_invariants(
    gs: list[tuple[str, list[Task]]], jobs: int, mode: str, data: st.DataObject
) -> None:
    s = Schedule(gs, jobs, mode)  # type: ignore[arg-type]
    task = {(g, x.id): x for g, ts in gs for x in ts}
    status: dict[Key, str] = {k: x.status for k, x in task.items()}
    conflicts = {g: conflict_graph(ts) for g, ts in gs}

    def blockers(k: Key) -> list[Key]:
        return [(k[0], b) for b in task[k].blocked_by if (k[0], b) in task]

    def dependents_closure(k: Key) -> set[Key]:
        out: set[Key] = set()
        frontier = [k]
        while frontier:
            b = frontier.pop()
            for d, x in task.items():
                if (
                    d[0] == b[0]
                    and b[1] in x.blocked_by
                    and status[d] == "pending"
                    and d not in out
                ):
                    out.add(d)
                    frontier.append(d)
        return out

    # Pending tasks behind a failed/blocked one are blocked from the start.
    expected: set[Key] = set()
    for k, st_ in list(status.items()):
        if st_ in ("fail", "blocked"):
            expected |= dependents_closure(k)
    assert {k for k, _ in s.initially_blocked()} == expected
    for k in expected:
        status[k] = "blocked"

    releases = 0
    for _ in range(200):
        started = s.start_ready()
        for k in started:
            assert status[k] == "pending"
            assert all(status[b] == "pass" for b in blockers(k)), k
            status[k] = "running"
            if mode == "waves":
                w = s.wave_of(k)
                assert w is not None
                for other in task:
                    ow = s.wave_of(other)
                    if other[0] == k[0] and ow is not None and ow < w:
                        assert status[other] in ("pass", "fail", "blocked")
        running = list(s.running)
        assert sorted(running) == sorted(k for k, v in status.items() if v == "running")
        assert len(running) <= jobs
        for i, a in enumerate(running):
            for b in running[i + 1 :]:
                if a[0] == b[0]:
                    assert b[1] not in conflicts[a[0]][a[1]]
                    assert not any(
                        patterns_conflict(p, q)
                        for p in task[a].relevant_files
                        for q in task[b].relevant_files
                    )
        if mode == "eager" and len(running) < jobs:
            # Work-conserving: a ready task only waits for a conflicting running task.
            for k, v in status.items():
                if v == "pending" and all(status[b] == "pass" for b in blockers(k)):
                    assert any(r[0] == k[0] and r[1] in conflicts[k[0]][k[1]] for r in running)
        if not running:
            assert s.done()
            break
        assert not s.done()
        k = data.draw(st.sampled_from(running))
        if releases < 3 and data.draw(st.integers(0, 9)) == 0:
            releases += 1
            s.release(k)
            status[k] = "pending"
            continue
        passed = data.draw(st.booleans())
        newly = s.finish(k, passed)
        status[k] = "pass" if passed else "fail"
        want = dependents_closure(k) if not passed else set()
        assert {d for d, _ in newly} == want
        for d, reason in newly:
            assert reason.startswith("blocked by ")
            status[d] = "blocked"
    else:
        pytest.fail("the run did not end")

    # Everything that could run ran: nothing is left pending.
    assert all(v in ("pass", "fail", "blocked") for v in status.values())
    for k, v in status.items():
        assert s.state(k) == v
        if v == "blocked" and task[k].status == "pending":
            assert any(status[b] in ("fail", "blocked") for b in blockers(k))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5), st.integers(2, 4))
def test_eager_never_waits_at_barriers(chains: int, length: int, jobs: int) -> None:
    """One long task plus short chains: waves pay for every barrier, eager does not."""
    tasks = [t("LONG", "long", minutes=60)]
    for c in range(chains):
        for i in range(length):
            after = [f"C{c}.{i - 1}"] if i else []
            tasks.append(t(f"C{c}.{i}", f"c{c}/{i}", after=after, minutes=2))
    eager, _ = simulate(tasks, jobs, "eager")
    waves, _ = simulate(tasks, jobs, "waves")
    assert eager <= waves
    if length > 1:
        assert eager < waves
