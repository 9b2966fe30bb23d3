"""The worker process runner: process groups, timeouts, cancel, logs, env, orphan sweep."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import alive, wait_for, wait_until

from specexec import system
from specexec.run.processes import (
    _BORN_SLACK_S,
    ATTEMPT_FOOTER,
    ATTEMPT_HEADER,
    ProcessOutcome,
    _process_clock,
    run_process,
    sweep_orphans,
    worker_env,
)
from specexec.workers.result import parse_result, read_log_tail

PY = sys.executable


def live_in_group(pgid: int) -> list[int]:
    """Processes of the group that are really alive (zombies of an init that never reaps
    do not count)."""
    alive = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups a test started; any survivor is killed (and fails the test)."""
    started: list[int] = []
    yield started
    survivors = {g: live_in_group(g) for g in started}
    for g, pids in survivors.items():
        if pids:
            os.killpg(g, signal.SIGKILL)
    assert not any(survivors.values()), f"processes survived: {survivors}"


def run(tmp_path: Path, command: object, groups: list[int], **kw: object) -> ProcessOutcome:
    kw.setdefault("cwd", tmp_path)
    kw.setdefault("env", dict(os.environ))
    kw.setdefault("stdin_path", None)
    kw.setdefault("log_path", tmp_path / "task.log")
    kw.setdefault("timeout_s", 30)
    user_on_start = kw.pop("on_start", None)

    def on_start(pid: int) -> None:
        groups.append(pid)
        if callable(user_on_start):
            user_on_start(pid)

    return run_process(command, on_start=on_start, **kw)  # type: ignore[arg-type]


# A grace period no test sits out: a run that returns at all under it was ended by
# SIGTERM (or by the worker itself), never by waiting for the grace period to pass.
NEVER_S = 3600.0
# How long a run given NEVER_S may take before the test calls it a hang (a safety net
# against hanging the suite, not a speed limit: the runs below take about a second).
SAFETY_S = 60.0


def run_in_thread(
    tmp_path: Path, command: object, groups: list[int], **kw: object
) -> tuple[threading.Thread, list[ProcessOutcome]]:
    """``run`` in a thread of its own: (the thread, a box for its outcome)."""
    box: list[ProcessOutcome] = []
    th = threading.Thread(target=lambda: box.append(run(tmp_path, command, groups, **kw)))
    th.daemon = True  # a failed test must not keep the session open
    th.start()
    return th, box


def outcome_of(th: threading.Thread, box: list[ProcessOutcome], why: str) -> ProcessOutcome:
    """The outcome of ``run_in_thread``'s run, failing the test (``why``) on a hang."""
    th.join(SAFETY_S)
    assert not th.is_alive() and box, f"run_process did not return: {why}"
    return box[0]


def footer(log: Path) -> str:
    """specexec's end line of the latest attempt in ``log``."""
    lines = [line for line in log.read_text().splitlines() if line.startswith(ATTEMPT_FOOTER)]
    assert lines, log.read_text()
    return lines[-1]


def test_timeout_terms_the_whole_group_and_nothing_survives(
    tmp_path: Path, groups: list[int]
) -> None:
    # Nothing here ends on its own and the grace period is never over: only the timeout's
    # SIGTERM to the whole group can make the run return.
    th, box = run_in_thread(tmp_path, "sleep 999 & sleep 999", groups, timeout_s=1, grace_s=NEVER_S)
    out = outcome_of(th, box, "the timeout never fired, or its SIGTERM was not enough")
    assert out.timed_out and not out.cancelled
    assert out.returncode == -signal.SIGTERM  # TERM was enough: no grace period sat out
    assert out.duration_s >= 1  # not before its time
    assert live_in_group(out.pid) == []
    assert footer(tmp_path / "task.log").startswith(f"{ATTEMPT_FOOTER} timed out after ")


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, groups: list[int]
) -> None:
    got, release = tmp_path / "got-term", tmp_path / "release"
    # The background sleep ignores SIGTERM. The leader handles it: it says so, cleans up
    # once the test lets it (proof that it was left alive after SIGTERM) and goes on
    # waiting. Only SIGKILL ends either of them.
    handler = (
        f"echo term >> {got}; while [ ! -e {release} ]; do sleep 0.02; done; echo cleaned >> {got}"
    )
    script = f"trap '' TERM; sleep 999 & trap '{handler}' TERM; while :; do wait; done"
    th, box = run_in_thread(tmp_path, script, groups, timeout_s=1, grace_s=2)
    wait_for(lambda: got.exists() or not th.is_alive(), SAFETY_S, "the worker to get SIGTERM")
    # SIGTERM came first, and the runner gives the group its grace period: still waiting.
    assert th.is_alive() and live_in_group(groups[0])
    release.touch()
    out = outcome_of(th, box, "the group was not killed after its grace period")
    assert out.timed_out and not out.cancelled
    assert got.read_text() == "term\ncleaned\n"  # it had the time to clean up, once
    # Then SIGKILL, which nothing can ignore: the leader died of it, and nothing is left.
    assert out.returncode == -signal.SIGKILL
    assert live_in_group(out.pid) == []
    assert footer(tmp_path / "task.log").startswith(f"{ATTEMPT_FOOTER} timed out after ")


