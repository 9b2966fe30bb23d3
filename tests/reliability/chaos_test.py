"""Chaos: ``specexec run`` (with worktrees, and with ``--isolation none``, where the
run's loop waits on the workers itself) and ``specexec watch`` SIGKILLed at random moments.

Each trial builds a fresh repository with a multi-wave spec (5 tasks, 3 waves, --jobs 2).
Every task's worker leaves a background child (``sleep 60 &``) in its process group, the
way an agent leaves a dev server, so a killed runner really does leave orphans behind.
The runner is SIGKILLed once or twice at a random moment (a random time after start, just
after a random task event, or just after a worker started), then restarted once; the
restart must finish the work. Then:

- every task is ``pass``; each task's change is on the integration branch exactly once
  (one commit per task, the file holds one line); without worktrees, each task's file in
  the checkout holds only its change (once per attempt that got that far);
- tasks.json parsed at every moment of the trial (a reader thread re-reads it in a loop),
  and every line of events.jsonl parses;
- no worktree, branch, ref or stash entry is left, beyond at most --jobs pooled worktrees;
- no process that worked for the spec folder is alive (found by its environment, which
  every worker and its children inherit, or by its working directory in the repository),
  and every worker group recorded in ``.specexec/workers/`` by the killed runner is dead;
  the registry is empty;
- the run lock is free.

Across the trials of a mode, the kills must really have hit the run: most with tasks left
to run, some while a task held a pool slot (its owner marker left behind), some with
orphaned worker groups recorded, and at each of the three kinds of moment. These trials
replace the SIGKILL loops that tests/run/recovery_test.py and tests/git/pool_test.py had.

SPECEXEC_CHAOS_TRIALS (default 8: the property above holds with margin at this size,
in about a minute; 50 or more for a soak) trials per mode, SPECEXEC_CHAOS_PARALLEL
(default 3) at a time, seeds from SPECEXEC_CHAOS_SEED (default 1234).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import PY, env_int, git, init_repo, read_tasks, task, wait_until, write_spec

from reliability.support import group_alive, kill_tree, leftovers, spec_processes
from specexec.git.owners import drop_hold
from specexec.git.workspace import Workspace
from specexec.tasksfile.runlock import RunLock
from specexec.tasksfile.store import TasksStore

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TRIALS = env_int("SPECEXEC_CHAOS_TRIALS", 8)
PARALLEL = env_int("SPECEXEC_CHAOS_PARALLEL", 3)
SEED = env_int("SPECEXEC_CHAOS_SEED", 1234)
JOBS = 2
SHAPE = {"a": [], "b": [], "c": [], "d": ["a", "b"], "e": ["c", "d"]}
SPEC = "k"


def beacons(spec: Path) -> Path:
    """Where workers announce that they run (outside the repository)."""
    return spec.parent.parent.parent / f"{spec.parent.parent.name}-beacons"


def chaos_spec(repo: Path, rng: random.Random) -> Path:
    spec = repo / "specs" / SPEC
    beacons(spec).mkdir(exist_ok=True)

    def cmd(t: str) -> str:
        pause = rng.choice(["0.05", "0.2", "0.5"])
        return (
            f"sleep 60 & touch {beacons(spec)}/{t}.$$; mkdir -p out && sleep {pause} && "
            f'echo "change of {t}" >> out/{t}.txt'
        )

    return write_spec(
        repo / "specs" / SPEC,
        [
            task(t, blocked_by=deps, files=[f"out/{t}.txt"], command=cmd(t), max_retries=0)
            for t, deps in SHAPE.items()
        ],
    )


class Parser(threading.Thread):
    """Re-reads tasks.json in a loop for the whole trial: it must always parse."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.reads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                json.loads(self.path.read_bytes())
                self.reads += 1
            except (ValueError, OSError) as e:
                self.errors.append(repr(e))
            time.sleep(0.01)


@dataclass
class Trial:
    n: int
    kills: int = 0
    kill_moments: list[str] = field(default_factory=list)
    restarts: int = 0
    recorded_groups: set[int] = field(default_factory=set)
    reads: int = 0
    seconds: float = 0.0
    check_seconds: float = 0.0
    mid_run_kills: int = 0
    # Kills while a task held a pool slot: its owner marker is left for the restart.
    slot_kills: int = 0
    # Kills that left worktrees, branches or refs behind for the restart to clean up.
    leftover_kills: int = 0
    kinds: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- runners


