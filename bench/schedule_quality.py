"""Schedule quality: how close specexec's eager schedule gets to the best possible
makespan, next to ``--schedule waves`` and ``make -jN`` on the same DAGs.

Usage: python bench/schedule_quality.py [--quick] [--dags 100] [--seconds 1.2] [--json FILE]

Each DAG has 10-18 tasks that sleep for a lognormal duration (sigma 1: many short tasks,
a few long ones), scaled so the lower bound is about ``--seconds``; each task is blocked
by 0-2 earlier tasks, mostly near by (chains of uneven length: where wave barriers
hurt). jobs alternates 2 and 3. The three schedulers run the very same commands
(``--isolation none`` for specexec; a generated Makefile for make). specexec gets the
durations as ``estimated_minutes`` (its priority rule uses them; make has no priorities).

Every command logs its own start and end (``date +%s%N``) to a file, so the makespan is
first start to last end, without any scheduler's startup, and the lower bound
max(critical path, total work / jobs) is computed from the durations measured in that
same run. ratio = makespan / lower bound (1.0 is perfect; nothing can beat it).
Targets: eager median <= 1.10, and eager <= 0.85 x waves where barriers matter.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SPECEXEC,
    BenchTask,
    Report,
    Target,
    check,
    init_repo,
    loadavg,
    lower_bound,
    makefile,
    measure,
    median,
    quantile,
    scratch,
    table,
    write_spec,
)

from specexec.plan.schedule import simulate
from specexec.tasksfile.types import Task

MAX_EAGER_RATIO = 1.10
MAX_EAGER_VS_WAVES = 0.85
BARRIER_MATTERS = 1.15  # simulated waves makespan >= 1.15 x simulated eager
SCHEDULERS = ("eager", "waves", "make")
MIN_SLEEP = 0.05


def make_dag(seed: int, seconds: float, log: Path) -> tuple[list[BenchTask], int]:
    rnd = random.Random(seed)
    n = rnd.randint(10, 18)
    jobs = 2 + seed % 2
    ids = [f"T{i}" for i in range(n)]
    deps: list[tuple[str, ...]] = []
    for i in range(n):
        ds: set[int] = set()
        for _ in range(rnd.choice((0, 1, 1, 2))):
            if i:
                ds.add(rnd.randrange(max(0, i - 4), i) if rnd.random() < 0.8 else rnd.randrange(i))
        deps.append(tuple(ids[d] for d in sorted(ds)))
    raw = [rnd.lognormvariate(0, 1.0) for _ in range(n)]
    draft = [BenchTask(ids[i], "", deps[i], raw[i]) for i in range(n)]
    scale = seconds / lower_bound(draft, {t.id: t.seconds for t in draft}, jobs)
    tasks = []
    for t in draft:
        s = max(MIN_SLEEP, round(t.seconds * scale, 3))
        # Every scheduler runs exactly this; the log lines give true start and end times.
        cmd = (
            f'echo "s {t.id} $(date +%s%N)" >> {log}; sleep {s}; '
            f'echo "e {t.id} $(date +%s%N)" >> {log}'
        )
        tasks.append(BenchTask(t.id, cmd, t.deps, s))
    return tasks, jobs


def with_log(tasks: list[BenchTask], old: Path, new: Path) -> list[BenchTask]:
    return [
        BenchTask(t.id, t.command.replace(str(old), str(new)), t.deps, t.seconds) for t in tasks
    ]


def simulated(tasks: list[BenchTask], dur: dict[str, float], jobs: int, mode: str) -> float:
    """specexec's own schedule (``schedule.simulate``) with zero start latency: the
    quality of its decisions alone, in seconds."""
    ts = [Task(t.id, t.id, blocked_by=t.deps, estimated_minutes=dur[t.id] / 60) for t in tasks]
    makespan, _ = simulate(ts, jobs, "waves" if mode == "waves" else "eager")
    return makespan * 60


def barriers_matter(tasks: list[BenchTask], jobs: int) -> bool:
    """Whether specexec's own simulation (nominal durations) says waves lose >= 15%."""
    nominal = {t.id: t.seconds for t in tasks}
    eager = simulated(tasks, nominal, jobs, "eager")
    return simulated(tasks, nominal, jobs, "waves") >= BARRIER_MATTERS * eager


