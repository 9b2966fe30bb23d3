"""`specexec watch`: real daemons (subprocesses, or in-process with a real observer), real
git repositories, real worker processes. Waits are on files and log lines, with deadlines."""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import init_repo, read_tasks, run_cli, task, wait_for, write_spec
from watchdog.events import FileSystemEvent
from watchdog.observers.api import BaseObserver

from specexec.daemon import Daemon, find_spec_dirs, read_refusal
from specexec.tasksfile.runlock import RunLock

PY = sys.executable


# -- helpers --------------------------------------------------------------------------


def statuses(spec_dir: Path) -> dict[str, str]:
    try:
        return {tid: t.get("status", "pending") for tid, t in read_tasks(spec_dir).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def all_pass(spec_dir: Path) -> bool:
    st = statuses(spec_dir)
    return bool(st) and all(s == "pass" for s in st.values())


def rec_task(tid: str, rec: Path, spec: str, *, sleep: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A task whose worker records its start and end time in files outside the repo."""
    start, end = (
        shlex.quote(str(rec / f"{spec}.{tid}.start")),
        shlex.quote(str(rec / f"{spec}.{tid}.end")),
    )
    cmd = f"date +%s.%N > {start}.tmp && mv {start}.tmp {start}"
    if sleep:
        cmd += f" && sleep {sleep}"
    cmd += f" && date +%s.%N > {end}"
    return task(tid, command=cmd, files=[f"out/{spec}/{tid}.txt"], **extra)


def started_at(rec: Path, spec: str, tid: str) -> float | None:
    try:
        return float((rec / f"{spec}.{tid}.start").read_text())
    except (OSError, ValueError):
        return None


def run_ids(spec_dir: Path) -> set[str]:
    path = spec_dir / ".specexec" / "events.jsonl"
    ids = set()
    for line in path.read_text().splitlines():
        rid = json.loads(line).get("run_id")
        if rid:
            ids.add(rid)
    return ids


class Watch:
    """``python -m specexec watch DIR ARGS`` as a real subprocess, its log in a file."""

    def __init__(
        self, log_path: Path, root: Path, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "specexec", "watch", str(root), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        wait_for(
            lambda: "specexec watch:" in self.text() or self.proc.poll() is not None,
            30,
            "the daemon to start",
        )
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def runs_of(self, spec: str) -> int:
        return sum(1 for line in self.text().splitlines() if f"[{spec}] run: " in line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(root: Path, *args: str, env: Mapping[str, str] | None = None) -> Watch:
        w = Watch(tmp_path / f"daemon-{len(started)}.log", root, *args, env=env)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
            try:
                w.proc.wait(30)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        print(f"--- {w.log_path.name} ---\n{w.text()}")


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(DIR watched inside a git repository, a staging folder beside it, a record folder)."""
    repo = init_repo(tmp_path / "repo")
    watched = repo / "specs"
    watched.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    rec = tmp_path / "rec"
    rec.mkdir()
    return watched, staging, rec


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    edges = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    level = peak = 0
    for _, d in edges:
        level += d
        peak = max(peak, level)
    return peak


# -- the daemon as a subprocess -----------------------------------------------------


def test_copied_moved_and_editor_saved_specs_start_on_their_file_events(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    # No full rescan during the test: only the file events of each drop can start its
    # run. (How soon after the drop is measured in bench/daemon_idle.py.)
    d = daemons(watched, "--allow-commands", "--jobs", "2", "--rescan", "3600")

    # Copied in (cp -r).
    write_spec(staging / "copied", [rec_task("T1", rec, "copied"), rec_task("T2", rec, "copied")])
    subprocess.run(["cp", "-r", str(staging / "copied"), str(watched / "copied")], check=True)
    wait_for(lambda: started_at(rec, "copied", "T1"), 60, "copied/T1")

    # Moved in (mv): a directory moved in is one event; its content must be scanned.
    write_spec(staging / "moved", [rec_task("T1", rec, "moved")])
    os.rename(staging / "moved", watched / "moved")
    wait_for(lambda: started_at(rec, "moved", "T1"), 60, "moved/T1")

    # Its own repository, moved in (spec folder = repository root).
    own = init_repo(staging / "own")
    write_spec(own, [rec_task("T1", rec, "own")])
    os.rename(own, watched / "own")
    wait_for(lambda: started_at(rec, "own", "T1"), 60, "own/T1")

    # Saved the way editors save: a new file written, then renamed over tasks.json.
    edited = write_spec(watched / "edited", [task("T0", command="true", status="pass")])
    new = json.loads((edited / "tasks.json").read_text())
    new["tasks"].append(rec_task("T1", rec, "edited"))
    swap = edited / "tasks.json.swp"
    swap.write_text(json.dumps(new, indent=2) + "\n")
    os.replace(swap, edited / "tasks.json")
    wait_for(lambda: started_at(rec, "edited", "T1"), 60, "edited/T1")

    names = ("copied", "moved", "own", "edited")
    wait_for(lambda: all(all_pass(watched / n) for n in names), 60, "the four specs to pass")
    for name in names:
        assert d.runs_of(name) == 1, d.text()
    assert "rescan every 3600s" in d.text()  # the only full scan was the one at start
    assert "rescanning" not in d.text(), d.text()
    assert d.stop() == 0
    assert "stopped" in d.text()


@pytest.mark.slow
def test_fifty_specs_share_one_job_pool(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    jobs = 3
    names = [f"s{i:02d}" for i in range(50)]
    for name in names:
        write_spec(staging / name, [rec_task("T1", rec, name, sleep=0.5)])
    d = daemons(watched, "--allow-commands", "--jobs", str(jobs))
    t0 = time.time()
    for name in names:  # dropped at once
        os.rename(staging / name, watched / name)
    wait_for(lambda: all(all_pass(watched / n) for n in names), 300, "all 50 specs to pass")
    wall = time.time() - t0
    intervals = []
    for name in names:
        start = float((rec / f"{name}.T1.start").read_text())
        end = float((rec / f"{name}.T1.end").read_text())
        intervals.append((start, end))
    peak = max_overlap(intervals)
    print(f"50 specs, --jobs {jobs}: all passed in {wall:.1f}s; max workers at once: {peak}")
    assert 2 <= peak <= jobs
    assert all(d.runs_of(n) == 1 for n in names)


def test_malformed_spec_is_reported_and_picked_up_once_fixed(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    d = daemons(watched, "--allow-commands")
    bad = watched / "bad"
    bad.mkdir()
    (bad / "tasks.json").write_text('{"version": 1, "tasks": [\n')
    cyclic = write_spec(
        watched / "cyclic",
        [
            rec_task("T1", rec, "cyclic", blocked_by=["T2"]),
            rec_task("T2", rec, "cyclic", blocked_by=["T1"]),
        ],
    )
    wait_for(lambda: f"{bad / 'tasks.json'}: not run" in d.text(), 30, "the error about bad/")
    wait_for(lambda: f"{cyclic / 'tasks.json'}: not run" in d.text(), 30, "the error about cyclic/")
    assert "T1 -> T2 -> T1" in d.text() or "T2 -> T1 -> T2" in d.text()

    # The others keep running.
    write_spec(staging / "good", [rec_task("T1", rec, "good")])
    os.rename(staging / "good", watched / "good")
    wait_for(lambda: all_pass(watched / "good"), 60, "good to pass")

    # Fixed: picked up.
    write_spec(bad, [rec_task("T1", rec, "bad")])
    write_spec(
        cyclic, [rec_task("T1", rec, "cyclic"), rec_task("T2", rec, "cyclic", blocked_by=["T1"])]
    )
    wait_for(lambda: all_pass(bad) and all_pass(cyclic), 60, "the fixed specs to pass")
    assert d.proc.poll() is None


def test_own_writes_trigger_no_extra_run(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    d = daemons(watched, "--allow-commands", "--jobs", "2")
    tasks = [rec_task("A", rec, "w"), rec_task("B", rec, "w")]
    tasks += [rec_task(f"C{i}", rec, "w", blocked_by=["A", "B"]) for i in range(4)]
    tasks += [rec_task("D", rec, "w", blocked_by=[f"C{i}" for i in range(4)])]
    spec = write_spec(staging / "w", tasks)
    os.rename(spec, watched / "w")
    wait_for(lambda: all_pass(watched / "w"), 90, "w to pass")

    # A hand edit that adds nothing to run: no run either.
    doc = json.loads((watched / "w" / "tasks.json").read_text())
    doc["note"] = "reviewed"
    (watched / "w" / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")

    # Any run the writes of w's run (or the edit) would cause is started before the
    # sentinel spec dropped after them has passed (it waits behind the same debounce).
    write_spec(staging / "sentinel", [rec_task("T1", rec, "sentinel")])
    os.rename(staging / "sentinel", watched / "sentinel")
    wait_for(lambda: all_pass(watched / "sentinel"), 60, "the sentinel to pass")

    assert d.runs_of("w") == 1, d.text()
    assert len(run_ids(watched / "w")) == 1


@pytest.mark.slow
def test_sigterm_leaves_running_tasks_pending_and_a_restart_completes_them(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    marker, pidfile = rec / "long.ran-once", rec / "long.pid"
    release = rec / "short.release"
    # "long" never ends by itself the first time (only the daemon can stop it); "short"
    # ends once the test releases it, after the SIGTERM, within the grace period; "after"
    # depends on "short" and must not start once the daemon is stopping.
    long_cmd = (
        f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; echo $$ > {pidfile}; exec sleep 600"
    )
    short_start, short_end = rec / "g.short.start", rec / "g.short.end"
    short_cmd = (
        f"date +%s.%N > {short_start}.tmp && mv {short_start}.tmp {short_start} && "
        f"i=0; while [ ! -e {release} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; "
        f"date +%s.%N > {short_end}"
    )
    spec = write_spec(
        staging / "g",
        [
            task("long", command=long_cmd, files=["long.txt"]),
            task("short", command=short_cmd, files=["out/g/short.txt"]),
            rec_task("after", rec, "g", blocked_by=["short"]),
        ],
    )
    d = daemons(watched, "--allow-commands", "--grace", "3")
    os.rename(spec, watched / "g")
    g = watched / "g"
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "long to start")
    wait_for(lambda: started_at(rec, "g", "short"), 30, "short to start")
    worker_pid = int(pidfile.read_text())
    d.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping: no new task starts" in d.text(), 30, "the daemon to stop")
    assert "1 running spec(s) get 3s to finish" in d.text(), d.text()
    release.touch()  # "short" finishes during the grace period
    # "long" would keep the daemon for 10 minutes: it exits only if it stopped "long" once
    # the grace period was over (a safety net of a minute, not a speed limit).
    code = d.proc.wait(60)
    assert d.stop() == code == 0
    st = statuses(g)
    assert st == {"long": "pending", "short": "pass", "after": "pending"}, st
    assert (
        not psutil.pid_exists(worker_pid)
        or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
    )
    text = d.text()
    assert text.index("stopping: no new task starts") < text.index("grace period over"), text
    assert not (rec / "g.after.start").exists()

    d2 = daemons(watched, "--allow-commands")
    wait_for(lambda: all_pass(g), 60, "the restarted daemon to complete g")
    assert d2.runs_of("g") == 1


def test_refuses_group_writable_spec_folder_until_fixed(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    spec = write_spec(staging / "open", [rec_task("T1", rec, "open")])
    os.chmod(spec, 0o775)
    d = daemons(watched, "--allow-commands")
    os.rename(spec, watched / "open")
    spec = watched / "open"
    wait_for(lambda: f"{spec}: refused" in d.text(), 30, "the refusal")
    assert "writable by group or others" in d.text()
    out = run_cli("status", str(spec))
    assert "refused by specexec watch" in out.stdout and "writable by group" in out.stdout
    assert statuses(spec) == {"T1": "pending"}

    os.chmod(spec, 0o755)  # fixed
    wait_for(lambda: all_pass(spec), 60, "open to run once fixed")
    assert read_refusal(spec) is None
    assert "refused" not in run_cli("status", str(spec)).stdout


def test_refuses_shell_commands_without_allow_commands(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    fake = Path(__file__).parent / "fake_agents"
    path = f"{fake}{os.pathsep}{os.path.dirname(PY)}{os.pathsep}{os.environ['PATH']}"
    d = daemons(watched, env={"SPECEXEC_WATCH_RESCAN": "1", "PATH": path})
    spec = write_spec(staging / "sh", [rec_task("T1", rec, "sh")])
    os.rename(spec, watched / "sh")
    spec = watched / "sh"
    wait_for(lambda: f"{spec}: refused" in d.text(), 30, "the refusal")
    assert "--allow-commands" in d.text()
    assert "[sh] run" not in d.text(), "a refused folder is not logged as a run"
    # An agent preset may always run (here the fake `claude` CLI of the tests).
    agent = write_spec(staging / "agent", [task("T1", files=["src/"])], worker="claude")
    os.rename(agent, watched / "agent")
    wait_for(lambda: all_pass(watched / "agent"), 60, "the agent spec to pass")
    out = run_cli("status", str(spec))
    assert "refused by specexec watch" in out.stdout and "--allow-commands" in out.stdout
    assert started_at(rec, "sh", "T1") is None

    # The repository allows it: the periodic rescan picks that up.
    (watched.parent / "pyproject.toml").write_text("[tool.specexec]\nallow_commands = true\n")
    wait_for(lambda: all_pass(spec), 60, "sh to run once allowed")


def test_busy_spec_is_skipped_and_run_when_free(
    layout: tuple[Path, Path, Path], daemons: Callable[..., Watch]
) -> None:
    watched, staging, rec = layout
    spec = write_spec(staging / "busy", [rec_task("T1", rec, "busy")])
    d = daemons(watched, "--allow-commands", "--polling")
    with RunLock(spec):  # as a `specexec run` would hold it
        os.rename(spec, watched / "busy")
        wait_for(lambda: "[busy] busy: being run by pid" in d.text(), 30, "the busy note")
        assert started_at(rec, "busy", "T1") is None
    wait_for(lambda: all_pass(watched / "busy"), 60, "busy to run once free")


# -- the daemon in-process, with real observers ---------------------------------------


class InProcess:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.code: int | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        wait_for(lambda: daemon.observer is not None, 30, "the observer")

    def _serve(self) -> None:
        self.code = self.daemon.serve()

    def stop(self) -> int | None:
        self.daemon.request_stop()
        self.thread.join(60)
        return self.code


@pytest.fixture
def in_process() -> Iterator[Callable[..., InProcess]]:
    made: list[InProcess] = []

    def make(root: Path, **kw: Any) -> InProcess:
        kw.setdefault("allow_commands", True)
        kw.setdefault("rescan_s", 3600.0)  # no safety net: events alone must do it
        ip = InProcess(Daemon(root, **kw))
        made.append(ip)
        return ip

    yield make
    for ip in made:
        ip.stop()


def test_handler_error_does_not_stop_later_events(
    layout: tuple[Path, Path, Path],
    in_process: Callable[..., InProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    watched, _, rec = layout
    caplog.set_level(logging.INFO, logger="specexec.daemon")
    ip = in_process(watched)
    d = ip.daemon
    real = d.handler.on_event

    def flaky(event: FileSystemEvent) -> None:
        if "boom" in os.fsdecode(event.src_path) + os.fsdecode(getattr(event, "dest_path", "")):
            raise RuntimeError("handler bug")
        real(event)

    d.handler.on_event = flaky
    write_spec(watched / "boom", [rec_task("T1", rec, "boom")])
    wait_for(lambda: d.handler.errors > 0, 30, "the handler to fail")
    write_spec(watched / "ok", [rec_task("T1", rec, "ok")])
    wait_for(lambda: all_pass(watched / "ok"), 60, "ok to pass after the handler error")
    assert "error while handling" in caplog.text and "handler bug" in caplog.text
    assert statuses(watched / "boom") == {"T1": "pending"}  # its events all failed

    # The observer itself dies: it is restarted (and everything rescanned).
    d.handler.on_event = real
    assert d.observer is not None
    d.observer.stop()
    wait_for(lambda: d.observer_restarts == 1 and d.observer_healthy(), 30, "the restart")
    assert "restarting it" in caplog.text
    wait_for(lambda: all_pass(watched / "boom"), 60, "boom, found by the rescan after the restart")
    write_spec(watched / "later", [rec_task("T1", rec, "later")])
    wait_for(lambda: all_pass(watched / "later"), 60, "an event after the restart")
    assert ip.stop() == 0


def test_falls_back_to_polling_when_native_events_fail(
    layout: tuple[Path, Path, Path],
    in_process: Callable[..., InProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    watched, staging, rec = layout
    caplog.set_level(logging.INFO, logger="specexec.daemon")

    def no_inotify() -> BaseObserver:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    ip = in_process(watched, native_observer=no_inotify, poll_interval_s=0.3)
    assert ip.daemon.polling
    assert "polling every 0.3s instead" in caplog.text
    write_spec(staging / "p", [rec_task("T1", rec, "p")])
    os.rename(staging / "p", watched / "p")
    edited = write_spec(watched / "q", [rec_task("T1", rec, "q")])
    wait_for(lambda: all_pass(watched / "p") and all_pass(edited), 60, "p and q to pass")
    # Hidden folders are not even looked at by the poller.
    hidden = write_spec(watched / ".hidden", [rec_task("T1", rec, "hidden")])
    write_spec(staging / "r", [rec_task("T1", rec, "r")])
    os.rename(staging / "r", watched / "r")
    wait_for(lambda: all_pass(watched / "r"), 60, "r to pass")
    assert statuses(hidden) == {"T1": "pending"}


def test_find_spec_dirs_skips_hidden_and_runtime_folders(tmp_path: Path) -> None:
    write_spec(tmp_path / "a", [task("T1")])
    write_spec(tmp_path / "team" / "b", [task("T1")])
    write_spec(tmp_path / ".git" / "x", [task("T1")])
    write_spec(tmp_path / "a" / ".specexec" / "y", [task("T1")])
    assert find_spec_dirs(tmp_path) == [tmp_path / "a", tmp_path / "team" / "b"]