def _reader(proc: subprocess.Popen[str], lines: list[str], seen: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        seen.set()


def kill_at_random(
    proc: subprocess.Popen[str],
    rng: random.Random,
    is_event: Callable[[str], bool],
    trial: Trial,
    horizon: float,
    spec: Path,
) -> bool:
    """SIGKILL ``proc`` at a random moment; False if it ended first.

    A third of the kills come at a random time after the start (startup, recovery,
    planning, anything), a third just after a random task event (worktree creation,
    merges, the writes of tasks.json), and a third while a worker runs (so that orphans
    are left to sweep)."""
    lines: list[str] = []
    seen = threading.Event()
    reader = threading.Thread(target=_reader, args=(proc, lines, seen), daemon=True)
    reader.start()
    # The kinds of moment take turns, so that every few trials cover all three.
    how = ("time", "event", "worker")[(trial.n + trial.kills) % 3]
    # A daemon never ends by itself: when no event comes (nothing left to run), kill anyway.
    deadline = time.monotonic() + 2 * horizon
    if how == "time":
        delay = rng.uniform(0.0, horizon)
        moment = f"{delay:.2f}s after start"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)
    elif how == "event":
        nth = rng.randint(1, 2 * len(SHAPE))
        extra = rng.uniform(0.0, 0.5)
        moment = f"{extra:.2f}s after task event #{nth}"
        while proc.poll() is None and time.monotonic() < deadline:
            if sum(map(is_event, list(lines))) >= nth:
                time.sleep(extra)
                break
            seen.wait(0.05)
            seen.clear()
    else:
        known = set(os.listdir(beacons(spec)))
        extra = rng.uniform(0.0, 0.1)
        moment = f"{extra:.2f}s after a worker started"
        while proc.poll() is None and time.monotonic() < deadline:
            if set(os.listdir(beacons(spec))) - known:
                time.sleep(extra)
                break
            time.sleep(0.01)
    if proc.poll() is not None:
        reader.join(timeout=10)
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    trial.kills += 1
    trial.kill_moments.append(moment)
    trial.kinds.add(how)
    return True


def record_workers(spec: Path, trial: Trial) -> None:
    """The worker groups the killed runner had recorded (to check they die later), and
    what it left: work (tasks.json not yet all ``pass``), held pool slots, git state."""
    try:
        statuses = [t.get("status") for t in read_tasks(spec).values()]
    except (OSError, ValueError):
        statuses = []
    trial.mid_run_kills += any(s != "pass" for s in statuses)
    repo = spec.parent.parent
    trial.slot_kills += any(Workspace(repo).pool_dir.glob("*.owner"))
    trial.leftover_kills += bool(leftovers(repo, [SPEC], JOBS))
    for rec in (spec / ".specexec" / "workers").glob("*.json"):
        try:
            trial.recorded_groups.add(int(json.loads(rec.read_text())["pgid"]))
        except (OSError, ValueError, KeyError):
            continue


def kills_in_a_row(rng: random.Random) -> int:
    """Usually one kill before the restart; sometimes the restart is killed too, and
    sometimes its restart as well."""
    r = rng.random()
    return 1 + (r < 0.25) + (r < 0.08)


def run_task_event(line: str) -> bool:
    return '"task_started"' in line or '"task_finished"' in line


def chaos_run(repo: Path, spec: Path, rng: random.Random, trial: Trial, *extra: str) -> None:
    argv = [PY, "-m", "specexec", "run", str(spec), "--jobs", str(JOBS), "--json", *extra]
    for _ in range(kills_in_a_row(rng)):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            if kill_at_random(proc, rng, run_task_event, trial, horizon=2.0, spec=spec):
                record_workers(spec, trial)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
    # One restart must finish the work: exit 0, every task passed.
    trial.restarts += 1
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"restart: exit {done.returncode}\n{done.stdout}\n{done.stderr}"


WATCH_ARGV = [PY, "-m", "specexec", "watch"]


def watch_task_event(line: str) -> bool:
    return f"[{SPEC}] start  " in line or f"[{SPEC}] pass   " in line


def chaos_watch(repo: Path, spec: Path, rng: random.Random, trial: Trial) -> None:
    argv = [*WATCH_ARGV, str(spec.parent), "--jobs", str(JOBS), "--allow-commands", "--grace", "5"]
    _watch_once(argv, {**os.environ, "SPECEXEC_WATCH_RESCAN": "1"}, spec, rng, trial)


