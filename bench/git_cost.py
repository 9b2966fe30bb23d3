"""Per-task git cost: a hand-written git sequence, specexec with a fresh worktree per task,
and specexec with the warm worktree pool, side by side on one generated repository.

Usage: python bench/git_cost.py [--quick] [--tasks N] [--files N] [--check] [--no-write]

Tasks run in pairs started from the same integration tip (as two parallel tasks do), so
one merge of each pair is a fast-forward and the other a real merge. Per task:

- hand-written: ``git worktree add`` (checks every file out), write a file, ``git add
  -A``, ``git commit``, ``merge-tree --write-tree`` + ``commit-tree`` + compare-and-swap
  ``update-ref``, ``git worktree remove --force``, ``git branch -D`` (one ``sh`` script).
- specexec fresh (``--no-pool``): ``create_worktree``, write, ``changed_files``,
  ``commit_all``, ``merge``, ``remove_worktree``: what ``taskrun`` calls.
- specexec pooled (the default): the same with ``WorktreePool.acquire``/``release``.

Modes are interleaved round by round (the machine may be shared), with ``sync`` (untimed)
between two modes so that none pays for another's disk writeback, and the median of the
per-task times is reported. Targets: pooled <= 0.1x fresh; fresh <= 1.3x hand-written.
The table is printed and written to bench/RESULTS.md (its own section; the rest of the
file is kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specexec.git.env import clean_env
from specexec.git.pool import WorktreePool
from specexec.git.workspace import Workspace, Worktree

POOL_VS_FRESH = 0.1
FRESH_VS_HAND = 1.3
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- git_cost:begin -->", "<!-- git_cost:end -->"

HAND = """set -e
g() {{ git -c gc.auto=0 -c core.hooksPath=/dev/null "$@"; }}
base=$(g rev-parse specexec/hand)
for t in a b; do
  wt="$PWD/.git/hand-wt-{i}$t"
  g worktree add -q --no-track -b hand/{i}$t "$wt" "$base"
  echo {i}$t > "$wt/hand-{i}$t.txt"
  g -C "$wt" add -A
  g -C "$wt" commit -q -m "task {i}$t"
done
for t in a b; do
  c=$(g rev-parse hand/{i}$t)
  old=$(g rev-parse specexec/hand)
  tree=$(g merge-tree --write-tree "$old" "$c")
  m=$(g commit-tree "$tree" -p "$old" -p "$c" -m "merge {i}$t")
  g update-ref refs/heads/specexec/hand "$m" "$old"
  g worktree remove --force "$PWD/.git/hand-wt-{i}$t"
  g branch -q -D hand/{i}$t
