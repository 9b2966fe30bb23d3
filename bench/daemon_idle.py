"""The daemon: drop-to-first-start latency, and idle CPU and RSS while watching many
spec folders that have nothing left to do.

Usage: python bench/daemon_idle.py [--quick] [--folders 500] [--drops 20] [--idle 60]
                                   [--jobs 2] [--json FILE]

``python -m specexec watch DIR --jobs N --allow-commands`` runs as a subprocess over a
directory (inside a git repository) holding ``--folders`` spec folders whose tasks all
passed. Once the initial scan is over (the daemon's CPU use settles), its CPU time is
read over ``--idle`` seconds (the default rescan period is 30 s, so a 60 s window holds
two full rescans), and its RSS at the end (psutil; VmHWM is the peak since it started).

Then ``--drops`` times: a new spec folder with one task is built next to DIR and moved
into it with one rename (as a tool or an editor would drop it); the task's command
writes ``date +%s%N`` to a file, so latency = that time - the time of the rename.
Measured with the default isolation (a worktree per task) and with ``isolation: none``.
Targets: median latency < 1 s; idle CPU < 1%; idle RSS < 80 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    SPECEXEC,
    BenchTask,
    Report,
    Target,
    bench_env,
    init_repo,
    loadavg,
    median,
    quantile,
    scratch,
    table,
    write_spec,
)

MAX_LATENCY_S = 1.0
MAX_IDLE_CPU_PCT = 1.0
MAX_IDLE_RSS_MB = 80.0


def daemon_available() -> bool:
    return (ROOT / "specexec" / "daemon.py").exists()


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def wait_quiet(
    p: psutil.Process, *, window: float = 2.0, pct: float = 5.0, limit: float = 180
) -> float:
    """Seconds until the process uses less than ``pct``% CPU over ``window`` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = cpu_seconds(p)
        time.sleep(window)
        if (cpu_seconds(p) - c0) / window * 100 < pct:
            return time.monotonic() - t0 - window
    raise SystemExit(f"the daemon did not settle within {limit:g} s")


def wait_for(cond: Callable[[], bool], timeout: float, what: str, period: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(period)


def task_status(spec: Path) -> str | None:
    try:
        doc = json.loads((spec / "tasks.json").read_text())
    except (OSError, ValueError):
        return None
    return str(doc["tasks"][0].get("status"))


def drop(watch: Path, staging: Path, name: str, isolation: str | None, log: Path) -> float:
    """Move a one-task spec folder into ``watch``; seconds until its worker started."""
    marker = staging / f"{name}.started"
    src = write_spec(
        staging / name,
        [BenchTask("T0", f"date +%s%N > {marker}")],
        isolation=isolation,
    )
    dest = watch / name
    t0 = time.time_ns()
    os.rename(src, dest)
    wait_for(lambda: marker.exists() and marker.read_text().strip() != "", 60, f"{name} to start")
    started = int(marker.read_text().strip())
    # One drop at a time: the next one is timed once this run is over.
    try:
        wait_for(lambda: task_status(dest) == "pass", 60, f"{name} to pass", 0.01)
    except SystemExit:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    return (started - t0) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 folders, 3 drops, 5 s idle (CI)")
    ap.add_argument("--folders", type=int, default=500)
    ap.add_argument("--drops", type=int, default=20)
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    folders, drops, idle = (50, 3, 5.0) if args.quick else (args.folders, args.drops, args.idle)
    title = "The daemon (specexec watch): drop-to-start latency, idle CPU and RSS"
    if not daemon_available():
        Report(title, "specexec/daemon.py does not exist yet: not measured.").emit(args.json)
        return 0

    with scratch("daemon") as tmp:
        repo = init_repo(tmp / "repo")
        watch = repo / "watched"
        staging = repo / "staging"
        staging.mkdir()
        for i in range(folders):
            write_spec(watch / f"spec{i:04d}", [BenchTask("T0", "true")], extra={"status": "pass"})
        log = tmp / "daemon.log"
        cmd = [*SPECEXEC, "watch", str(watch), "--jobs", str(args.jobs), "--allow-commands"]
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=repo, env=bench_env(), stdout=err, stderr=err)
        try:
            p = psutil.Process(proc.pid)
            settle = wait_quiet(p)
            load_idle = loadavg()
            c0, w0 = cpu_seconds(p), time.monotonic()
            time.sleep(idle)
            cpu_pct = (cpu_seconds(p) - c0) / (time.monotonic() - w0) * 100
            rss = p.memory_info().rss / 1e6
            uss = p.memory_full_info().uss / 1e6
            lat: dict[str, list[float]] = {}
            loads: dict[str, str] = {}
            for isolation in ("worktree", "none"):
                loads[isolation] = loadavg()
                lat[isolation] = [
                    drop(
                        watch,
                        staging,
                        f"drop-{isolation}-{k}",
                        isolation if isolation == "none" else None,
                        log,
                    )
                    for k in range(drops)
                ]
            rss_after = p.memory_info().rss / 1e6
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, -signal.SIGTERM):
            print(log.read_text()[-3000:], file=sys.stderr)

    rows = [
        (
            iso,
            len(xs),
            f"{median(xs) * 1000:.0f}",
            f"{quantile(xs, 0.9) * 1000:.0f}",
            f"{min(xs) * 1000:.0f}",
            f"{max(xs) * 1000:.0f}",
            loads[iso],
        )
        for iso, xs in lat.items()
    ]
    body = [
        f"`specexec watch` over {folders} spec folders (all passed), --jobs {args.jobs}. "
        f"Initial scan settled after {settle:.1f} s.",
        "",
        table(
            ["idle window s", "CPU %", "RSS MB", "USS MB", "RSS MB after the drops", "load"],
            [
                (
                    f"{idle:g}",
                    f"{cpu_pct:.2f}",
                    f"{rss:.0f}",
                    f"{uss:.0f}",
                    f"{rss_after:.0f}",
                    load_idle,
                )
            ],
        ),
        "",
        table(
            [
                "drop latency (isolation)",
                "drops",
                "median ms",
                "p90 ms",
                "min ms",
                "max ms",
                "load",
            ],
            rows,
        ),
    ]
    med = median(lat["worktree"])
    rep = Report(
        title=title,
        body="\n".join(body),
        targets=[
            Target(
                "drop-to-first-start latency, median (worktree)",
                f"{med * 1000:.0f} ms",
                f"< {MAX_LATENCY_S * 1000:.0f} ms",
                med < MAX_LATENCY_S,
                loads["worktree"],
            ),
            Target(
                "drop-to-first-start latency, median (isolation none)",
                f"{median(lat['none']) * 1000:.0f} ms",
                f"< {MAX_LATENCY_S * 1000:.0f} ms",
                median(lat["none"]) < MAX_LATENCY_S,
                loads["none"],
            ),
            Target(
                f"idle CPU watching {folders} folders",
                f"{cpu_pct:.2f}%",
                f"< {MAX_IDLE_CPU_PCT:g}%",
                cpu_pct < MAX_IDLE_CPU_PCT,
                load_idle,
            ),
            Target(
                f"idle RSS watching {folders} folders",
                f"{rss:.0f} MB",
                f"< {MAX_IDLE_RSS_MB:g} MB",
                rss < MAX_IDLE_RSS_MB,
                load_idle,
            ),
        ],
        commands=[f"python -m specexec watch watched --jobs {args.jobs} --allow-commands"],
        notes=[
            "No baseline: none of watchexec, entr or inotifywait is installed here; "
            "the figures stand against the targets only."
        ],
    )
    rep.emit(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
