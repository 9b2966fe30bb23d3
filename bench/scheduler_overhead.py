"""Scheduler overhead without git: specexec next to ``make -jN`` (and GNU parallel) on a
DAG of tasks that do nothing.

Usage: python bench/scheduler_overhead.py [--quick] [--tasks 1000] [--jobs 2] [--repeat 3]
                                          [--profile] [--json FILE]

The workload: ``--tasks`` tasks whose command is ``true``, each blocked by 0-2 earlier
tasks (one near by, one anywhere), each owning one file (no file conflicts). specexec runs
them with ``--isolation none`` (no worktrees: this measures the scheduler, not git); make
runs a generated Makefile with the same commands and the same prerequisites; GNU
parallel (if installed) runs the same commands in file order *ignoring the dependencies*
(it has no DAG: a floor, not a fair rival). Runs are interleaved and the best of
``--repeat`` is kept (the machine may be shared).

overhead per task = (specexec wall - make wall) / tasks. Per-task cost = what one more task
adds: (wall of ``--tasks`` tasks - wall of 1 task) / (tasks - 1), for specexec and for make
alike, so neither start-up counts (bench/startup.py measures that). Targets: overhead <= 5
ms, specexec's per-task cost <= 3x make's (issue 13), and its wall <= 3x make's. ``--profile`` also samples one specexec run with py-spy (GIL-holding
samples, all threads) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SPECEXEC,
    BenchTask,
    Measured,
    Report,
    Target,
    bench_env,
    best,
    check,
    init_repo,
    loadavg,
    makefile,
    measure,
    random_dag,
    scratch,
    set_aside,
    table,
    write_spec,
)

MAX_OVERHEAD_MS = 5.0
MAX_RATIO = 3.0
# The resource guard holds new workers while the machine's CPU is above 90% (README,
# "Resource guard"): on 2 cores a -j2 run of `true` keeps the CPU busy itself, so at its
# default the guard lets one task at a time start, by design. make has no such guard; the
# scheduler is measured with it unable to hold (it still samples), as the suite and
# bench/fleet.py run, and the default is measured beside it.
NO_GUARD = {"SPECEXEC_MAX_CPU_PERCENT": "100"}


def workload(n: int, seed: int) -> list[BenchTask]:
    return [BenchTask(tid, "true", deps) for tid, deps in random_dag(n, random.Random(seed))]


def run_specexec(
    spec: Path, tasks: list[BenchTask], jobs: int, repo: Path, guard: bool = False
) -> Measured:
    write_spec(spec, tasks)  # every run starts from all-pending
    set_aside(spec / ".specexec")
    argv = [*SPECEXEC, "run", str(spec.relative_to(repo)), "--isolation", "none"]
    m = measure([*argv, "--jobs", str(jobs)], cwd=repo, env=None if guard else NO_GUARD)
    if m.returncode != 0:  # say why: the log's tail only lists the last tasks
        doc = json.loads((spec / "tasks.json").read_text())
        failed = [(t["id"], t.get("blocker")) for t in doc["tasks"] if t["status"] == "fail"]
        m.stderr += f"\nfailed tasks (id, blocker): {failed}"
    return check(m, "specexec run")


def profile(spec: Path, tasks: list[BenchTask], jobs: int, repo: Path, top: int = 18) -> str:
    """One specexec run under py-spy: which functions hold the GIL (the single-threaded
    loop competes for it with the task threads and the tasks.json writer)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return "py-spy is not installed (`pip install py-spy`): no profile."
    write_spec(spec, tasks)
    set_aside(spec / ".specexec")
    raw = spec.parent / "profile.txt"
    cmd = [pyspy, "record", "--gil", "-r", "200", "-f", "raw", "-o", str(raw), "--"]
    cmd += [*SPECEXEC, "run", str(spec.relative_to(repo)), "--isolation", "none"]
    cmd += ["--jobs", str(jobs)]
    proc = subprocess.run(
        cmd, cwd=repo, env={**bench_env(), **NO_GUARD}, capture_output=True, text=True, check=False
    )
    if not raw.exists():
        return f"py-spy failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    return summarize_profile(raw.read_text(), top)


def _func(frame: str) -> str:
    # "name (path/file.py:123)" -> "path/file.py:name": one row per function.
    name, _, where = frame.partition(" (")
    return f"{where.rsplit(':', 1)[0]}:{name}"