def _watch_once(
    argv: list[str], env: dict[str, str], spec: Path, rng: random.Random, trial: Trial
) -> None:
    for _ in range(kills_in_a_row(rng)):
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            if kill_at_random(proc, rng, watch_task_event, trial, horizon=3.5, spec=spec):
                record_workers(spec, trial)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
    # The restart: serve until every task is done, then stop it as a service manager would.
    trial.restarts += 1
    serve_until_settled(argv, env, spec)


def serve_until_settled(argv: list[str], env: dict[str, str], spec: Path) -> None:
    """Start the daemon, wait until every task is done and its runs ended, SIGTERM it."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    log: list[str] = []
    reader = threading.Thread(target=_reader, args=(proc, log, threading.Event()), daemon=True)
    reader.start()
    try:

        def all_done() -> bool:
            try:
                statuses = [t.get("status") for t in read_tasks(spec).values()]
            except ValueError:
                return False
            return all(s in ("pass", "fail", "blocked") for s in statuses)

        def settled() -> bool:
            # Every task done, every run the daemon started has ended (its end, branch
            # deletion and final flush, follow the last write of tasks.json), and what
            # the killed daemon left is cleaned up: the restarted one has looked at it.
            started = sum(f"[{SPEC}] run: " in line for line in log)
            return (
                all_done()
                and started == sum(" finished: " in line for line in log)
                and not leftovers(spec.parent.parent, [SPEC], JOBS)
            )

        # The daemon must be up (its signal handlers set) before it is stopped.
        up = wait_until(lambda: any("specexec watch: --jobs" in x for x in log), timeout=60)
        finished = up and wait_until(settled, timeout=120, interval=0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        reader.join(timeout=10)
        assert finished, "".join(log[-40:])
        assert code == 0, "".join(log[-40:])
        # No run was left unfinished by the stop (none started after the work was done).
        started = sum(f"[{SPEC}] run: " in line for line in log)
        assert started == sum(" finished: " in line for line in log), "".join(log[-40:])
        assert not [x for x in log if "Traceback" in x or "internal error" in x], "".join(log)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    tasks = read_tasks(spec)
    assert all(t["status"] == "pass" for t in tasks.values()), (
        {k: (t["status"], t.get("blocker")) for k, t in tasks.items()},
        "".join(log[-40:]),
    )


# --------------------------------------------------------------------------- checks


def check_trial(repo: Path, spec: Path, trial: Trial, parser: Parser, mode: str) -> None:
    tasks = read_tasks(spec)
    assert all(t["status"] == "pass" for t in tasks.values()), {
        k: (t["status"], t.get("blocker")) for k, t in tasks.items()
    }
    if mode == "run-none":
        # No worktree, no merge: each worker wrote into the checkout, once per attempt
        # that got that far (an interrupted one starts again from pending).
        for t in SHAPE:
            lines = (repo / "out" / f"{t}.txt").read_text().splitlines()
            assert lines and set(lines) == {f"change of {t}"}, (t, lines)
    else:
        check_merged_once(repo)
    check_nothing_left(repo, spec, trial, parser)


def check_merged_once(repo: Path) -> None:
    subjects = git(repo, "log", "--no-merges", "--format=%s", f"specexec/{SPEC}").splitlines()
    for t in SHAPE:
        assert sum(s.startswith(f"{t}:") for s in subjects) == 1, (t, subjects)
        assert git(repo, "show", f"specexec/{SPEC}:out/{t}.txt") == f"change of {t}"
        touching = git(repo, "log", "--format=%H", "--no-merges", f"specexec/{SPEC}", "--",
                       f"out/{t}.txt")  # fmt: skip
        assert len(touching.splitlines()) == 1, (t, touching)  # merged exactly once


def check_nothing_left(repo: Path, spec: Path, trial: Trial, parser: Parser) -> None:
    assert git(repo, "stash", "list") == ""
    assert not parser.errors, parser.errors[:3]
    events = (spec / ".specexec" / "events.jsonl").read_text().splitlines()
    for line in events:
        if line.strip():
            json.loads(line)
    assert leftovers(repo, [SPEC], JOBS) == []
    survivors = [g for g in trial.recorded_groups if group_alive(g)]
    assert not survivors, f"worker groups recorded by the killed runner survived: {survivors}"
    gone = wait_until(lambda: not spec_processes(spec) and not repo_processes(repo), timeout=2)
    assert gone, (
        [(p.pid, os.getpgid(p.pid), p.cmdline()) for p in spec_processes(spec)],
        repo_processes(repo),
    )
    assert list((spec / ".specexec" / "workers").glob("*.json")) == []
    assert RunLock.holder(spec) is None


def repo_processes(repo: Path) -> list[str]:
    """Processes working inside the repository (a git or worker left running)."""
    top = str(repo.resolve())
    found = []
    for p in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd = p.info.get("cwd") or ""
        if cwd == top or cwd.startswith(top + "/"):
            found.append(f"{p.info['pid']} {p.info.get('cmdline')}")
    return found


def one_trial(base: Path, n: int, mode: str) -> Trial:
    rng = random.Random(SEED * 1000 + n)
    trial = Trial(n)
    began = time.monotonic()
    repo = init_repo(base / f"{mode}{n}")
    spec = chaos_spec(repo, rng)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "spec")
    parser = Parser(spec / "tasks.json")
    parser.start()
    try:
        if mode == "watch":
            chaos_watch(repo, spec, rng, trial)
        else:
            chaos_run(repo, spec, rng, trial, *(["--isolation", "none"] * (mode == "run-none")))
    finally:
        parser.stop.set()
        parser.join()
    trial.reads = parser.reads
    checked = time.monotonic()
    check_trial(repo, spec, trial, parser, mode)
    trial.check_seconds = time.monotonic() - checked
    trial.seconds = time.monotonic() - began
    return trial


def run_trials(tmp_path: Path, mode: str) -> list[Trial]:
    failures: list[str] = []
    trials: list[Trial] = []

    def go(n: int) -> None:
        try:
            trials.append(one_trial(tmp_path, n, mode))
        except BaseException:
            failures.append(f"trial {n} (seed {SEED * 1000 + n}):\n{traceback.format_exc()}")

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(go, range(TRIALS)))
    assert not failures, f"{len(failures)} of {TRIALS} trials failed:\n" + "\n".join(failures[:3])
    return trials


def summary(mode: str, trials: list[Trial]) -> str:
    killed = sum(t.kills for t in trials)
    groups = sum(len(t.recorded_groups) for t in trials)
    secs = sorted(t.seconds for t in trials)
    return (
        f"{mode}: {len(trials)} trials, {killed} SIGKILLs ({sum(t.mid_run_kills for t in trials)} "
        f"with tasks left to run; {sum(t.kills > 1 for t in trials)} trials killed twice), "
        f"{groups} orphaned worker groups recorded and found dead, "
        f"{sum(t.reads for t in trials)} reads of tasks.json all parsed; "
        f"{sum(t.slot_kills for t in trials)} kills with a pool slot held, "
        f"{sum(t.leftover_kills for t in trials)} that left git state to clean; trial median "
        f"{secs[len(secs) // 2]:.1f}s (checks {sum(t.check_seconds for t in trials) / len(trials):.1f}s)"
    )


# The suite's default per-test timeout (300 s) is for one scenario; these run TRIALS of them.
CHAOS_TIMEOUT = pytest.mark.timeout(120 + 20 * TRIALS)


def check_the_kills_hit(trials: list[Trial], worktrees: bool = True) -> None:
    """The trials proved something: the kills came mid-run, at every kind of moment,
    while tasks held worker groups, and (with worktrees) pool slots, leaving git state to
    clean up."""
    # Kills at a random time may come after the last task ended (a fast machine, an idle
    # one): at least a third must land while tasks were left to run.
    assert sum(t.mid_run_kills > 0 for t in trials) >= len(trials) / 3
    assert set().union(*(t.kinds for t in trials)) == {"time", "event", "worker"}
    assert sum(len(t.recorded_groups) for t in trials) > 0
    if worktrees:
        assert sum(t.slot_kills for t in trials) > 0
        assert sum(t.leftover_kills for t in trials) > 0


@CHAOS_TIMEOUT
def test_sigkill_run_at_random_moments_then_restart(tmp_path: Path) -> None:
    trials = run_trials(tmp_path, "run")
    print(summary("run", trials))
    check_the_kills_hit(trials)


@CHAOS_TIMEOUT
def test_sigkill_run_without_worktrees_at_random_moments_then_restart(tmp_path: Path) -> None:
    """The same with --isolation none: the run's loop waits on the workers itself."""
    trials = run_trials(tmp_path, "run-none")
    print(summary("run-none", trials))
    check_the_kills_hit(trials, worktrees=False)