done
"""


def make_repo(path: Path, files: int) -> Path:
    path.mkdir(parents=True)
    env = {**clean_env(), "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}  # fmt: skip

    def g(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)

    g("init", "-q", "-b", "main")
    for i in range(files):
        f = path / f"pkg{i % 40}" / f"mod{i}.py"
        f.parent.mkdir(exist_ok=True)
        f.write_text(f"value_{i} = {i}\n" * 20)
    (path / ".gitignore").write_text(".venv/\n")
    g("add", "-A")
    g("commit", "-q", "-m", "initial")
    g("config", "user.name", "bench")
    g("config", "user.email", "bench@localhost")
    return path


Phases = dict[str, float]


def hand_pair(repo: Path, i: int) -> Phases:
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", HAND.format(i=i)], cwd=repo, env=clean_env(), check=True,
                   capture_output=True)  # fmt: skip
    return {"total": time.perf_counter() - t0}


def specexec_pair(
    ws: Workspace,
    spec: str,
    i: int,
    take: Callable[[str], Worktree],
    give: Callable[[Worktree], None],
) -> Phases:
    ph = {"take": 0.0, "commit": 0.0, "merge": 0.0, "give back": 0.0}
    wts: list[tuple[Worktree, str]] = []
    t0 = time.perf_counter()
    for t in "ab":
        a = time.perf_counter()
        wt = take(f"P{i}{t}")
        b = time.perf_counter()
        (wt.path / f"{spec}-{i}{t}.txt").write_text(f"{i}{t}\n")
        assert ws.changed_files(wt) == [f"{spec}-{i}{t}.txt"]
        sha = ws.commit_all(wt, f"task {i}{t}")
        assert sha is not None
        c = time.perf_counter()
        ph["take"] += b - a
        ph["commit"] += c - b
        wts.append((wt, sha))
    for wt, sha in wts:
        a = time.perf_counter()
        assert ws.merge(spec, sha, f"Merge {wt.task_id}").merged
        b = time.perf_counter()
        give(wt)
        c = time.perf_counter()
        ph["merge"] += b - a
        ph["give back"] += c - b
    ph["total"] = time.perf_counter() - t0
    return ph


def median_per_task(pairs: list[Phases], key: str = "total") -> float:
    return statistics.median(p[key] for p in pairs) / 2


def write_results(text: str) -> None:
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    section = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in old and END in old:
        head, _, rest = old.partition(BEGIN)
        _, _, tail = rest.partition(END)
        new = head + section + tail
    else:
        new = old.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 tasks per mode (CI)")
    ap.add_argument("--tasks", type=int, default=20, help="tasks per mode (default 20)")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args(argv)
    # --quick keeps the 2,000 files: the targets are about a repository of that size.
    files, tasks = args.files, (6 if args.quick else args.tasks)
    load_start = os.getloadavg()[0]
    rounds = max(1, tasks // 2)

    tmp = Path(tempfile.mkdtemp(prefix="specexec-git-cost-"))
    try:
        repo = make_repo(tmp / "repo", files)
        # specexec's worktrees beside the hand-written ones' filesystem, deleted with tmp.
        os.environ.setdefault("SPECEXEC_WORKTREE_DIR", str(tmp / "worktrees"))
        ws = Workspace(repo)
        for spec in ("hand", "fresh", "pool"):
            ws.ensure_integration_branch(spec, None)
        pool = WorktreePool(ws, 2)
        pool.open()

        def fresh(i: int) -> Phases:
            return specexec_pair(
                ws, "fresh", i,
                lambda t: ws.create_worktree("fresh", t),
                lambda wt: ws.remove_worktree(wt, delete_branch=True),
            )  # fmt: skip

        def pooled(i: int) -> Phases:
            return specexec_pair(
                ws, "pool", i,
                lambda t: pool.acquire("pool", t),
                lambda wt: pool.release(wt, delete_branch=True),
            )  # fmt: skip

        modes: dict[str, Callable[[int], Phases]] = {
            "hand-written git": lambda i: hand_pair(repo, i),
            "specexec fresh": fresh,
            "specexec pooled": pooled,
        }
        results: dict[str, list[Phases]] = {m: [] for m in modes}
        for fn in modes.values():
            fn(0)  # warm-up (creates the pool's two worktrees): not counted
        for r in range(1, rounds + 1):
            for name, fn in modes.items():
                # Untimed: the previous mode's file writes reach the disk first, so that
                # no mode pays for another's writeback (the fresh modes write 2 x files).
                os.sync()
                results[name].append(fn(r))
        pool.close()
        assert pool.stats["overflow"] == 0 and pool.stats["created"] == 2, pool.stats
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    hand = median_per_task(results["hand-written git"])
    fr = median_per_task(results["specexec fresh"])
    po = median_per_task(results["specexec pooled"])
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    lines = [
        f"## Per-task git cost ({files} files, {rounds * 2} tasks per mode, median)",
        "",
        f"`python bench/git_cost.py{' --quick' if args.quick else ''}` · "
        f"{git_version.strip()} · Python {platform.python_version()} · "
        f"{os.cpu_count()} CPUs · load {load_start:.2f} -> {os.getloadavg()[0]:.2f} · "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| lifecycle per task | median ms | vs hand-written | vs fresh |",
        "|---|---:|---:|---:|",
        f"| hand-written git sequence | {hand * 1000:.0f} | 1.00x | {hand / fr:.2f}x |",
        f"| specexec fresh worktree (`--no-pool`) | {fr * 1000:.0f} | {fr / hand:.2f}x | 1.00x |",
        f"| specexec pooled worktree (default) | {po * 1000:.0f} | {po / hand:.2f}x | "
        f"{po / fr:.3f}x |",
        "",
        "| phase, ms per task (median) | take | changed+commit | merge | give back |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("specexec fresh", "specexec pooled"):
        cells = " | ".join(
            f"{median_per_task(results[name], k) * 1000:.0f}"
            for k in ("take", "commit", "merge", "give back")
        )
        lines.append(f"| {name} | {cells} |")
    ok_pool = po <= POOL_VS_FRESH * fr
    ok_fresh = fr <= FRESH_VS_HAND * hand
    lines += [
        "",
        f"- pooled <= {POOL_VS_FRESH:g}x fresh: {'ok' if ok_pool else 'MISSED'} ({po / fr:.3f}x)",
        f"- fresh <= {FRESH_VS_HAND:g}x hand-written: {'ok' if ok_fresh else 'MISSED'} "
        f"({fr / hand:.2f}x)",
        f"- pooled vs hand-written: {po / hand:.3f}x",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(text)
    return 1 if args.check and not (ok_pool and ok_fresh) else 0


if __name__ == "__main__":
    raise SystemExit(main())
