"""Run every benchmark in one go and write bench/RESULTS.md.

Usage: python bench/run_all.py [--quick] [--only NAME,...] [--skip NAME,...] [--profile]
                               [--output PATH]

Each script runs as its own process (``sys.executable bench/<name>.py``), one after the
other (they time things: running them side by side would spoil the figures). The
scripts of this folder hand their figures over with ``--json``; ``plan_scale.py`` and
``git_cost.py`` are included by their printed output. A full run writes
bench/RESULTS.md (the machine, the exact commands, every table, and a summary of the
targets); ``--quick`` (small sizes, for CI) only prints, unless ``--output`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Target, loadavg, machine, table, verdict

BENCH = Path(__file__).resolve().parent
Result = dict[str, Any]  # a script's figures, as its --json file has them
# In the order they run: the cheap ones first, the long schedule-quality run last.
SCRIPTS = [
    "startup",
    "plan_scale",
    "scheduler_overhead",
    "write_amplification",
    "git_cost",
    "run_rss",
    "daemon_idle",
    "fleet",
    "schedule_quality",
]
FOREIGN = {"plan_scale", "git_cost"}  # not ours: no --json, read their printed table
PLAN_GROWTH_LIMIT = 1.5  # cost per n log n at the largest size vs the smallest


def plan_scale_targets(out: str, load: str) -> list[Target]:
    """Targets from plan_scale.py's table: its 'ok'/'MISSED' column and its last
    column (cost per n log n relative to the smallest size)."""
    targets = []
    growth: list[tuple[int, float]] = []
    for line in out.splitlines():
        cols = line.split()
        if not cols or not cols[0].isdigit():
            continue
        n = int(cols[0])
        m = re.search(r"<\s*([\d.]+)\s*s\s+(ok|MISSED)", line)
        nums = re.findall(r"\d+\.\d+", line.split("<")[0])
        if len(nums) >= 5:
            growth.append((n, float(nums[4])))
        if m:
            wall = float(nums[1]) if len(nums) >= 2 else float("nan")
            cpu = float(nums[2]) if len(nums) >= 3 else float("nan")
            targets.append(
                Target(
                    f"plan {n} tasks (make_plan wall, best of its runs)",
                    f"{wall:.3f} s (cpu {cpu:.3f} s)",
                    f"< {m.group(1)} s",
                    m.group(2) == "ok",
                    load,
                )
            )
    if len(growth) >= 2:
        (n0, _), (n1, g) = growth[0], growth[-1]
        targets.append(
            Target(
                f"planning cost per n log n, {n1} vs {n0} tasks",
                f"{g:.2f}x",
                f"<= {PLAN_GROWTH_LIMIT:g}x (no faster than n log n)",
                g <= PLAN_GROWTH_LIMIT,
                load,
            )
        )
    return targets


GIT_BEGIN, GIT_END = "<!-- git_cost:begin -->", "<!-- git_cost:end -->"


def git_cost_result(section_text: str, load: str) -> Result:
    """git_cost.py's own section, kept verbatim between its markers (a standalone
    ``python bench/git_cost.py`` replaces it in place), with its ok/MISSED lines as
    targets for the summary."""
    targets = []
    for line in section_text.splitlines():
        m = re.match(r"- (.+?): (?:(ok|MISSED) )?\(?([^()]+?)\)?$", line.strip())
        if m:
            met = None if m.group(2) is None else m.group(2) == "ok"
            what, target = m.group(1), "-"
            if " <= " in what:  # "pooled <= 0.1x fresh" -> "pooled vs fresh", "<= 0.1x"
                lhs, rhs = what.split(" <= ", 1)
                factor, _, other = rhs.partition(" ")
                what, target = f"{lhs} vs {other}", f"<= {factor}"
            targets.append(Target(f"git per task: {what}", m.group(3), target, met, load))
    title = section_text.strip().splitlines()[0].lstrip("# ") if section_text.strip() else ""
    return {
        "title": title or "Per-task git cost",
        "raw": f"{GIT_BEGIN}\n{section_text.strip()}\n{GIT_END}",
        "body": "",
        "targets": [t.__dict__ for t in targets],
        "commands": [],
        "notes": [],
    }


def run_script(name: str, quick: bool, profile: bool) -> Result:
    stamp = {
        "measured": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": loadavg(),
    }
    return {**_run_script(name, quick, profile), **stamp}


def _run_script(name: str, quick: bool, profile: bool) -> Result:
    path = BENCH / f"{name}.py"
    if not path.exists():
        note = f"bench/{name}.py does not exist yet: skipped."
        print(f"== {name}: {note}", file=sys.stderr)
        return {"title": name, "body": note, "targets": [], "commands": [], "notes": []}
    argv = [sys.executable, str(path)]
    if quick:
        argv.append("--quick")
    if profile and name == "scheduler_overhead":
        argv.append("--profile")
    if name == "git_cost":
        argv.append("--no-write")  # its section is written here, between its markers
    with tempfile.NamedTemporaryFile(suffix=".json") as js:
        if name not in FOREIGN:
            argv += ["--json", js.name]
        load = loadavg()
        t0 = time.perf_counter()
        print(f"== {name}: {' '.join(argv[1:])} (load {load})", file=sys.stderr, flush=True)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        took = time.perf_counter() - t0
        print(f"== {name}: exit {proc.returncode} after {took:.0f} s", file=sys.stderr, flush=True)
        rel = f"python bench/{name}.py" + (" --quick" if quick else "")
        if proc.returncode != 0:
            body = f"`{rel}` failed (exit {proc.returncode}):\n\n```\n{(proc.stderr or proc.stdout)[-3000:]}\n```"
            return {
                "title": name,
                "body": body,
                "targets": [],
                "commands": [],
                "notes": [],
                "failed": True,
            }
        if name == "git_cost":
            return git_cost_result(proc.stdout, load)
        if name in FOREIGN:
            targets = plan_scale_targets(proc.stdout, load)
            return {
                "title": name.replace("_", " ").capitalize() + f" (`{rel}`)",
                "body": f"Load average at start: {load}.\n\n```\n{proc.stdout.rstrip()}\n```",
                "targets": [t.__dict__ for t in targets],
                "commands": [rel],
                "notes": [],
            }
        data: Result = json.loads(Path(js.name).read_text())
        data["commands"] = [rel, *data.get("commands", [])]
        return data


def section(d: Result) -> str:
    if d.get("raw"):
        return str(d["raw"]).rstrip() + "\n"
    parts = [f"## {d['title']}", ""]
    if d.get("measured"):
        parts += [
            f"_Measured {d['measured']}, load average {d.get('load_start', '?')} at start._",
            "",
        ]
    parts += [str(d["body"]).strip(), ""]
    targets = d.get("targets") or []
    if targets:
        parts += [
            table(
                ["metric", "value", "target", "met", "load"],
                [
                    (t["metric"], t["value"], t["target"], verdict(t["met"]), t["load"])
                    for t in targets
                ],
            ),
            "",
        ]
    if d.get("commands"):
        parts += ["Commands:", "", *(f"    {c}" for c in d["commands"]), ""]
    parts += [f"- {n}" for n in d.get("notes") or []]
    return "\n".join(parts).rstrip() + "\n"


NOTES_BEGIN, NOTES_END = "<!-- notes: kept by run_all -->", "<!-- /notes -->"
DATA_TAG = "<!-- bench-results: "


def previous(path: Path) -> tuple[dict[str, Result], str]:
    """The results embedded in an earlier RESULTS.md (to update only some sections) and
    its hand-written notes block (kept verbatim)."""
    try:
        text = path.read_text()
    except OSError:
        return {}, ""
    notes = ""
    if NOTES_BEGIN in text and NOTES_END in text:
        notes = text[text.index(NOTES_BEGIN) : text.index(NOTES_END) + len(NOTES_END)]
    data: dict[str, Result] = {}
    if DATA_TAG in text:
        raw = text[text.index(DATA_TAG) + len(DATA_TAG) :].rsplit("-->", 1)[0]
        with contextlib.suppress(ValueError):
            data = json.loads(raw)["results"]
    if GIT_BEGIN in text and GIT_END in text:
        # git_cost.py may have rewritten its block since: the block wins.
        block = text[text.index(GIT_BEGIN) + len(GIT_BEGIN) : text.index(GIT_END)]
        old = data.get("git_cost", {})
        load = str(old.get("load_start", "-"))  # the block itself does not say
        data["git_cost"] = {**old, **git_cost_result(block, load)}
    return data, notes


def render(
    results: list[tuple[str, Result]],
    mach: dict[str, str],
    quick: bool,
    notes: str = "",
) -> str:
    summary = []
    for name, d in results:
        for t in d.get("targets") or []:
            summary.append(
                (t["metric"], t["value"], t["target"], verdict(t["met"]), t["load"], name)
            )
        if d.get("failed"):
            summary.append((f"{name}: failed", "-", "-", "**no**", "-", name))
        elif not d.get("targets"):
            summary.append(
                (f"{name}: {str(d['body']).splitlines()[0][:80]}", "-", "-", "-", "-", name)
            )
    lines = [
        "# specexec benchmarks",
        "",
        "Generated by `python bench/run_all.py` (`--only NAME` redoes one section and "
        "keeps the others; each section says when it was measured); every figure is "
        "reproduced by the command under its table. "
        "specexec runs as `python -m specexec` in scratch git repositories, next to the "
        "tool a user would pick instead (make -jN, GNU parallel) on identical work. "
        + ("**Quick mode: small sizes, for CI; not the reference figures.** " if quick else "")
        + "The machine was shared with other jobs: each figure carries the 1-minute load "
        "average at the time it was measured (load above the core count inflates times).",
        "",
        "## Machine",
        "",
        table(["", ""], list(mach.items())),
        "",
        "## Summary",
        "",
        table(["metric", "value", "target", "met", "load", "script"], summary),
        "",
    ]
    if notes:
        lines += [notes, ""]
    for _, d in results:
        lines.append(section(d))
    # The figures themselves, so `--only NAME` can redo one section and keep the rest.
    blob = json.dumps({"results": dict(results)}, separators=(",", ":")).replace("--", "-\\u002d")
    lines.append(f"{DATA_TAG}{blob} -->")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (CI); prints only")
    ap.add_argument("--only", help="comma-separated script names")
    ap.add_argument("--skip", help="comma-separated script names")
    ap.add_argument("--profile", action="store_true", help="profile scheduler_overhead (py-spy)")
    ap.add_argument("--output", help="where to write (default: bench/RESULTS.md for a full run)")
    ap.add_argument(
        "--rerender",
        action="store_true",
        help="run nothing: rewrite the output from the figures embedded in it",
    )
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        ap.error(f"unknown script(s): {', '.join(unknown)} (known: {', '.join(SCRIPTS)})")
    if args.skip:
        names = [n for n in names if n not in args.skip.split(",")]
    if args.rerender:
        names = []
    output = args.output or (None if args.quick else str(BENCH / "RESULTS.md"))
    old, notes = previous(Path(output)) if output else ({}, "")
    mach = machine()
    mach["written"] = mach.pop("date")
    mach["load average (1, 5, 15 min) when started"] = mach.pop("load average")
    fresh = {n: run_script(n, args.quick, args.profile) for n in names}
    mach["load average when written"] = loadavg()
    # A partial run (--only/--skip) keeps the other sections of the file it updates.
    results = [(n, fresh[n] if n in fresh else old[n]) for n in SCRIPTS if n in fresh or n in old]
    text = render(results, mach, args.quick, notes)
    print(text)
    if output:
        Path(output).write_text(text)
        print(f"written: {output}", file=sys.stderr)
    return 1 if any(d.get("failed") for d in fresh.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
