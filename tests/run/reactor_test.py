"""Tasks whose workers the run loop waits on itself (isolation "none": no thread per
task) end exactly as tasks in threads do: timeouts, leftovers, retries, verify, cancel,
the registry. Each case runs under both drivers."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PY, alive, read_tasks, run_cli, task, wait_for, write_spec
from reliability.support import call_main

from specexec.run import processes

# "none": the loop waits on the worker (reactor); "worktree": a thread does.
both = pytest.mark.parametrize("isolation", ["none", "worktree"])


def q(path: Path) -> str:
    return shlex.quote(str(path))


def pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()]


def transitions(spec: Path, task_id: str) -> list[tuple[str | None, str, int | None]]:
    lines = (spec / ".specexec" / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    return [
        (e["from"], e["to"], e["attempt"])
        for e in events
        if e["kind"] == "transition" and e["task"] == task_id
    ]


def log_of(spec: Path, task_id: str) -> str:
    (log,) = (spec / ".specexec" / "runs").glob(f"*/{task_id}.log")
    return log.read_text()


@both
def test_a_timed_out_worker_and_its_whole_group_are_stopped(
    repo: Path, tmp_path: Path, isolation: str
) -> None:
    out = tmp_path / "pids"
    cmd = f"sleep 300 & echo $! >> {q(out)}; echo $$ >> {q(out)}; wait"
    spec = write_spec(
        repo / "specs" / "t",
        [task("T", files=["t.txt"], command=cmd, timeout_minutes=0.01, max_retries=0)],
    )
    proc = run_cli("run", str(spec), "--isolation", isolation)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    t = read_tasks(spec)["T"]
    assert t["status"] == "fail" and t["error_class"] == "timeout", t
    assert t["blocker"] == "timed out after 0.01 min"
    assert len(pids(out)) == 2 and not any(alive(p) for p in pids(out))
    assert "=== specexec end: timed out after" in log_of(spec, "T")


@both
def test_what_a_worker_leaves_running_is_stopped_and_its_task_passes(
    repo: Path, tmp_path: Path, isolation: str
) -> None:
    """A background job left in the group, and one that left the group (setsid)."""
    out = tmp_path / "pids"
    cmd = (
        f"sleep 300 & echo $! >> {q(out)}; setsid sleep 300 & echo $! >> {q(out)}; "
        "echo done > t.txt"
    )
    spec = write_spec(repo / "specs" / "left", [task("T", files=["t.txt"], command=cmd)])
    proc = run_cli("run", str(spec), "--isolation", isolation)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_tasks(spec)["T"]["status"] == "pass"
    assert len(pids(out)) == 2
    assert not any(alive(p) for p in pids(out)), "a worker's process outlived its task"


@both
def test_a_retry_and_a_verify_step_follow_each_other_in_order(repo: Path, isolation: str) -> None:
    spec = write_spec(
        repo / "specs" / "steps",
        [
            task(
                "R",
                files=["r.txt"],
                command='[ "$SPECEXEC_ATTEMPT" = 1 ] && exit 3; echo r > r.txt',
                verify="test -f r.txt",
                max_retries=1,
            ),
            task("V", files=["v.txt"], command="true", verify="test -f nowhere", max_retries=0),
            task("N", files=["n.txt"], command="specexec-no-such-program", max_retries=0),
            task("after", blocked_by=["R"], files=["a.txt"], command="echo a > a.txt"),
        ],
    )
    proc = run_cli("run", str(spec), "--isolation", isolation, "--jobs", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    tasks = read_tasks(spec)
    assert tasks["R"]["status"] == "pass" and tasks["R"]["attempts"] == 2, tasks["R"]
    assert transitions(spec, "R") == [
        ("pending", "in_progress", 1),
        ("in_progress", "in_progress", 2),
        ("in_progress", "pass", 2),
    ]
    assert tasks["V"]["status"] == "fail" and tasks["V"]["error_class"] == "verify_failed"
    assert tasks["V"]["blocker"] == "verify failed (exit code 1): test -f nowhere"
    assert tasks["N"]["status"] == "fail" and "127" in tasks["N"]["blocker"], tasks["N"]
    assert tasks["after"]["status"] == "pass"
    log = log_of(spec, "R")
    # The failed first attempt, then the second and its verify.
    assert log.count("=== specexec attempt") == 3 and log.count("=== specexec end:") == 3
    assert "test -f r.txt ===\n=== specexec end: exit 0" in log


@both
def test_an_interrupted_run_stops_its_workers_and_leaves_their_tasks_pending(
    repo: Path, tmp_path: Path, isolation: str
) -> None:
    out = tmp_path / "pids"
    spec = write_spec(
        repo / "specs" / "int",
        [
            task("A", files=["a.txt"], command=f"echo $$ >> {q(out)}; exec sleep 300"),
            task("B", files=["b.txt"], command=f"echo $$ >> {q(out)}; exec sleep 300"),
        ],
    )
    run = subprocess.Popen(
        [PY, "-m", "specexec", "run", str(spec), "--isolation", isolation, "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: out.exists() and len(pids(out)) == 2, 60, "both workers to start")
        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, output
    tasks = read_tasks(spec)
    assert [tasks[t]["status"] for t in "AB"] == ["pending", "pending"]
    assert [tasks[t].get("attempts", 0) for t in "AB"] == [0, 0]
    assert not any(alive(p) for p in pids(out))


def test_a_running_worker_is_in_the_registry_until_it_ends(repo: Path, tmp_path: Path) -> None:
    """The record the guardian and the next run's sweep read, for a worker the loop waits
    on: there while it runs, gone after."""
    seen, out = tmp_path / "seen", tmp_path / "pid"
    registry = repo / "specs" / "reg" / ".specexec" / "workers"
    cmd = (
        f"echo $$ > {q(out)}; "
        f"for i in $(seq 600); do [ -e {q(registry)}/$$.json ] && break; sleep 0.05; done; "
        f"cat {q(registry)}/$$.json > {q(seen)}"
    )
    spec = write_spec(repo / "specs" / "reg", [task("T", files=["t.txt"], command=cmd)])
    proc = run_cli("run", str(spec), "--isolation", "none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (pid,) = pids(out)
    record = json.loads(seen.read_text())
    assert record["pgid"] == pid and record["command"] == cmd
    assert not (registry / f"{pid}.json").exists()


def test_a_worker_without_a_pidfd_is_waited_on_by_a_thread(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pidfd_open can fail for one process (out of descriptors): that task is waited on
    in a thread, and ends as any other, timeouts included."""
    assert processes.pidfds_work(), "this test needs Linux >= 5.3"
    monkeypatch.setattr(processes, "_pidfd", lambda pid: None)
    out = tmp_path / "pids"
    spec = write_spec(
        repo / "specs" / "nofd",
        [
            task("ok", files=["ok.txt"], command="echo ok > ok.txt"),
            task(
                "slow",
                files=["s.txt"],
                command=f"echo $$ >> {q(out)}; exec sleep 300",
                timeout_minutes=0.01,
                max_retries=0,
            ),
        ],
    )
    code, stdout, stderr = call_main(["run", str(spec), "--isolation", "none", "--jobs", "2"])
    assert code == 1, stdout + stderr
    tasks = read_tasks(spec)
    assert tasks["ok"]["status"] == "pass"
    assert tasks["slow"]["status"] == "fail" and tasks["slow"]["error_class"] == "timeout"
    assert not any(alive(p) for p in pids(out))


