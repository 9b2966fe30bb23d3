"""Shared helpers of the benchmark scripts: scratch git repositories, spec generation,
wall-clock and peak-RSS measurement of subprocesses, machine description, tables.

Every script in bench/ runs standalone (``python bench/<name>.py [--quick]``) and prints
a markdown table; ``--json FILE`` also writes its figures for ``bench/run_all.py``.
specexec always runs as ``sys.executable -m specexec`` (a real subprocess), except where a
script says it runs in-process to read a counter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPECEXEC = [sys.executable, "-m", "specexec"]
# specexec runs as pip installs it: from compiled bytecode. A machine that sets
# PYTHONDONTWRITEBYTECODE (this one does) would otherwise compile specexec's sources
# again in every run, ~0.2 s that no installed copy pays; the cache goes to bench/out.
PYCACHE = ROOT / "bench" / "out" / "pycache"


@functools.cache
def bench_env() -> dict[str, str]:
    """The environment of every measured command, with specexec's bytecode compiled."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "specexec")],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return env


# --- the machine -----------------------------------------------------------------------


def loadavg() -> str:
    """The 1-minute load average (the machine is shared: every figure carries it)."""
    return f"{os.getloadavg()[0]:.2f}"


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "not installed"
    return out.splitlines()[0].strip() if out.strip() else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if m:
            mem = f"{int(m.group(1)) / 2**20:.1f} GiB"
    la = os.getloadavg()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "git": _first_line(["git", "--version"]),
        "make": _first_line(["make", "--version"]),
        "parallel": _first_line(["parallel", "--version"]) if shutil.which("parallel") else "-",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load average": f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}",
    }