@CHAOS_TIMEOUT
def test_sigkill_watch_at_random_moments_then_restart(tmp_path: Path) -> None:
    trials = run_trials(tmp_path, "watch")
    print(summary("watch", trials))
    check_the_kills_hit(trials)


def test_a_restart_removes_merged_branches_left_after_the_final_write(tmp_path: Path) -> None:
    """The window the chaos trials hit: killed after tasks.json says every task passed but
    before the merged task branches were deleted. The restart must clean them up."""
    repo, _, argv = _passed_with_a_merged_branch_left(tmp_path)
    assert subprocess.run(argv, capture_output=True, timeout=180, check=False).returncode == 0
    assert leftovers(repo, [SPEC], JOBS) == []


def _passed_with_a_merged_branch_left(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A spec run to the end, then task e's merged branch (and base ref) put back, as a
    runner killed after its final write of tasks.json leaves them; and the run's argv."""
    repo = init_repo(tmp_path / "r")
    spec = chaos_spec(repo, random.Random(0))
    argv = [PY, "-m", "specexec", "run", str(spec), "--jobs", str(JOBS)]
    assert subprocess.run(argv, capture_output=True, timeout=180, check=False).returncode == 0
    tip = git(repo, "log", "--format=%H", "--grep=^e:", f"specexec/{SPEC}")
    git(repo, "branch", f"specexec/{SPEC}@e", tip)
    git(repo, "update-ref", f"refs/specexec/bases/{SPEC}/e", git(repo, "rev-parse", f"{tip}^1"))
    return repo, spec, argv


def test_a_restarted_daemon_removes_merged_branches_left_after_the_final_write(
    tmp_path: Path,
) -> None:
    """The same window for `watch` (seen once in 50 chaos trials): the daemon was killed after
    the last task's pass was on disk; the restarted daemon finds nothing pending."""
    repo, spec, _ = _passed_with_a_merged_branch_left(tmp_path)
    watch = [*WATCH_ARGV, str(spec.parent), "--jobs", str(JOBS), "--allow-commands"]
    proc = subprocess.Popen(watch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # It has looked at the folder once its first rescan (every second) has run.
        cleaned = wait_until(lambda: not leftovers(repo, [SPEC], JOBS), timeout=15, interval=0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert cleaned, leftovers(repo, [SPEC], JOBS)


def test_an_unrecorded_orphan_worker_is_stopped_by_the_next_run(tmp_path: Path) -> None:
    """What the chaos trials sometimes leave: a worker group of a dead run (it carries the
    spec's SPECEXEC_* variables) that is not in the registry. The next run must stop it."""
    repo = init_repo(tmp_path / "r")
    spec = chaos_spec(repo, random.Random(0))
    orphan = subprocess.Popen(
        ["sleep", "60"],
        cwd=repo,
        start_new_session=True,
        env={
            **os.environ,
            "SPECEXEC_SPEC_DIR": str(spec),
            "SPECEXEC_TASK_ID": "a",
            "SPECEXEC_RUN_ID": "20000101T000000Z-dead",
        },
    )
    try:
        argv = [PY, "-m", "specexec", "run", str(spec), "--jobs", str(JOBS)]
        assert subprocess.run(argv, capture_output=True, timeout=180, check=False).returncode == 0
        assert wait_until(lambda: orphan.poll() is not None, timeout=5), "the orphan survived"
    finally:
        orphan.kill()
        orphan.wait()


def test_a_dead_runs_fresh_worktree_does_not_fail_the_task_on_restart(tmp_path: Path) -> None:
    """What a chaos trial hit: a run killed while a task ran in a fresh worktree (the pool
    was full) leaves it, with the task's branch checked out; the restart must not fail."""
    repo = init_repo(tmp_path / "r")
    spec = chaos_spec(repo, random.Random(0))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "spec")
    ws = Workspace(repo)
    ws.ensure_integration_branch(SPEC)
    wt = ws.create_worktree(SPEC, "a")
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = {"pid": dead.pid, "start_time": 1.0, "host": socket.gethostname()}
    wt.path.with_name(wt.path.name + ".owner").write_text(json.dumps(owner))
    drop_hold(ws.hold_file(wt.path))  # its hold died with the run
    TasksStore(spec).update(tasks={"a": {"status": "in_progress", "attempts": 1}})
    argv = [PY, "-m", "specexec", "run", str(spec), "--jobs", str(JOBS)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout
