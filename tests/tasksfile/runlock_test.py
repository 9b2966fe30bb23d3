"""The run lock: one runner per spec folder, dead holders detected, crashed runs recovered;
and SpecNameClaim: one spec folder per spec name and repository, while a run holds it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import PY, read_tasks, task, write_spec

from specexec.errors import Busy, InvalidInput
from specexec.run.recovery import recover_in_progress
from specexec.tasksfile.events import EventLog, read_events
from specexec.tasksfile.runlock import RunLock, SpecNameClaim
from specexec.tasksfile.store import TasksStore

HOLDER = """
import os, sys
from specexec.tasksfile.runlock import RunLock
lock = RunLock(sys.argv[1], run_id="child-run")
lock.acquire()
if len(sys.argv) > 2:  # leave a forked child behind (it must not inherit the lock)
    pid = os.fork()
    if pid == 0:
        # The at-fork hook has run by now: say so, so that the test never kills the
        # holder while the child may still share the lock's file description.
        os.write(1, b"forked\\n")  # one write: the two processes share the pipe
        sys.stdin.readline()
        os._exit(0)
    os.write(1, f"grandchild {pid}\\n".encode())
print("locked", flush=True)
sys.stdin.readline()  # hold the lock until told to let go
lock.release()
print("released", flush=True)
"""


def _start_holder(spec: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PY, "-c", textwrap.dedent(HOLDER), str(spec), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    # The holder and its forked child write to the same pipe, in either order.
    want = {"locked", "grandchild", "forked"} if extra else {"locked"}
    seen: set[str] = set()
    while seen != want:
        line = proc.stdout.readline()
        word = line.split(" ", 1)[0].strip()
        assert word in want, f"holder said {line!r}"
        seen.add(word)
        if word == "grandchild":
            proc.grandchild = int(line.split()[1])  # type: ignore[attr-defined]
    return proc


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[Path]:
    yield write_spec(tmp_path / "spec", [task("T1"), task("T2")])


def test_a_second_runner_is_refused_at_once_with_who_holds_it(spec: Path) -> None:
    holder = _start_holder(spec)
    try:
        lock = CountingLock(spec)
        with pytest.raises(Busy) as info:
            lock.acquire()
        assert lock.tries == 1  # at once: refused on the first try, no polling
        msg = str(info.value)
        assert msg.startswith(
            f"spec folder {spec} is being run by pid {holder.pid} on host {socket.gethostname()} since "
        )
        assert info.value.exit_code == 75
        found = RunLock.holder(spec)
        assert found is not None and found["pid"] == holder.pid and found["run_id"] == "child-run"
    finally:
        holder.communicate("go\n", timeout=30)
    assert RunLock.holder(spec) is None  # released cleanly
    with RunLock(spec) as lock:
        assert lock.held and lock.taken_over is None


def test_two_locks_in_one_process_exclude_each_other(spec: Path) -> None:
    with RunLock(spec):
        with pytest.raises(Busy):
            RunLock(spec).acquire()
        assert RunLock.holder(spec) is not None
    assert RunLock.holder(spec) is None
    assert (spec / ".specexec" / "run.lock").exists()  # the lock file stays


def test_wait_gets_the_lock_once_the_holder_releases_it(spec: Path) -> None:
    holder = _start_holder(spec)
    got: list[RunLock] = []
    waiter = CountingLock(spec, wait=True, poll_interval=0.02)
    thread = threading.Thread(target=lambda: (waiter.acquire(), got.append(waiter)))
    thread.start()
    # Tried and refused several times while the other process holds the lock.
    assert waiter.refused.wait(timeout=30), "the waiter never tried"
    assert not got, "acquired while another process held the lock"
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "released\n"
    thread.join(timeout=30)
    assert got and got[0].held
    got[0].release()
    holder.communicate(timeout=30)


class CountingLock(RunLock):
    """A RunLock that says when it has been refused three times."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tries = 0
        self.refused = threading.Event()

    def _try(self) -> bool:
        ok = super()._try()
        self.tries += 1
        if not ok and self.tries >= 3:
            self.refused.set()
        return ok


def test_wait_with_a_timeout_gives_up(spec: Path) -> None:
    holder = _start_holder(spec)
    try:
        lock = CountingLock(spec)
        start = time.monotonic()
        with pytest.raises(Busy, match=r"gave up after waiting 0\.3 s"):
            lock.acquire(wait=True, timeout=0.3)
        assert time.monotonic() - start >= 0.3 and lock.tries >= 2  # it waited, polling
    finally:
        holder.communicate("go\n", timeout=30)


def test_a_lock_left_by_a_killed_runner_is_taken_over(spec: Path) -> None:
    holder = _start_holder(spec)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    info = json.loads((spec / ".specexec" / "run.lock").read_text())
    assert info["pid"] == holder.pid  # its details are still in the file...
    assert RunLock.holder(spec) is None  # ...but it is known to be gone
    with RunLock(spec) as lock:
        assert lock.taken_over is not None and lock.taken_over["pid"] == holder.pid
        assert RunLock.holder(spec) == json.loads((spec / ".specexec" / "run.lock").read_text())