def summarize_profile(raw: str, top: int) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[_func(frames[-1])] += n
        for f in {_func(f) for f in frames}:
            incl[f] += n
        if "CoalescingWriter._run" in stack:
            threads["tasks.json writer thread (CoalescingWriter._run)"] += n
        elif "Executor._work" in stack or "Reactor._finish" in stack:
            threads["task threads (Executor._work, Reactor._finish)"] += n
        else:
            # With --isolation none the loop runs the tasks' steps itself (run/reactor.py).
            threads["main thread (startup, loop and its tasks, summary)"] += n
    if not total:
        return "py-spy recorded no samples."

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}%"

    skip = ("threading.py", "<frozen", "runpy", "concurrent/futures/thread.py")
    out = [
        f"py-spy --gil: {total} samples (share of the time the GIL was held).",
        "",
        table(["thread", "GIL share"], [(k, pct(v)) for k, v in threads.most_common()]),
        "",
        table(
            ["function (inclusive)", "share"],
            [(f, pct(n)) for f, n in incl.most_common() if not f.startswith(skip)][:top],
        ),
        "",
        table(["function (self)", "share"], [(f, pct(n)) for f, n in own.most_common(top)]),
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 tasks, one run (CI)")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="also profile one run (py-spy)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    n = 100 if args.quick else args.tasks
    repeat = 1 if args.quick else args.repeat
    jobs = args.jobs
    tasks = workload(n, args.seed)
    has_parallel = shutil.which("parallel") is not None

    with scratch("overhead") as tmp:
        repo = init_repo(tmp / "repo")
        spec = repo / "specs" / "overhead"
        one = repo / "specs" / "one"
        (tmp / "Makefile").write_text(makefile(tasks))
        (tmp / "commands.txt").write_text("".join(t.command + "\n" for t in tasks))
        (tmp / "Makefile.one").write_text(makefile(tasks[:1]))
        runs: dict[str, list[Measured]] = {
            "specexec": [],
            "specexec 1 task": [],
            "specexec, guard at its default": [],
            "make": [],
            "make 1 task": [],
        }
        if has_parallel:
            runs["parallel"] = []
        for _ in range(repeat):
            runs["make"].append(
                check(
                    measure(["make", "-s", f"-j{jobs}", "-f", str(tmp / "Makefile")], cwd=tmp),
                    "make",
                )
            )
            one_make = ["make", "-s", f"-j{jobs}", "-f", str(tmp / "Makefile.one")]
            runs["make 1 task"].append(check(measure(one_make, cwd=tmp), "make"))
            runs["specexec"].append(run_specexec(spec, tasks, jobs, repo))
            runs["specexec 1 task"].append(run_specexec(one, tasks[:1], jobs, repo))
            guarded = run_specexec(spec, tasks, jobs, repo, guard=True)
            runs["specexec, guard at its default"].append(guarded)
            if has_parallel:
                cmd = ["parallel", "--will-cite", f"-j{jobs}", "-a", str(tmp / "commands.txt")]
                runs["parallel"].append(check(measure(cmd, cwd=tmp), "parallel"))
        prof = profile(spec, tasks, jobs, repo) if args.profile else None

    b = {k: best(v) for k, v in runs.items()}
    se, mk = b["specexec"], b["make"]
    overhead_ms = (se.wall - mk.wall) / n * 1000
    ratio = se.wall / mk.wall
    fixed = b["specexec 1 task"].wall
    marginal_ms = (se.wall - fixed) / max(n - 1, 1) * 1000
    make_marginal_ms = (mk.wall - b["make 1 task"].wall) / max(n - 1, 1) * 1000
    per_task_ratio = marginal_ms / make_marginal_ms if make_marginal_ms > 0 else float("inf")
    rows = []
    for name, m in b.items():
        count = 1 if "1 task" in name else n
        rows.append(
            (
                name,
                count,
                f"{m.wall:.2f}",
                f"{m.wall / count * 1000:.2f}",
                f"{m.wall / mk.wall:.1f}x" if count == n else "-",
                f"{m.cpu_s:.2f}",
                f"{m.peak_rss_mib:.0f}",
                m.load,
            )
        )
    body = [
        f"{n} tasks (`true`), a random DAG ({sum(len(t.deps) for t in tasks)} edges), "
        f"--jobs {jobs}, best of {repeat}.",
        "",
        table(
            ["scheduler", "tasks", "wall s", "ms/task", "vs make", "cpu s", "peak RSS MiB", "load"],
            rows,
        ),
        "",
        f"specexec overhead per task over make: **{overhead_ms:.1f} ms** "
        f"(wall ratio {ratio:.1f}x); fixed cost of a 1-task run {fixed:.2f} s; "
        f"cost per extra task {marginal_ms:.2f} ms, make's {make_marginal_ms:.2f} ms "
        f"({per_task_ratio:.1f}x).",
    ]
    if has_parallel:
        body.append("GNU parallel runs the same commands without the dependencies (it has no DAG).")
    if prof:
        body += ["", "### Profile of one specexec run", "", prof]
    rep = Report(
        title="Scheduler overhead (no git): specexec vs make -j vs GNU parallel",
        body="\n".join(body),
        targets=[
            Target(
                f"overhead per task over make ({n} tasks, -j{jobs})",
                f"{overhead_ms:.1f} ms",
                f"<= {MAX_OVERHEAD_MS:g} ms",
                overhead_ms <= MAX_OVERHEAD_MS,
                se.load,
            ),
            Target(
                f"per-task cost, specexec vs make ({n} tasks vs 1, -j{jobs})",
                f"{per_task_ratio:.1f}x ({marginal_ms:.2f} ms vs {make_marginal_ms:.2f} ms)",
                f"<= {MAX_RATIO:g}x",
                per_task_ratio <= MAX_RATIO,
                se.load,
            ),
            Target(
                "specexec wall / make wall",
                f"{ratio:.1f}x",
                f"<= {MAX_RATIO:g}x",
                ratio <= MAX_RATIO,
                se.load,
            ),
        ],
        commands=[
            f"SPECEXEC_MAX_CPU_PERCENT=100 python -m specexec run specs/overhead "
            f"--isolation none --jobs {jobs} (and once without the variable)",
            f"make -s -j{jobs} -f Makefile; make -s -j{jobs} -f Makefile.one",
            *([f"parallel --will-cite -j{jobs} -a commands.txt"] if has_parallel else []),
        ],
    )
    rep.emit(args.json)
    print(f"(load average now {loadavg()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
