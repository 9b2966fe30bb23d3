"""Start-up and scale, whole process: what a user waits for, next to a baseline that does
the least the same job needs.

Usage: python bench/startup.py [--quick] [--repeat 5] [--sizes 10000,40000] [--json FILE]

* ``specexec run`` of a 1-task spec (``true``, ``--isolation none``), next to
  ``python -c pass`` (the interpreter alone) and ``git --version`` (a native tool);
  ``specexec --version`` and ``--help`` beside them;
* ``specexec plan --format json`` of generated specs (``plan_scale.make_tasks``: about 3
  relevant_files and 2 blockers per task) of 10,000 and 40,000 tasks, next to
  ``python -c "import json; json.load(...)"`` of the same tasks.json. The files are
  written compactly, as a generator would: 40,000 tasks are ~7.6 MiB, about what the
  8 MiB cap on tasks.json holds.

Every command runs as its own process (``python -m specexec`` from compiled bytecode,
see ``common.bench_env``); runs are interleaved and the best of ``--repeat`` is kept (the
machine may be shared). A ``-X importtime`` run of the 1-task ``run`` says which
packages its start-up imports, and what each costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
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
    measure,
    scratch,
    set_aside,
    table,
    write_spec,
)
from plan_scale import make_tasks

MAX_RUN_S = 0.25
MAX_CLI_S = 0.1  # --help, --version
PLAN_TARGETS = {10_000: 1.0, 40_000: 4.0}
CAP = 8 * 2**20  # jsonio.MAX_BYTES
# Packages whose import a 1-task run pays (or should not): the -X importtime table.
WATCHED = (
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "jinja2",
    "psutil",
    "filelock",
    "rich",
    "watchdog",
    "git",
    "asyncio",
)


def write_plan_spec(spec_dir: Path, n: int) -> Path:
    """``n`` tasks of ``plan_scale.make_tasks`` as a compact tasks.json."""
    spec_dir.mkdir(parents=True, exist_ok=True)
    items = [
        {
            "id": t.id,
            "summary": t.summary,
            "relevant_files": list(t.relevant_files),
            "parallelization": {"blocked_by": list(t.blocked_by)},
            "estimated_minutes": t.estimated_minutes,
        }
        for t in make_tasks(n)
    ]
    doc = {"version": 1, "spec": spec_dir.name, "worker": "shell", "tasks": items}
    path = spec_dir / "tasks.json"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    if path.stat().st_size > CAP:
        raise SystemExit(f"{path}: {path.stat().st_size} bytes, over the 8 MiB cap")
    return path


def import_costs(run: Callable[[], Measured], runs: int = 3) -> list[tuple[str, float]]:
    """Import time (ms) of each watched package in a run (the self times of all its
    modules: pydantic imports most of itself lazily, after its root module), of
    specexec's own modules, and of everything: the least of ``runs`` runs (``-X
    importtime`` reads a wall clock, which load inflates)."""
    best: dict[str, float] = {}
    for _ in range(runs):
        m = run()
        cost = dict.fromkeys([*WATCHED, "specexec", "everything imported"], 0.0)
        for line in m.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            own, _, name = line.split(":", 1)[1].split("|")
            root = name.strip().split(".")[0]
            cost["everything imported"] += int(own) / 1000
            if root in cost:
                cost[root] += int(own) / 1000
        for k, v in cost.items():
            best[k] = min(best.get(k, v), v)
    total = best.pop("everything imported")
    rows = sorted([(k, v) for k, v in best.items() if v], key=lambda r: -r[1])
    return [*rows, ("everything imported", total)]


def _checked(argv: list[str], cwd: Path) -> Measured:
    return check(measure(argv, cwd=cwd), " ".join(argv[:4]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 tasks, one run (CI)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="10000,40000")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    py = sys.executable

    with scratch("startup") as tmp:
        repo = init_repo(tmp / "repo")
        one = repo / "specs" / "one"
        tasks = [BenchTask("T0", "true")]
        run_argv = [*SPECEXEC, "run", "specs/one", "--isolation", "none"]

        def run_one(argv: list[str] = run_argv) -> Measured:
            write_spec(one, tasks)  # every run starts from pending, with no run folder
            set_aside(one / ".specexec")
            return check(measure(argv, cwd=repo), "specexec run")

        files = {n: write_plan_spec(repo / "specs" / f"plan{n}", n) for n in sizes}
        cases: dict[str, Callable[[], Measured]] = {
            "python -c pass": lambda: check(measure([py, "-c", "pass"]), "python"),
            "git --version": lambda: check(measure(["git", "--version"]), "git"),
            "specexec --version": lambda: check(measure([*SPECEXEC, "--version"]), "version"),
            "specexec --help": lambda: check(measure([*SPECEXEC, "--help"]), "help"),
            "specexec run, 1 task": run_one,
        }
        load = "import json, sys; json.load(open(sys.argv[1]))"
        for n, path in files.items():
            cases[f"json.load, {n} tasks"] = partial(_checked, [py, "-c", load, str(path)], repo)
            plan = [*SPECEXEC, "plan", f"specs/plan{n}", "--format", "json"]
            cases[f"specexec plan, {n} tasks"] = partial(_checked, plan, repo)
        bench_env()  # compile specexec before the first timed run
        runs: dict[str, list[Measured]] = {k: [] for k in cases}
        for _ in range(repeat):
            for name, fn in cases.items():
                runs[name].append(fn())
        imports = import_costs(partial(run_one, [py, "-X", "importtime", *run_argv[1:]]))
        sizes_mib = {n: p.stat().st_size / 2**20 for n, p in files.items()}

    b = {k: best(v) for k, v in runs.items()}
    rows = [
        (k, f"{m.wall:.3f}", f"{m.cpu_s:.3f}", f"{m.peak_rss_mib:.0f}", m.load)
        for k, m in b.items()
    ]
    run1 = b["specexec run, 1 task"]
    targets = [
        Target(
            "specexec run, 1 task, --isolation none (whole process)",
            f"{run1.wall:.3f} s (python -c pass {b['python -c pass'].wall:.3f} s, "
            f"git --version {b['git --version'].wall:.3f} s)",
            f"<= {MAX_RUN_S:g} s",
            run1.wall <= MAX_RUN_S,
            run1.load,
        ),
    ]
    for what in ("--version", "--help"):
        m = b[f"specexec {what}"]
        targets.append(
            Target(
                f"specexec {what}",
                f"{m.wall:.3f} s (python -c pass {b['python -c pass'].wall:.3f} s)",
                f"<= {MAX_CLI_S:g} s",
                m.wall <= MAX_CLI_S,
                m.load,
            )
        )
    for n in sizes:
        m, base = b[f"specexec plan, {n} tasks"], b[f"json.load, {n} tasks"]
        limit = PLAN_TARGETS.get(n)
        targets.append(
            Target(
                f"specexec plan --format json, {n} tasks (whole process)",
                f"{m.wall:.3f} s, cpu {m.cpu_s:.3f} s (json.load of it {base.wall:.3f} s)",
                "-" if limit is None else f"< {limit:g} s",
                None if limit is None else m.wall < limit,
                m.load,
            )
        )
    body = [
        f"Best of {repeat} interleaved runs, each a whole process; plan specs: "
        + ", ".join(f"{n} tasks = {sizes_mib[n]:.1f} MiB" for n in sizes)
        + " (compact JSON, 3 relevant_files and 2 blockers per task at most).",
        "",
        table(["command", "wall s", "cpu s", "peak RSS MiB", "load"], rows),
        "",
        "Imports of the 1-task run (`python -X importtime`, ms of its modules, least of 3 runs):",
        "",
        table(["package", "ms"], [(k, f"{v:.1f}") for k, v in imports]),
    ]
    rep = Report(
        title="Start-up and scale (whole process)",
        body="\n".join(body),
        targets=targets,
        commands=[
            "python -m specexec run specs/one --isolation none",
            "python -m specexec --version; python -m specexec --help",
            *(f"python -m specexec plan specs/plan{n} --format json" for n in sizes),
            'python -c pass; git --version; python -c "import json, sys; '
            'json.load(open(sys.argv[1]))" specs/planN/tasks.json',
            "python -X importtime -m specexec run specs/one --isolation none",
        ],
    )
    rep.emit(args.json)
    print(f"(load average now {loadavg()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