def test_a_forked_child_of_a_killed_runner_does_not_keep_the_lock(spec: Path) -> None:
    holder = _start_holder(spec, "fork")
    grandchild = holder.grandchild  # type: ignore[attr-defined]
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert psutil.pid_exists(grandchild)
        with RunLock(spec) as lock:
            assert lock.taken_over is not None
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_details_naming_a_reused_pid_are_not_a_live_holder(spec: Path) -> None:
    # A live process with our pid, but not the one that wrote the file: the start time differs.
    (spec / ".specexec").mkdir(mode=0o700)
    me = psutil.Process(os.getpid())
    stale = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": me.create_time() - 1000,
        "since": "2020-01-01T00:00:00.000Z",
        "run_id": "old",
    }
    (spec / ".specexec" / "run.lock").write_text(json.dumps(stale))
    assert RunLock.holder(spec) is None
    with RunLock(spec) as lock:
        assert lock.taken_over == stale
        assert RunLock.holder(spec) is not None


def test_recovery_puts_tasks_of_a_dead_run_back_to_pending(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "spec",
        [
            task("T1", status="pass", commit="abc"),
            task(
                "T2",
                status="in_progress",
                attempts=2,
                started_at="2025-01-01T00:00:00Z",
                note="keep",
            ),
            task("T3", status="in_progress"),
            task("T4"),
        ],
    )
    # A run that dies with SIGKILL while its tasks are in progress.
    runner = subprocess.Popen(
        [
            PY,
            "-c",
            textwrap.dedent(
                """
                import sys
                from specexec.tasksfile.runlock import RunLock
                from specexec.tasksfile.store import TasksStore
                lock = RunLock(sys.argv[1]); lock.acquire()
                TasksStore(sys.argv[1]).update(tasks={"T4": {"status": "in_progress"}})
                print("running", flush=True)
                sys.stdin.readline()
                """
            ),
            str(spec),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None and runner.stdout.readline() == "running\n"
    runner.kill()
    runner.wait(timeout=30)

    store = TasksStore(spec)
    with RunLock(spec, run_id="r2") as lock:
        assert lock.taken_over is not None and lock.taken_over["pid"] == runner.pid
        events = EventLog(spec, run_id="r2")
        assert recover_in_progress(store, events) == ["T2", "T3", "T4"]
        mtime = (spec / "tasks.json").stat().st_mtime_ns
        assert recover_in_progress(store, events) == []  # nothing left; no write
        assert (spec / "tasks.json").stat().st_mtime_ns == mtime
    tasks = read_tasks(spec)
    assert [tasks[t]["status"] for t in ("T1", "T2", "T3", "T4")] == [
        "pass",
        "pending",
        "pending",
        "pending",
    ]
    assert "started_at" not in tasks["T2"]
    assert tasks["T2"]["note"] == "keep" and tasks["T2"]["attempts"] == 2
    assert tasks["T1"]["commit"] == "abc"
    recovered = [e for e in read_events(spec) if e["kind"] == "recovered"]
    assert [(e["task"], e["from"], e["to"], e["run_id"]) for e in recovered] == [
        ("T2", "in_progress", "pending", "r2"),
        ("T3", "in_progress", "pending", "r2"),
        ("T4", "in_progress", "pending", "r2"),
    ]
    assert recovered[0]["attempt"] == 2 and "gone" in recovered[0]["reason"]


# --- SpecNameClaim ---------------------------------------------------------------------


def test_a_second_folder_is_refused_naming_both_and_the_same_folder_is_not(
    tmp_path: Path,
) -> None:
    common = tmp_path / ".git"
    common.mkdir()
    a, b = tmp_path / "specs" / "auth", tmp_path / "legacy" / "auth"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    with SpecNameClaim(a, "auth", common):
        SpecNameClaim(a, "auth", common).check()  # the same folder: the run lock decides
        with pytest.raises(InvalidInput) as info:
            SpecNameClaim(b, "auth", common).check()
        assert str(a) in str(info.value.problems) and str(b) in str(info.value.problems)
        with pytest.raises(InvalidInput):
            SpecNameClaim(b, "auth", common).acquire()
        SpecNameClaim(b, "other", common).check()  # another name is free
    # Released: free for the other folder now.
    with SpecNameClaim(b, "auth", common):
        pass


def test_a_claim_dies_with_its_holder_whatever_it_left_in_the_file(tmp_path: Path) -> None:
    """The kernel drops the flock of a killed holder: its folder, still in the file,
    claims nothing."""
    common = tmp_path / ".git"
    common.mkdir()
    a, b = tmp_path / "a" / "auth", tmp_path / "b" / "auth"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    code = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from specexec.tasksfile.runlock import SpecNameClaim
        claim = SpecNameClaim(Path({str(a)!r}), "auth", Path({str(common)!r}))
        claim.acquire()
        print("held", flush=True)
        sys.stdin.read()
        os._exit(9)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    with pytest.raises(InvalidInput):
        SpecNameClaim(b, "auth", common).check()
    proc.kill()
    proc.wait()
    assert str(a) in (common / "specexec" / "specs" / "auth.lock").read_text()
    with SpecNameClaim(b, "auth", common):
        pass