# --- scratch repositories and spec folders ---------------------------------------------


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def init_repo(path: Path) -> Path:
    """A real git repository with one commit on ``main``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for k, v in (
        ("user.email", "bench@example.com"),
        ("user.name", "bench"),
        ("commit.gpgsign", "false"),
    ):
        git(path, "config", k, v)
    (path / "README.md").write_text("bench\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def set_aside(folder: Path) -> None:
    """Move ``folder`` (an earlier run's ``.specexec``) out of the way without deleting it.

    Deleting thousands of files just before a measured run makes every file the run
    creates dearer: ext4 without a journal (this machine's root file system) skips inodes
    freed in the last 60-360 s when it allocates one (``recently_deleted``), and each skip
    looks the inode table block up. A run folder of 1,000 tasks removed right before the
    next run tripled the cost of its ~3,000 file creations; make creates none. The
    folder goes into the scratch directory's ``trash``, removed with it after the bench."""
    if not folder.exists():
        return
    root = next((p for p in folder.parents if p.name.startswith("specexec-bench-")), None)
    trash = (root or folder.parent) / "trash"
    trash.mkdir(exist_ok=True)
    folder.rename(trash / f"{len(list(trash.iterdir()))}-{folder.parent.name}")


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards (worktrees included)."""
    d = Path(tempfile.mkdtemp(prefix=f"specexec-bench-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class BenchTask:
    """One task of a generated workload: the same command for every scheduler."""

    id: str
    command: str
    deps: tuple[str, ...] = ()
    seconds: float = 0.0  # nominal duration (for lower bounds and estimates)


def random_dag(
    n: int, rnd: random.Random, *, max_deps: int = 2, window: int = 30
) -> list[tuple[str, tuple[str, ...]]]:
    """``n`` task ids with blockers among earlier tasks (a DAG in file order): up to
    ``max_deps`` blockers, one near by (locality, as in a real spec) and one anywhere."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for i in range(n):
        deps: set[int] = set()
        if i:
            k = rnd.randint(0, max_deps)
            if k >= 1:
                deps.add(rnd.randrange(max(0, i - window), i))
            if k >= 2:
                deps.add(rnd.randrange(i))
        out.append((f"T{i}", tuple(f"T{d}" for d in sorted(deps))))
    return out


def write_spec(
    spec_dir: Path,
    tasks: Sequence[BenchTask],
    *,
    isolation: str | None = None,
    estimates: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A tasks.json for the ``shell`` worker; each task owns one file (no conflicts, and
    ``validate`` does not warn about tasks without relevant_files)."""
    spec_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for t in tasks:
        item: dict[str, Any] = {
            "id": t.id,
            "summary": f"bench task {t.id}",
            "status": "pending",
            "relevant_files": [f"out/{t.id}.txt"],
            "parallelization": {"blocked_by": list(t.deps)},
            "command": t.command,
        }
        if estimates:
            item["estimated_minutes"] = round(t.seconds / 60, 6)
        if isolation is not None:
            item["isolation"] = isolation
        item.update(extra or {})
        items.append(item)
    doc = {
        "version": 1,
        "spec": spec_dir.name,
        "worker": "shell",
        "defaults": {"timeout_minutes": 10, "max_retries": 0},
        "tasks": items,
    }
    (spec_dir / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")
    return spec_dir


def makefile(tasks: Sequence[BenchTask]) -> str:
    """The same DAG as a Makefile: one phony target per task, its blockers as
    prerequisites, its command as the recipe (make -jN is what users would pick)."""
    lines = [
        ".PHONY: all " + " ".join(t.id for t in tasks),
        "all: " + " ".join(t.id for t in tasks),
    ]
    for t in tasks:
        lines.append(f"{t.id}: {' '.join(t.deps)}".rstrip())
        lines.append("\t@" + t.command.replace("$", "$$"))
    return "\n".join(lines) + "\n"


def critical_path(tasks: Sequence[BenchTask], dur: Mapping[str, float]) -> float:
    """The longest chain of durations (tasks are in a topological order)."""
    finish: dict[str, float] = {}
    for t in tasks:
        finish[t.id] = max((finish[d] for d in t.deps), default=0.0) + dur[t.id]
    return max(finish.values(), default=0.0)


def lower_bound(tasks: Sequence[BenchTask], dur: Mapping[str, float], jobs: int) -> float:
    """No schedule on ``jobs`` slots can beat max(critical path, total work / jobs)."""
    return max(critical_path(tasks, dur), sum(dur.values()) / jobs)


# --- measuring subprocesses --------------------------------------------------------------


@dataclass
class Measured:
    wall: float  # seconds from start to exit
    returncode: int
    peak_rss_mib: float  # VmHWM of the process itself (sampled; threads included)
    tree_rss_mib: float  # ru_maxrss from wait4: the process or its largest descendant
    cpu_s: float  # user+sys of the process and its descendants
    stdout: str = ""
    stderr: str = ""
    load: str = field(default_factory=loadavg)
    stopped: bool = False  # the timeout fired and stop_signal was sent


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) if m else None


def measure(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800,
    sample_s: float = 0.02,
    stop_signal: int = signal.SIGKILL,
) -> Measured:
    """Run ``argv`` and measure its wall time, its own peak RSS (the kernel's high-water
    mark VmHWM, read until it exits: exact up to the last sample) and, from wait4, the
    peak RSS of the whole tree and its CPU time. After ``timeout`` seconds it is sent
    ``stop_signal`` (SIGINT lets specexec stop its tasks and exit); ``stopped`` says so.

    The wall time ends when a blocking wait4 returns: a polling loop would round every
    figure up to its period (20 ms is a tenth of a start-up). A thread samples VmHWM.
    """
    full_env = dict(bench_env())
    if env:
        full_env.update(env)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=full_env, stdout=out, stderr=err)
        hwm = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(sample_s):
                if (k := _vm_hwm_kib(proc.pid)) is not None:
                    hwm[0] = max(hwm[0], k)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        fired = threading.Event()

        def stop() -> None:
            fired.set()
            proc.send_signal(stop_signal)

        killer = threading.Timer(timeout, stop)
        killer.start()
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        finally:
            wall = time.perf_counter() - t0
            killer.cancel()
            done.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            wall=wall,
            returncode=proc.returncode,
            peak_rss_mib=hwm[0] / 1024,
            tree_rss_mib=rusage.ru_maxrss / 1024,
            cpu_s=rusage.ru_utime + rusage.ru_stime,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            stopped=fired.is_set(),
        )


def specexec(*args: str, cwd: Path | None = None, timeout: float = 1800) -> Measured:
    return measure([*SPECEXEC, *args], cwd=cwd, timeout=timeout)


def check(m: Measured, what: str) -> Measured:
    if m.returncode != 0:
        tail = (m.stderr or m.stdout)[-2000:]
        raise SystemExit(f"{what} failed (exit {m.returncode}):\n{tail}")
    return m


def best(runs: Sequence[Measured]) -> Measured:
    """The fastest of repeated runs: on a shared machine the minimum is the figure least
    disturbed by other load."""
    return min(runs, key=lambda m: m.wall)


# --- figures and tables ------------------------------------------------------------------


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1])."""
    s = sorted(xs)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""

    def cell(x: object) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Target:
    """One line of the summary table in RESULTS.md."""

    metric: str
    value: str
    target: str
    met: bool | None  # None: not measured / no target
    load: str = ""


@dataclass
class Report:
    """What a script prints and hands to run_all: its title, markdown body, targets and
    the exact commands it ran."""

    title: str
    body: str = ""
    targets: list[Target] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", self.body.strip(), ""]
        if self.targets:
            parts += [
                table(
                    ["metric", "value", "target", "met", "load"],
                    [(t.metric, t.value, t.target, verdict(t.met), t.load) for t in self.targets],
                ),
                "",
            ]
        if self.commands:
            parts += ["Commands:", "", *(f"    {c}" for c in self.commands), ""]
        parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts).rstrip() + "\n"

    def emit(self, json_path: str | None) -> None:
        print(self.markdown(), flush=True)
        if json_path:
            Path(json_path).write_text(json.dumps(asdict(self), indent=2) + "\n")


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def elapsed_since(t0: float) -> str:
    return f"{time.perf_counter() - t0:.0f}s"


class Poller:
    """Calls ``fn`` every ``period`` seconds in a background thread until stopped."""

    def __init__(self, fn: Any, period: float) -> None:
        self._fn = fn
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._fn()
            self._stop.wait(self._period)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._fn()