def read_log(log: Path, tasks: list[BenchTask]) -> tuple[float, dict[str, float]]:
    """(makespan, measured duration of each task) from the start/end lines."""
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    for line in log.read_text().splitlines():
        kind, tid, ns = line.split()
        (start if kind == "s" else end)[tid] = int(ns)
    missing = [t.id for t in tasks if t.id not in start or t.id not in end]
    if missing:
        raise SystemExit(f"{log}: tasks did not run: {missing}")
    makespan = (max(end.values()) - min(start.values())) / 1e9
    return makespan, {t.id: (end[t.id] - start[t.id]) / 1e9 for t in tasks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 DAGs (CI)")
    ap.add_argument("--dags", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=1.2, help="lower bound of each DAG")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    dags = 5 if args.quick else args.dags
    ratios: dict[str, list[float]] = defaultdict(list)
    eager_vs_waves: list[float] = []
    eager_vs_waves_barrier: list[float] = []
    eager_vs_make: list[float] = []
    loads: list[float] = []
    t0 = time.perf_counter()
    with scratch("quality") as tmp:
        repo = init_repo(tmp / "repo")
        for k in range(dags):
            base_log = tmp / "times.log"
            tasks, jobs = make_dag(k, args.seconds, base_log)
            matters = barriers_matter(tasks, jobs)
            got: dict[str, float] = {}
            for sched in SCHEDULERS:
                log = tmp / f"times-{k}-{sched}.log"
                mine = with_log(tasks, base_log, log)
                loads.append(float(loadavg()))
                if sched == "make":
                    (tmp / "Makefile").write_text(makefile(mine))
                    check(
                        measure(["make", "-s", f"-j{jobs}", "-f", str(tmp / "Makefile")], cwd=tmp),
                        "make",
                    )
                else:
                    spec = repo / "specs" / f"q{k}-{sched}"
                    write_spec(spec, mine, estimates=True)
                    argv_ = [*SPECEXEC, "run", str(spec.relative_to(repo)), "--isolation", "none"]
                    argv_ += ["--jobs", str(jobs), "--schedule", sched]
                    check(measure(argv_, cwd=repo), f"specexec run --schedule {sched}")
                    shutil.rmtree(spec, ignore_errors=True)
                makespan, dur = read_log(log, tasks)
                got[sched] = makespan
                bound = lower_bound(tasks, dur, jobs)
                ratios[sched].append(makespan / bound)
                if sched != "make":
                    # The same durations, no start latency: decisions vs. overheads.
                    ratios[f"{sched} (simulated)"].append(
                        simulated(tasks, dur, jobs, sched) / bound
                    )
            eager_vs_waves.append(got["eager"] / got["waves"])
            eager_vs_make.append(got["eager"] / got["make"])
            if matters:
                eager_vs_waves_barrier.append(got["eager"] / got["waves"])
            print(
                f"dag {k + 1}/{dags}: jobs {jobs}, {len(tasks)} tasks, "
                + ", ".join(f"{s} {ratios[s][-1]:.2f}" for s in SCHEDULERS)
                + f" x lower bound{' (barriers matter)' if matters else ''}, load {loads[-1]:.1f}",
                file=sys.stderr,
                flush=True,
            )
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    rows = [
        (s, f"{median(ratios[s]):.3f}", f"{quantile(ratios[s], 0.9):.3f}", f"{max(ratios[s]):.3f}")
        for s in (*SCHEDULERS, "eager (simulated)", "waves (simulated)")
    ]
    rel = [
        ("eager / waves, all DAGs", eager_vs_waves),
        (
            f"eager / waves, DAGs where barriers matter ({len(eager_vs_waves_barrier)})",
            eager_vs_waves_barrier,
        ),
        ("eager / make, all DAGs", eager_vs_make),
    ]
    body = [
        f"{dags} random DAGs of sleep tasks (10-18 tasks, lognormal durations, lower bound "
        f"~{args.seconds:g} s, jobs 2 or 3), each run by all three schedulers; "
        f"load average {load} during the run; took {time.perf_counter() - t0:.0f} s.",
        "",
        table(["scheduler", "median makespan / lower bound", "p90", "max"], rows),
        "",
        table(
            ["makespan ratio", "median", "p90"],
            [(name, f"{median(xs):.3f}", f"{quantile(xs, 0.9):.3f}") for name, xs in rel],
        ),
    ]
    barrier_med = median(eager_vs_waves_barrier)
    rep = Report(
        title="Schedule quality: eager vs waves vs make -jN",
        body="\n".join(body),
        targets=[
            Target(
                "eager makespan / lower bound (median)",
                f"{median(ratios['eager']):.3f}",
                f"<= {MAX_EAGER_RATIO:.2f}",
                median(ratios["eager"]) <= MAX_EAGER_RATIO,
                load,
            ),
            Target(
                "eager / waves where barriers matter (median)",
                "n/a" if math.isnan(barrier_med) else f"{barrier_med:.3f}",
                f"<= {MAX_EAGER_VS_WAVES:.2f}",
                None if math.isnan(barrier_med) else barrier_med <= MAX_EAGER_VS_WAVES,
                load,
            ),
            Target(
                "eager / waves over all DAGs (median)",
                f"{median(eager_vs_waves):.3f}",
                "-",
                None,
                load,
            ),
        ],
        commands=[
            "python -m specexec run specs/qK-eager --isolation none --jobs J --schedule eager",
            "python -m specexec run specs/qK-waves --isolation none --jobs J --schedule waves",
            "make -s -jJ -f Makefile",
        ],
        notes=[
            "Barriers matter on a DAG when specexec's own simulation (nominal durations) "
            f"makes waves at least {BARRIER_MATTERS:g}x slower than eager.",
            "The simulated rows replay specexec's own scheduling rule (schedule.simulate) "
            "on the durations measured in the eager/waves run, with no start latency: the "
            "gap between a simulated row and its measured row is specexec's per-task "
            "overhead, not its decisions.",
            "The lower bound is not always reachable, so even an optimal schedule can "
            "score above 1.0; each scheduler's ratio also carries its per-task start "
            "latency (short tasks make it visible).",
        ],
    )
    rep.emit(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
