"""tasks.json write amplification during a real run: how many times, and how many bytes,
specexec rewrites tasks.json per task transition, next to the naive one write per
transition.

Usage: python bench/write_amplification.py [--quick] [--tasks 1000] [--jobs 2] [--json FILE]

Two independent counts on the same workload (``--tasks`` tasks running ``true`` in a
DAG, ``--isolation none``, so transitions come as fast as specexec can make them):

* outside: ``python -m specexec run`` as a subprocess while a thread of this script
  polls tasks.json every millisecond; every atomic rewrite (``os.replace``) gives the
  path a new inode, so each version is seen with its time and size (two rewrites less
  than a millisecond apart would count once; coalescing keeps them 0.25 s apart);
* inside: the same run in this process (``prepare`` + ``Executor``, as ``run`` does)
  and the ``CoalescingWriter.writes`` counter of the run.

Transitions are the ``transition`` events of ``.specexec/events.jsonl``. Target: at most
one write per coalescing interval (0.25 s) during the run.

It also measures what one coalesced write costs (``TasksStore.apply`` of a batch of two
task changes) on a 1,000- and a 10,000-task tasks.json, encoding with the store's own
encoder (``jsonio.IncrementalEncoder``) and with ``json.dumps(indent=2)``: the reason
that encoder exists (the stdlib's indenting encoder is pure Python).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SPECEXEC,
    BenchTask,
    Report,
    Target,
    check,
    init_repo,
    loadavg,
    measure,
    random_dag,
    scratch,
    set_aside,
    table,
    write_spec,
)

from specexec.tasksfile.events import read_events

INTERVAL = 0.25  # CoalescingWriter's default


class FileWatcher:
    """Records every version of a file (by inode and mtime) with its mtime: the time it
    was written, not the time this thread, maybe delayed on a busy machine, saw it."""

    def __init__(self, path: Path, period: float = 0.001) -> None:
        self.path = path
        self.period = period
        self.versions: list[tuple[float, int, int]] = []  # (mtime, inode, size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino, st.st_mtime_ns) != last:
                last = (st.st_ino, st.st_mtime_ns)
                self.versions.append((st.st_mtime_ns / 1e9, st.st_ino, st.st_size))
            time.sleep(self.period)

    def __enter__(self) -> FileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def max_in_window(times: list[float], width: float) -> int:
    """The most writes that ended within any ``width`` seconds."""
    best = lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def transitions(spec: Path) -> int:
    return sum(1 for e in read_events(spec) if e.get("kind") == "transition")


def outside(spec: Path, repo: Path, tasks: list[BenchTask], jobs: int) -> dict[str, float]:
    write_spec(spec, tasks)
    set_aside(spec / ".specexec")
    argv = [*SPECEXEC, "run", str(spec.relative_to(repo)), "--isolation", "none"]
    with FileWatcher(spec / "tasks.json") as w:
        m = check(measure([*argv, "--jobs", str(jobs)], cwd=repo), "specexec run")
    writes = w.versions[1:]  # the first is the file as this script wrote it
    times = sorted(v[0] for v in writes)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "wall": m.wall,
        "writes": len(writes),
        "bytes": sum(v[2] for v in writes),
        "size": writes[-1][2] if writes else 0,
        "transitions": transitions(spec),
        "min_gap": min(gaps) if gaps else float("nan"),
        "max_per_interval": max_in_window(times, INTERVAL),
        "span": (times[-1] - times[0]) if times else 0.0,
        "load": float(m.load),
    }


def inside(spec: Path, tasks: list[BenchTask], jobs: int) -> dict[str, float]:
    from specexec.run.executor import Executor, RunOptions, new_run_id
    from specexec.run.progress import PlainReporter
    from specexec.run.session import prepare
    from specexec.tasksfile.runlock import RunLock
    from specexec.tasksfile.schema import load_spec

    write_spec(spec, tasks)
    set_aside(spec / ".specexec")
    opts = RunOptions(jobs=jobs, isolation="none")
    run_id = new_run_id()
    load = loadavg()
    t0 = time.perf_counter()
    with RunLock(spec, wait=False, run_id=run_id):
        r = prepare(load_spec(spec)[0], opts, run_id)
        ex = Executor([r], opts, PlainReporter(io.StringIO()), run_id, threading.Event())
        ex.run()
    return {
        "wall": time.perf_counter() - t0,
        "writes": r.writer.writes,
        "transitions": transitions(spec),
        "size": (spec / "tasks.json").stat().st_size,
        "load": float(load),
    }


def _stdlib_encode(doc: object) -> bytes:
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return text.encode("utf-8", "backslashreplace")


def encode_cost(n: int, writes: int) -> dict[str, float]:
    """Median ms per coalesced write of an ``n``-task file: encode and whole apply, with
    the store's encoder and with the stdlib's."""
    from specexec.tasksfile import jsonio
    from specexec.tasksfile.store import TasksStore

    doc = {
        "spec": "bench",
        "tasks": [
            {
                "id": f"t{i:05d}",
                "title": f"task {i} does one thing",
                "description": "change the module so that it does what the spec says; " * 3,
                "files": [f"src/m{i % 97}.py", f"src/p{i % 31}/x.py", "README.md"],
                "blocked_by": [f"t{j:05d}" for j in (i - 1, i - 2) if j >= 0],
                "status": "pending",
                "worker": {"preset": "shell", "command": ["true"]},
                "attempts": 0,
            }
            for i in range(n)
        ],
    }
    out: dict[str, float] = {}
    for name in ("own", "stdlib"):
        with tempfile.TemporaryDirectory() as tmp:  # each mode writes its own copy
            (Path(tmp) / "tasks.json").write_bytes(jsonio.encode(doc))
            out["size"] = (Path(tmp) / "tasks.json").stat().st_size
            store = TasksStore(tmp)
            if name == "stdlib":
                store._encoder.encode = _stdlib_encode  # type: ignore[method-assign]
            encode_ms, write_ms = _timed_writes(store, n, writes)
            out[f"{name}_encode_ms"], out[f"{name}_write_ms"] = encode_ms, write_ms
    return out


def _timed_writes(store: Any, n: int, writes: int) -> tuple[float, float]:
    encode: list[float] = []
    apply: list[float] = []
    inner = store._encode

    def timed(doc: dict[str, object], **kw: bool) -> bytes:
        t = time.perf_counter()
        try:
            return bytes(inner(doc, **kw))
        finally:
            encode.append(time.perf_counter() - t)

    store._encode = timed
    store.apply({"t00000": {"status": "in_progress"}})  # warm: parsed once
    for k in range(writes):
        a, b = f"t{k * 7 % n:05d}", f"t{(k * 7 + 1) % n:05d}"
        t = time.perf_counter()
        store.apply({a: {"status": "pass", "attempts": k}, b: {"status": "in_progress"}})
        apply.append(time.perf_counter() - t)
    return statistics.median(encode[1:]) * 1000, statistics.median(apply) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 tasks (CI)")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    n = 100 if args.quick else args.tasks
    tasks = [BenchTask(t, "true", d) for t, d in random_dag(n, random.Random(1))]
    with scratch("writes") as tmp:
        repo = init_repo(tmp / "repo")
        out = outside(repo / "specs" / "w", repo, tasks, args.jobs)
        ins = inside(repo / "specs" / "w", tasks, args.jobs)
    load = loadavg()
    costs = {size: encode_cost(size, 5 if args.quick else 30) for size in (1000, 10000)}

    rows = []
    for name, r in (("outside (inode poll)", out), ("inside (CoalescingWriter.writes)", ins)):
        tr = r["transitions"]
        bytes_ = r.get("bytes", r["writes"] * r["size"])
        rows.append(
            (
                name,
                f"{r['wall']:.1f}",
                int(tr),
                int(r["writes"]),
                f"{r['writes'] / tr:.3f}",
                f"{bytes_ / tr / 1024:.1f}",
                f"{r['wall'] / INTERVAL:.0f}",
                f"{r['load']:.2f}",
            )
        )
    naive_kib = out["size"] / 1024
    body = [
        f"{n} tasks (`true`, a DAG, --isolation none, --jobs {args.jobs}); tasks.json "
        f"grows to {out['size'] / 1024:.0f} KiB by the end of the run.",
        "",
        table(
            [
                "count",
                "run s",
                "transitions",
                "tasks.json writes",
                "writes / transition",
                "KiB written / transition",
                "intervals in the run",
                "load",
            ],
            rows,
        ),
        "",
        f"Naive baseline (one rewrite per transition): 1 write and ~{naive_kib:.0f} KiB per "
        f"transition, {out['transitions'] * naive_kib / 1024:.0f} MiB in all; specexec wrote "
        f"{out['bytes'] / 2**20:.1f} MiB "
        f"({out['transitions'] * out['size'] / max(out['bytes'], 1):.0f}x less). Smallest gap "
        f"between the ends of two writes (file mtimes): {out['min_gap'] * 1000:.0f} ms; at "
        f"most {int(out['max_per_interval'])} write(s) ended within any {INTERVAL:g} s.",
        "",
        f"One coalesced write (two tasks changed), median ms (load {load}):",
        "",
        table(
            [
                "tasks",
                "KiB",
                "encode: store's encoder",
                "encode: json.dumps(indent=2)",
                "write: store's encoder",
                "write: json.dumps(indent=2)",
                f"stdlib write / {INTERVAL:g} s",
            ],
            [
                (
                    size,
                    f"{c['size'] / 1024:.0f}",
                    f"{c['own_encode_ms']:.1f}",
                    f"{c['stdlib_encode_ms']:.1f}",
                    f"{c['own_write_ms']:.1f}",
                    f"{c['stdlib_write_ms']:.1f}",
                    f"{c['stdlib_write_ms'] / 1000 / INTERVAL:.0%}",
                )
                for size, c in costs.items()
            ],
        ),
    ]
    # One write per interval over the span of the writes, plus the write of the
    # execution strategy before the tasks start and the final flush. Writes *start* at
    # least an interval apart; one that takes long can end close to the next one, so a
    # window of one interval may see two ends, never three.
    allowed = out["span"] / INTERVAL + 2
    ok = out["writes"] <= allowed and out["max_per_interval"] <= 2
    rep = Report(
        title="tasks.json write amplification",
        body="\n".join(body),
        targets=[
            Target(
                f"tasks.json writes in a {n}-task run (outside count)",
                f"{int(out['writes'])} in {out['span']:.1f} s "
                f"({out['writes'] / out['transitions']:.3f}/transition)",
                f"<= 1 per {INTERVAL:g} s (<= {allowed:.0f}; <= 2 ends in any {INTERVAL:g} s)",
                ok,
                f"{out['load']:.2f}",
            ),
            Target(
                "tasks.json writes (inside count)",
                f"{int(ins['writes'])} in {ins['wall']:.1f} s",
                f"<= {ins['wall'] / INTERVAL + 2:.0f}",
                ins["writes"] <= ins["wall"] / INTERVAL + 2,
                f"{ins['load']:.2f}",
            ),
        ],
        commands=[f"python -m specexec run specs/w --isolation none --jobs {args.jobs}"],
        notes=[
            "The inside count excludes the write of execution_strategy that prepare() "
            "makes before the run (it goes through TasksStore, not the writer)."
        ],
    )
    rep.emit(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