def test_background_leftovers_are_stopped_when_the_leader_exits(
    tmp_path: Path, groups: list[int]
) -> None:
    # The leftover never ends on its own and the grace period is never over: the run
    # returns only if the leftover was stopped by SIGTERM once the leader exited.
    th, box = run_in_thread(tmp_path, "sleep 999 & echo started", groups, grace_s=NEVER_S)
    out = outcome_of(th, box, "the leftover was not stopped when the leader exited")
    assert out.returncode == 0 and not out.timed_out and not out.cancelled
    assert live_in_group(out.pid) == []
    assert "started" in read_log_tail(tmp_path / "task.log")
    assert footer(tmp_path / "task.log").startswith(f"{ATTEMPT_FOOTER} exit 0 after ")


def test_cancel_stops_a_running_worker_promptly(tmp_path: Path, groups: list[int]) -> None:
    cancel = threading.Event()
    started = threading.Event()
    # No timeout, nothing ends on its own, the grace period is never over: only the cancel
    # event, looked at while the worker runs, and its SIGTERM can make the run return.
    th, box = run_in_thread(
        tmp_path,
        "sleep 999 & sleep 999",
        groups,
        timeout_s=None,
        grace_s=NEVER_S,
        cancel=cancel,
        on_start=lambda pid: started.set(),
    )
    assert started.wait(SAFETY_S)
    assert th.is_alive() and not box  # running, until cancelled
    cancel.set()
    out = outcome_of(th, box, "the cancel was not acted on while the worker ran")
    assert out.cancelled and not out.timed_out
    assert out.returncode == -signal.SIGTERM  # stopped by our TERM, no grace period sat out
    assert live_in_group(out.pid) == []
    assert footer(tmp_path / "task.log").startswith(f"{ATTEMPT_FOOTER} cancelled after ")


def test_an_already_cancelled_worker_does_not_start(tmp_path: Path, groups: list[int]) -> None:
    cancel = threading.Event()
    cancel.set()
    out = run(tmp_path, ["touch", "started"], groups, cancel=cancel)
    assert out.cancelled and out.pid == 0 and out.returncode is None
    assert not (tmp_path / "started").exists()


def test_missing_executable_is_a_start_error_not_an_exception(
    tmp_path: Path, groups: list[int]
) -> None:
    out = run(tmp_path, ["specexec-no-such-agent-cli", "-p"], groups)
    assert out.returncode is None and out.pid == 0
    assert out.start_error is not None and "command not found" in out.start_error
    assert "specexec-no-such-agent-cli" in out.start_error
    assert out.start_error in (tmp_path / "task.log").read_text()


def test_permission_denied_and_missing_cwd_are_start_errors(
    tmp_path: Path, groups: list[int]
) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    out = run(tmp_path, [str(script)], groups)
    assert out.start_error is not None and "permission denied" in out.start_error
    out = run(tmp_path, ["true"], groups, cwd=tmp_path / "gone")
    assert out.start_error is not None and "does not exist" in out.start_error


def test_a_string_command_runs_under_sh_and_exit_codes_are_kept(
    tmp_path: Path, groups: list[int]
) -> None:
    out = run(tmp_path, "echo one; exit 7", groups)
    assert out.returncode == 7 and out.start_error is None
    out = run(tmp_path, "specexec-no-such-cmd", groups)
    assert out.returncode == 127  # the shell reports it; the task fails with its message