@both
def test_an_orphan_that_ignores_sigterm_holds_up_only_its_own_task(
    repo: Path, tmp_path: Path, isolation: str
) -> None:
    """A's worker leaves a process outside its group that ignores SIGTERM: killing it takes
    the grace period (5 s). B, running beside it, ends while that orphan still lives:
    neither the loop nor B's own end waits for it."""
    orphan = tmp_path / "orphan"
    a = (
        f"setsid sh -c 'trap \"\" TERM; echo $$ > {q(orphan)}; exec sleep 300' & "
        f"while [ ! -s {q(orphan)} ]; do sleep 0.01; done"
    )
    spec = write_spec(
        repo / "specs" / "hold",
        [task("A", files=["a.txt"], command=a), task("B", files=["b.txt"], command="sleep 1")],
    )
    argv = [PY, "-m", "specexec", "run", str(spec), "--isolation", isolation, "--jobs", "2"]
    run = subprocess.Popen([*argv, "--json"], stdout=subprocess.PIPE, text=True)
    finished, alive_when_b_ended = [], None
    try:
        assert run.stdout is not None
        for line in run.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "task_finished":
                finished.append(event["task"])
                if event["task"] == "B":
                    alive_when_b_ended = alive(pids(orphan)[0])
        assert run.wait(timeout=60) == 0
    finally:
        if run.poll() is None:
            run.kill()
    assert finished == ["B", "A"]
    assert alive_when_b_ended, "B's end waited for A's orphan to be killed"
    assert not alive(pids(orphan)[0]), "the orphan outlived its task"