def test_prompt_is_given_on_stdin_and_dev_null_otherwise(tmp_path: Path, groups: list[int]) -> None:
    prompt = tmp_path / "T1.prompt.md"
    prompt.write_text("# Task Worker: Execute Task T1\n")
    out = run(tmp_path, ["cat"], groups, stdin_path=prompt)
    assert out.returncode == 0
    assert read_log_tail(tmp_path / "task.log") == "# Task Worker: Execute Task T1\n"
    # Without a prompt, stdin is /dev/null, not the runner's own: here a pipe nobody
    # writes to (pytest's stdin is /dev/null already), on which an inherited cat would
    # wait until the run's timeout killed it.
    same = "import os; print(os.path.samestat(os.fstat(0), os.stat(os.devnull)))"
    r, w = os.pipe()
    saved = os.dup(0)
    try:
        os.dup2(r, 0)
        out = run(tmp_path, ["cat"], groups)
        assert out.returncode == 0 and not out.timed_out
        out = run(tmp_path, [PY, "-c", same], groups)
        assert out.returncode == 0 and read_log_tail(tmp_path / "task.log") == "True\n"
    finally:
        os.dup2(saved, 0)
        for fd in (saved, r, w):
            os.close(fd)


def test_log_is_private_and_keeps_every_attempt(tmp_path: Path, groups: list[int]) -> None:
    log = tmp_path / "runs" / "r1" / "T1.log"
    env1 = worker_env(None, attempt=1)
    env2 = worker_env(None, attempt=2)
    run(tmp_path, "echo first attempt", groups, env=env1, log_path=log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    run(tmp_path, "echo second attempt", groups, env=env2, log_path=log)
    text = log.read_text()
    assert text.count(ATTEMPT_HEADER) == 2
    assert f"{ATTEMPT_HEADER} 1 " in text and f"{ATTEMPT_HEADER} 2 " in text
    assert "first attempt" in text and "second attempt" in text
    assert read_log_tail(log) == "second attempt\n"  # results look at the latest only


def test_a_multiline_command_in_the_header_is_not_taken_for_output(
    tmp_path: Path, groups: list[int]
) -> None:
    command = 'true\n: \'{"status": "pass"}\'\nexit 1'
    out = run(tmp_path, command, groups)
    assert out.returncode == 1
    text = (tmp_path / "task.log").read_text()
    assert text.count("\n") == 2  # header line + end line
    result = parse_result(tmp_path / "none.json", tmp_path / "task.log", 1, preset="shell")
    assert result.status == "fail" and result.source == "exit_code"


def test_an_existing_world_readable_log_is_narrowed(tmp_path: Path, groups: list[int]) -> None:
    log = tmp_path / "T1.log"
    log.write_text("old\n")
    log.chmod(0o644)
    run(tmp_path, "echo new", groups, log_path=log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_worker_env_has_specexec_vars_and_no_git_repository_vars(
    tmp_path: Path, groups: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_DIR", "/some/hook/repo/.git")
    monkeypatch.setenv("GIT_INDEX_FILE", "/some/hook/repo/.git/index")
    monkeypatch.setenv("SPECEXEC_RESULT_FILE", "/stale/parent/result.json")
    monkeypatch.setenv("SPECEXEC_RUN_ID", "parent-run")
    env = worker_env(
        None,
        task_id="T1",
        spec_dir=tmp_path / "spec",
        worktree=tmp_path,
        prompt_file=tmp_path / "T1.prompt.md",
        result_file=tmp_path / "T1.result.json",
        run_id="20250101-abc",
        attempt=2,
    )
    out = run(
        tmp_path,
        [PY, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        groups,
        env=env,
    )
    assert out.returncode == 0
    seen = json.loads(read_log_tail(tmp_path / "task.log"))
    assert seen["SPECEXEC_TASK_ID"] == "T1"
    assert seen["SPECEXEC_SPEC_DIR"] == str(tmp_path / "spec")
    assert seen["SPECEXEC_WORKTREE"] == str(tmp_path)
    assert seen["SPECEXEC_PROMPT_FILE"] == str(tmp_path / "T1.prompt.md")
    assert seen["SPECEXEC_RESULT_FILE"] == str(tmp_path / "T1.result.json")
    assert seen["SPECEXEC_RUN_ID"] == "20250101-abc"
    assert seen["SPECEXEC_ATTEMPT"] == "2"
    assert "GIT_DIR" not in seen and "GIT_INDEX_FILE" not in seen
    assert seen["PATH"] == os.environ["PATH"]
    # Nothing of the parent's own SPECEXEC_* leaks when not set again.
    assert "SPECEXEC_RUN_ID" not in worker_env(None, task_id="T1")
    with pytest.raises(TypeError):
        worker_env(None, task="T1")


def test_registry_records_a_live_worker_and_forgets_it_when_done(
    tmp_path: Path, groups: list[int]
) -> None:
    registry = tmp_path / "workers"
    seen: list[dict[str, object]] = []

    def on_start(pid: int) -> None:
        seen.extend(json.loads(p.read_text()) for p in registry.glob("*.json"))
        with contextlib.suppress(psutil.NoSuchProcess):  # `true` has ended already
            started.append(psutil.Process(pid).create_time())

    started: list[float] = []
    out = run(tmp_path, ["sleep", "0.3"], groups, registry_dir=registry, on_start=on_start)
    assert out.returncode == 0
    assert [r["pgid"] for r in seen] == [out.pid]
    assert seen[0]["runner_pid"] == os.getpid()
    assert seen[0]["create_time"] == pytest.approx(started[0], abs=0.05)  # what sweeps compare
    assert list(registry.glob("*.json")) == []
    # A worker done within a moment is never recorded (nothing could be left to sweep).
    seen.clear()
    assert run(tmp_path, ["true"], groups, registry_dir=registry, on_start=on_start).returncode == 0
    assert seen == [] and list(registry.glob("*.json")) == []


def test_an_exception_in_the_runner_thread_stops_the_group(
    tmp_path: Path, groups: list[int]
) -> None:
    def boom(pid: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "sleep 999 & sleep 999", groups, on_start=boom)
    assert live_in_group(groups[-1]) == []


RUNNER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from specexec.run.processes import guardian_pid, run_process
    registry, log, ready = map(Path, sys.argv[1:4])
    env = dict(os.environ, SPECEXEC_SPEC_DIR=str(registry.parent.parent))

    def started(pid):
        # The guardian exists once the first worker has been recorded.
        ready.write_text(f"{pid} {guardian_pid()}")

    run_process("sleep 999 & sleep 999 & wait", cwd=log.parent, env=env,
                stdin_path=None, log_path=log, timeout_s=None, registry_dir=registry,
                on_start=started)
    """
)


def _start_runner(tmp_path: Path, groups: list[int]) -> tuple[subprocess.Popen[bytes], int, int]:
    """A runner process with one worker group (two sleeps) recorded in its registry."""
    registry = tmp_path / "spec" / ".specexec" / "workers"
    ready = tmp_path / "ready"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    runner = subprocess.Popen([PY, str(script), str(registry), str(tmp_path / "w.log"), str(ready)])
    assert wait_until(lambda: ready.exists() and ready.read_text(), 10)
    pgid, guardian = map(int, ready.read_text().split())
    groups.append(pgid)
    assert wait_until(lambda: len(live_in_group(pgid)) >= 2, 10)  # sh and its two sleeps
    return runner, pgid, guardian


def test_the_guardian_stops_the_workers_of_a_sigkilled_runner(
    tmp_path: Path, groups: list[int]
) -> None:
    runner, pgid, guardian = _start_runner(tmp_path, groups)
    registry = tmp_path / "spec" / ".specexec" / "workers"
    try:
        # While its runner lives, a worker is none of the sweeper's business.
        assert sweep_orphans(registry) == []
        assert live_in_group(pgid)
        assert psutil.pid_exists(guardian)
    finally:
        runner.kill()
        runner.wait()
    # Nobody calls a sweep: the guardian sees its runner die and stops the whole group
    # (the leader and the two sleeps it started), then exits.
    assert wait_until(lambda: not live_in_group(pgid), 10), "the worker group outlived its runner"
    assert wait_until(lambda: not psutil.pid_exists(guardian) or _zombie(guardian), 10)
    assert list(registry.glob("*.json")) == []


def test_sweep_orphans_kills_the_group_of_a_sigkilled_runner(
    tmp_path: Path, groups: list[int]
) -> None:
    # The second net, for when the guardian died too (OOM killer, kill -9 of both).
    runner, pgid, guardian = _start_runner(tmp_path, groups)
    registry = tmp_path / "spec" / ".specexec" / "workers"
    os.kill(guardian, signal.SIGKILL)
    runner.kill()
    runner.wait()
    assert live_in_group(pgid)
    assert len(list(registry.glob("*.json"))) == 1
    assert sweep_orphans(registry) == [pgid]
    assert live_in_group(pgid) == []
    assert list(registry.glob("*.json")) == []


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_sweep_orphans_spares_a_reused_pid(tmp_path: Path, groups: list[int]) -> None:
    registry = tmp_path / "workers"
    registry.mkdir()
    proc = subprocess.Popen(["sleep", "999"], start_new_session=True)
    groups.append(proc.pid)
    try:
        me = psutil.Process()
        record = {
            "pgid": proc.pid,
            "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time() - 100,  # someone older
            "runner_pid": me.pid,
            "runner_create_time": me.create_time() - 100,  # not us: that runner is gone
            "command": "sleep 999",
        }
        (registry / f"{proc.pid}.json").write_text(json.dumps(record))
        (registry / "garbage.json").write_text("{not json")
        assert sweep_orphans(registry) == []
        assert proc.poll() is None  # still running
        assert list(registry.glob("*.json")) == []
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_200mb_of_output_neither_deadlocks_nor_grows_the_runner(
    tmp_path: Path, groups: list[int]
) -> None:
    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        out = run(
            tmp_path,
            "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo done",
            groups,
            timeout_s=120,
        )
        result = parse_result(
            tmp_path / "none.json", tmp_path / "task.log", out.returncode, preset="shell"
        )
    finally:
        done.set()
        sampler.join()
    assert out.returncode == 0 and not out.timed_out
    assert (tmp_path / "task.log").stat().st_size > 200_000_000
    assert result.status == "pass" and result.source == "exit_code"
    growth = max(peak[0], me.memory_info().rss) - before
    assert growth < 50 * 1024 * 1024, f"runner RSS grew by {growth / 2**20:.1f} MiB"


# --- no process of a worker outlives its task (issue 15, case 9) -------------------------

# Each worker starts a process that leaves its process group; that process writes its
# own pid once it has left (so the leader cannot end before the escape is complete). The
# test reads it back after run_process returned: the return is the event, no sleep.
_REPORT = "sh -c 'echo $$ > escaped.tmp; mv escaped.tmp escaped; exec sleep 300'"
ESCAPES = {
    "setsid": f"setsid {_REPORT} &",
    # The daemon's way: fork, setsid, fork again, the middle one exits.
    "double-fork": "setsid sh -c 'sh -c \"echo \\$\\$ > escaped.tmp; mv escaped.tmp escaped;"
    " exec sleep 300\" & exit 0' &",
    "nohup-own-session": f"nohup setsid {_REPORT} >/dev/null 2>&1 &",
    "setpgid": (
        f"{PY} -c 'import os; os.setpgid(0, 0);"
        ' open("escaped.tmp", "w").write(str(os.getpid())); os.rename("escaped.tmp", "escaped");'
        ' os.execvp("sleep", ["sleep", "300"])\' &'
    ),
    # Not in the issue: one that also clears its environment, so carries no marker; one
    # that forges another marker.
    "env-cleared": f"env -i $(command -v setsid) $(command -v sh) -c {_REPORT[6:]} &",
    "forged-marker": f"SPECEXEC_MARKER=someone-else setsid {_REPORT} &",
}
# The leader waits until the escaped process has reported itself.
_AWAIT = "while [ ! -s escaped ]; do :; done"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _escaped(tmp_path: Path) -> int:
    pid = wait_until(lambda: _read(tmp_path / "escaped"), 10)
    assert pid, "the worker wrote no pid"
    return int(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", list(ESCAPES), ids=list(ESCAPES))
def test_a_process_that_left_the_group_dies_with_its_task(
    tmp_path: Path, groups: list[int], how: str
) -> None:
    # The leader waits for the pid file, so the escaped process exists when it exits.
    command = f"{ESCAPES[how]} {_AWAIT}"
    out = run(tmp_path, command, groups, timeout_s=30, grace_s=2)
    pid = _escaped(tmp_path)
    try:
        assert out.returncode == 0
        assert not alive(pid), f"{how}: pid {pid} outlived its task"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).ppid() != os.getpid(), (
            "its zombie was left to this process"
        )
    finally:
        _kill(pid)


def test_a_timed_out_workers_setsid_child_dies_too(tmp_path: Path, groups: list[int]) -> None:
    out = run(tmp_path, f"{ESCAPES['setsid']} {_AWAIT}; sleep 300", groups, timeout_s=1)
    pid = _escaped(tmp_path)
    try:
        assert out.timed_out
        assert not alive(pid)
    finally:
        _kill(pid)


def test_a_cancelled_workers_setsid_child_dies_too(tmp_path: Path, groups: list[int]) -> None:
    cancel = threading.Event()
    command = f"{ESCAPES['setsid']} {_AWAIT}; sleep 300"

    def cancel_once_escaped() -> None:
        _escaped(tmp_path)
        cancel.set()

    threading.Thread(target=cancel_once_escaped).start()
    out = run(tmp_path, command, groups, timeout_s=60, cancel=cancel)
    pid = _escaped(tmp_path)
    try:
        assert out.cancelled
        assert not alive(pid)
    finally:
        _kill(pid)


def test_an_unrelated_process_and_another_tasks_process_are_untouched(
    tmp_path: Path, groups: list[int]
) -> None:
    """A process with the same command that is not the task's, started before it (even a
    child of the runner in a session of its own) survives; so does the setsid child of
    another task still running, until that task ends."""
    # (`setsid sleep` started as a group leader would fork and exit: this is what it runs.)
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    # Born before the tasks' busy period: what tells it from a worker's orphan (a start
    # time within the runner's clock slack would count as born during it).
    born = system.start_time(unrelated.pid)
    assert born is not None
    wait_for(lambda: _process_clock() - born > 2 * _BORN_SLACK_S, 5, "the clock to move on")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    go = threading.Event()
    other: list[ProcessOutcome] = []
    # The other task runs until told to end (a file), so it is in flight meanwhile.
    other_cmd = f"{ESCAPES['setsid']} while [ ! -e stop ]; do sleep 0.01; done"

    def run_other() -> None:
        go.set()
        other.append(run(other_dir, other_cmd, groups, log_path=other_dir / "log"))

    thread = threading.Thread(target=run_other)
    thread.start()
    try:
        go.wait()
        other_pid = _escaped(other_dir)
        out = run(tmp_path, f"{ESCAPES['setsid']} {_AWAIT}", groups)
        mine = _escaped(tmp_path)
        assert out.returncode == 0 and not alive(mine)
        assert alive(other_pid), "another task's process was stopped at this task's end"
        assert unrelated.poll() is None, "an unrelated process was stopped"
        (other_dir / "stop").touch()
        thread.join(30)
        assert other and other[0].returncode == 0
        assert not alive(other_pid)
        assert unrelated.poll() is None
    finally:
        (other_dir / "stop").touch()
        thread.join(30)
        unrelated.kill()
        unrelated.wait()


def test_orphans_that_end_on_their_own_are_reaped(tmp_path: Path, groups: list[int]) -> None:
    """A long-lived runner (the daemon) is a subreaper: the zombies of orphans reparented
    to it must not pile up. The orphan here has exited before the task ends."""
    command = (
        "(setsid sh -c 'echo $$ > escaped' &);"
        " while [ ! -s escaped ]; do :; done;"
        ' while grep -qv "^State:.Z" /proc/$(cat escaped)/status 2>/dev/null'
        ' && ! grep -q "^State:.Z" /proc/$(cat escaped)/status; do :; done'
    )
    out = run(tmp_path, command, groups, timeout_s=30)
    pid = _escaped(tmp_path)
    assert out.returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).ppid() != os.getpid()


def test_a_task_ending_never_kills_a_worker_another_thread_is_starting(tmp_path: Path) -> None:
    # Each end-of-task sweep looks for orphans among the runner's children; a worker that a
    # second thread was starting at that moment must never count as one (it was killed at
    # birth: "killed by SIGTERM" within milliseconds, in about one run of 1,000 in three).
    outcomes: list[int | None] = []

    def many(n: int, name: str) -> None:
        for i in range(n):
            out = run_process(
                "sleep 0.01",
                cwd=tmp_path,
                env=dict(os.environ),
                stdin_path=None,
                log_path=tmp_path / f"{name}-{i}.log",
                timeout_s=60,
            )
            outcomes.append(out.returncode)

    threads = [threading.Thread(target=many, args=(200, f"t{k}")) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 600
    assert [rc for rc in outcomes if rc != 0] == []
