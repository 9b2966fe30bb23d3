"""Run one worker process: own process group, output to a log file, timeout, cancel, cleanup.

Guarantees (DESIGN §3.3-3.4):

- stdout and stderr go straight to the log's file descriptor: no pipe is read in Python, so
  a worker printing gigabytes can neither deadlock the runner nor grow its memory.
- The log is created mode 0600 (agent output may contain secrets) and appended to across
  attempts; each attempt starts with a header line beginning with ``ATTEMPT_HEADER`` so that
  result parsing looks only at the latest attempt.
- The worker runs in its own session/process group. On timeout or cancel the whole group
  gets SIGTERM, then SIGKILL after ``grace_s``. After the leader exits on its own, anything
  left in its group (``cmd &``) is stopped the same way. A process that calls ``setsid``
  itself leaves the group and is out of reach (that would need cgroups).
- If the runner itself is SIGKILLed, nothing in-process can clean up. Every live worker
  is recorded in a registry directory (pgid + leader start time), and two safety nets read
  it: a small guardian process (one per runner) stops the recorded groups as soon as the
  runner is gone, and ``sweep_orphans`` does the same at the next start. (No
  PR_SET_PDEATHSIG: any preexec_fn makes CPython fork the whole interpreter instead of
  vfork, which made every worker start several times slower.)

Zombies count as dead everywhere here: a container's PID 1 may never reap orphans.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from specexec import system
from specexec.errors import SpecexecError
from specexec.git.env import clean_env
from specexec.tasksfile.store import private_dir

log = logging.getLogger(__name__)

# Every attempt's first log line starts with this (results.py splits the log on it).
ATTEMPT_HEADER = "=== specexec attempt"
# The line written after the attempt ended (results.py ignores lines starting with it).
ATTEMPT_FOOTER = "=== specexec end:"

ENV_PREFIX = "SPECEXEC_"
# worker_env() keyword -> variable (DESIGN §3.3).
ENV_VARS = {
    "task_id": "SPECEXEC_TASK_ID",
    "spec_dir": "SPECEXEC_SPEC_DIR",
    "worktree": "SPECEXEC_WORKTREE",
    "prompt_file": "SPECEXEC_PROMPT_FILE",
    "result_file": "SPECEXEC_RESULT_FILE",
    "run_id": "SPECEXEC_RUN_ID",
    "attempt": "SPECEXEC_ATTEMPT",
}

# How often a cancel event is looked at while the worker runs (Popen.wait in slices).
_CANCEL_SLICE_S = 0.1
# A worker still running after this long is recorded in the registry (see run_process).
_REGISTER_AFTER_S = 0.05
# How often a group of processes we cannot wait() for is checked while it dies.
_GROUP_POLL_S = 0.02
# After SIGKILL, how long to wait for the kernel to finish the job before giving up.
_KILL_WAIT_S = 5.0
# How much of the command the attempt header shows.
_HEADER_COMMAND_MAX = 500


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    """What happened to one worker process.

    ``returncode`` is None when the process could not be started (``start_error`` says
    why) or could not be reaped; negative means killed by that signal number.
    """

    returncode: int | None
    timed_out: bool
    cancelled: bool
    duration_s: float
    pid: int  # 0 when the process never started
    start_error: str | None


def worker_env(base: Mapping[str, str] | None = None, **specexec_vars: object) -> dict[str, str]:
    """The environment of a worker: ``base`` (default os.environ) without git's
    repository-local variables and without inherited SPECEXEC_* (a nested specexec must not
    see its parent's result file), plus SPECEXEC_TASK_ID, _SPEC_DIR, _WORKTREE,
    _PROMPT_FILE, _RESULT_FILE, _RUN_ID, _ATTEMPT from the keywords (task_id=..., ...).
    None values are left out.
    """
    env = {k: v for k, v in clean_env(base).items() if not k.startswith(ENV_PREFIX)}
    for key, value in specexec_vars.items():
        name = ENV_VARS.get(key)
        if name is None:
            known = ", ".join(ENV_VARS)
            raise TypeError(f"worker_env: unknown variable {key!r} (known: {known})")
        if value is not None:
            env[name] = str(value)
    return env


# --------------------------------------------------------------------------- groups


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are not zombies."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # someone else's process is in it: look closer
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                continue
        except (ProcessLookupError, psutil.Error):
            continue
        members.append(pid)
    return members


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Poll (with a deadline) until no live process is left in the group."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        if not live_group_members(pgid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(_GROUP_POLL_S, remaining))


def _stop_group(proc: subprocess.Popen[bytes] | None, pgid: int, grace_s: float) -> None:
    """SIGTERM the group, wait up to ``grace_s`` for all of it, then SIGKILL it."""
    deadline = time.monotonic() + max(0.0, grace_s)
    _killpg(pgid, signal.SIGTERM)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, grace_s))
    if _wait_group_gone(pgid, deadline - time.monotonic()):
        return
    _killpg(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_KILL_WAIT_S)
    _wait_group_gone(pgid, _KILL_WAIT_S)


# --------------------------------------------------------------------------- registry


def _same_process(pid: int, create_time: float) -> bool:
    """True when ``pid`` is alive (not a zombie) and started at ``create_time``."""
    return system.ProcessId(pid, create_time, system.ProcessId.current().host).alive() is True


_checked_registries: set[Path] = set()


def _register(registry_dir: Path, pid: int, command: str) -> Path | None:
    """Record a live worker group; best effort (a failure must not fail the task)."""
    create_time = system.start_time(pid)
    if create_time is None:
        return None  # already gone: nothing to sweep later
    runner = system.ProcessId.current()
    record = {
        "pgid": pid,
        "pid": pid,
        "create_time": create_time,
        "runner_pid": runner.pid,
        "runner_create_time": runner.start_time,
        "command": command,
    }
    path = registry_dir / f"{pid}.json"
    try:
        if registry_dir not in _checked_registries:
            registry_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private_dir(registry_dir)  # never write records through a planted link
            _checked_registries.add(registry_dir)
        # Not durable: after a power loss no worker is left to sweep.
        system.atomic_write(path, json.dumps(record), mode=0o600, durable=False)
    except (OSError, SpecexecError):
        _checked_registries.discard(registry_dir)  # removed meanwhile: check it again
        return None
    return path


# --------------------------------------------------------------------------- guardian

# The guardian's program: it reads registry folders, one per line, until EOF. EOF comes
# when the runner has exited or was killed (only the runner holds the pipe's write end);
# once the runner is gone it stops the groups still recorded there. Nothing is imported
# until then: an idle guardian costs one small process.
_GUARDIAN = """
import os, sys
runner = int(sys.argv[1])
try:
    # Asked of the runner's pid, not of getppid(): the runner may already be gone.
    pidfd = os.pidfd_open(runner) if os.getppid() == runner else None
except (AttributeError, OSError):
    pidfd = None
dirs = [os.fsdecode(line.rstrip(b"\\n")) for line in sys.stdin.buffer]
if any(name.endswith(".json") for d in dirs if os.path.isdir(d) for name in os.listdir(d)):
    import select, time
    if pidfd is not None:
        select.select([pidfd], [], [], 10.0)  # readable once the runner has exited
    else:
        deadline = time.monotonic() + 10.0
        while os.getppid() == runner and time.monotonic() < deadline:
            time.sleep(0.02)
    sys.path.insert(0, {package_root!r})
    from pathlib import Path
    from specexec.run.processes import sweep_orphans
    for d in dirs:
        sweep_orphans(Path(d))
"""


class _Guardian:
    """One guardian process per runner process, told about each registry folder."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner = 0  # the pid that started ``proc``: a forked child needs its own
        self.proc: subprocess.Popen[bytes] | None = None
        self.dirs: list[Path] = []  # every folder it was told about, in order

    def watch(self, registry_dir: Path) -> None:
        with self.lock:
            try:
                if self.proc is None or self.owner != os.getpid() or self.proc.poll() is not None:
                    # (Re)started: a new guardian must hear of every folder again.
                    if self.owner != os.getpid():
                        self.dirs = []
                    self._start()
                    self._send(self.dirs)
                if registry_dir not in self.dirs:
                    self._send([registry_dir])
                    self.dirs.append(registry_dir)
            except OSError as e:
                # Best effort: the registry and the next run's sweeps still cover it.
                log.warning("worker guardian unavailable: %s", e)

    def _send(self, dirs: list[Path]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        if dirs:
            self.proc.stdin.write(b"".join(os.fsencode(d) + b"\n" for d in dirs))
            self.proc.stdin.flush()

    def _start(self) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)
        self.owner = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _GUARDIAN.format(package_root=package_root), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
            # Its own session: Ctrl-C or a hangup aimed at the runner's group spares it.
            start_new_session=True,
            close_fds=True,
        )

    @property
    def pid(self) -> int | None:
        with self.lock:
            return self.proc.pid if self.proc is not None and self.owner == os.getpid() else None


_guardian = _Guardian()


def guard(registry_dir: Path) -> None:
    """Have the guardian stop the worker groups recorded in ``registry_dir`` as soon as
    this process dies (a SIGKILLed runner cannot clean up after itself)."""
    _guardian.watch(registry_dir)


def guardian_pid() -> int | None:
    """The pid of this process's guardian (None before the first worker started)."""
    return _guardian.pid


def sweep_orphans(registry_dir: Path, *, grace_s: float = 2.0) -> list[int]:
    """Kill worker groups left behind by a runner that died without cleaning up.

    A record is acted on only when its runner is gone (or is a different process with the
    same pid) and the group is provably the recorded one: the leader is still the same
    process (same start time, zombie or not), or, if the leader was reaped, the live
    members all started after it. Returns the pgids that were signalled. Records of groups
    that are gone are removed; records of a live runner are left alone.
    """
    killed: list[int] = []
    if registry_dir.is_symlink():  # planted: never read through it (recording refuses it)
        return killed
    try:
        entries = sorted(registry_dir.glob("*.json"))
    except OSError:
        return killed
    for path in entries:
        try:
            rec = json.loads(path.read_text())
            pgid = int(rec["pgid"])
            leader_time = float(rec["create_time"])
            runner_pid = int(rec["runner_pid"])
            runner_time = float(rec["runner_create_time"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _same_process(runner_pid, runner_time):
            continue  # its runner is alive and looks after it
        # A record is only a hint: the folder may have been dropped by someone else, so
        # a group is stopped only if its processes carry this spec folder's environment.
        spec_dir = registry_dir.parent.parent
        if pgid > 1 and _is_recorded_group(pgid, leader_time) and _group_of_spec(pgid, spec_dir):
            _stop_group(None, pgid, grace_s)
            killed.append(pgid)
        path.unlink(missing_ok=True)
    return killed


def sweep_spec_orphans(spec_dir: Path, *, grace_s: float = 2.0) -> list[int]:
    """Kill worker groups of ``spec_dir`` that no registry record names.

    A runner killed between starting a worker and recording it leaves a group the
    registry does not know. Every worker (and its children) inherits SPECEXEC_SPEC_DIR,
    so the caller, holding the spec's run lock (no live run owns a worker of it), stops
    the groups whose processes carry it. Only the user's own processes are looked at.
    """
    target = str(spec_dir)
    me = os.getpid()
    uid = os.getuid()
    groups: set[int] = set()
    for proc in psutil.process_iter(["pid", "uids"]):
        try:
            if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if proc.environ().get("SPECEXEC_SPEC_DIR") == target:
                groups.add(os.getpgid(proc.pid))
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    groups.discard(os.getpgid(0))
    for pgid in sorted(groups):
        _stop_group(None, pgid, grace_s)
    return sorted(groups)


def _group_of_spec(pgid: int, spec_dir: Path) -> bool:
    """Does a live member of the group carry SPECEXEC_SPEC_DIR == ``spec_dir``?"""
    target = {str(spec_dir), str(spec_dir.absolute())}
    for pid in live_group_members(pgid):
        try:
            if psutil.Process(pid).environ().get("SPECEXEC_SPEC_DIR") in target:
                return True
        except psutil.Error:
            continue
    return False


def _is_recorded_group(pgid: int, leader_time: float) -> bool:
    members = live_group_members(pgid)
    if not members:
        return False
    slack = system.START_TIME_SLACK_S
    leader = system.start_time(pgid, zombie=True)
    if leader is not None:
        # The leader (possibly an unreaped zombie) still exists: it must be the same one.
        return abs(leader - leader_time) <= slack
    # Leader reaped; while any member lives the pgid cannot have been reused, but check
    # that every member is younger than the recorded leader anyway.
    for pid in members:
        started = system.start_time(pid)
        if started is not None and started + slack < leader_time:
            return False
    return True


# --------------------------------------------------------------------------- run


def _describe(command: Sequence[str] | str) -> str:
    return command if isinstance(command, str) else shlex.join(command)


@functools.cache
def _shell() -> str:
    # Found once: exec would otherwise try every PATH entry before sh's for each worker.
    return shutil.which("sh") or "sh"


def _open_log(log_path: Path) -> int:
    if not log_path.parent.is_dir():
        log_path.parent.mkdir(parents=True, exist_ok=True)
    # Readable too: the footer checks whether the worker's output ended its last line.
    fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    # A log that existed with wider permissions (or a umask-less create) is narrowed.
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)
    return fd


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "replace")
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _footer(fd: int, text: str) -> None:
    """specexec's end line, always on a line of its own: output that did not end with a
    newline (a result JSON printed with printf) must not run into it."""
    size = os.fstat(fd).st_size
    lead = "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
    _write(fd, f"{lead}{ATTEMPT_FOOTER} {text} ===\n")


def _header(fd: int, command: Sequence[str] | str, cwd: Path, env: Mapping[str, str]) -> None:
    start = "\n" if os.fstat(fd).st_size > 0 else ""
    now = system.utc_iso()
    attempt = env.get("SPECEXEC_ATTEMPT", "?")
    # One line, always: results.py takes everything after the header line as output.
    shown = _describe(command).replace("\r", "\\r").replace("\n", "\\n")
    if len(shown) > _HEADER_COMMAND_MAX:
        shown = shown[: _HEADER_COMMAND_MAX - 1] + "…"
    _write(fd, f"{start}{ATTEMPT_HEADER} {attempt} {now} in {cwd}: {shown} ===\n")


def _start_error(exc: OSError, program: str, cwd: Path) -> str:
    if not cwd.is_dir():
        return f"cannot start {program!r}: working directory {cwd} does not exist"
    if isinstance(exc, FileNotFoundError):
        return f"cannot start {program!r}: command not found (is it installed and on PATH?)"
    if isinstance(exc, PermissionError):
        return f"cannot start {program!r}: permission denied (is it executable?)"
    return f"cannot start {program!r}: {exc.strerror or exc}"


def run_process(
    command: Sequence[str] | str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdin_path: Path | None,
    log_path: Path,
    timeout_s: float | None,
    grace_s: float = 5.0,
    cancel: threading.Event | None = None,
    on_start: Callable[[int], None] | None = None,
    registry_dir: Path | None = None,
) -> ProcessOutcome:
    """Run ``command`` (argv, or a string for ``sh -c``) and wait for it and its group.

    stdin is ``stdin_path`` (else /dev/null). Never raises for a command that cannot be
    started: ``start_error`` says why. An exception in the calling thread (Ctrl-C) stops
    the group before it propagates. ``on_start(pid)`` is called once the process runs
    (with ``registry_dir``: once it is recorded, or has already ended).
    """
    argv: list[str] = [_shell(), "-c", command] if isinstance(command, str) else list(command)
    if not argv:
        return ProcessOutcome(None, False, False, 0.0, 0, "empty command")
    if cancel is not None and cancel.is_set():
        return ProcessOutcome(None, False, True, 0.0, 0, None)
    log_fd = _open_log(log_path)
    stdin: Any = subprocess.DEVNULL
    registered: Path | None = None
    began = time.monotonic()
    try:
        _header(log_fd, command, cwd, env)
        try:
            if stdin_path is not None:
                stdin = open(stdin_path, "rb")  # noqa: SIM115 - closed in finally
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=stdin,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            if stdin_path is not None and stdin is subprocess.DEVNULL:
                message = f"cannot read the prompt file {stdin_path}: {exc.strerror or exc}"
            else:
                message = _start_error(exc, argv[0], cwd)
            _footer(log_fd, message)
            return ProcessOutcome(None, False, False, time.monotonic() - began, 0, message)
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        deadline = None if timeout_s is None else began + max(0.0, timeout_s)
        pidfd = _pidfd(proc.pid)
        try:
            timed_out = cancelled = False
            if registry_dir is not None:
                # Recorded only if still running after a moment: most short workers are
                # done by then, and reading a process's start time while it is still
                # in exec() blocks for about a millisecond. A runner killed within that
                # moment leaves the group to the next run's sweep_spec_orphans.
                soon = time.monotonic() + _REGISTER_AFTER_S
                early = soon if deadline is None else min(soon, deadline)
                timed_out, cancelled = _wait(proc, pidfd, early, cancel)
                if timed_out and not cancelled:
                    registered = _register(registry_dir, proc.pid, _describe(command))
                    guard(registry_dir)
                    timed_out = False
            if on_start is not None:
                on_start(proc.pid)
            if proc.returncode is None and not cancelled:
                timed_out, cancelled = _wait(proc, pidfd, deadline, cancel)
            if timed_out or cancelled:
                _stop_group(proc, pgid, grace_s)
            elif live_group_members(pgid):
                # The leader is done; whatever it left running in its group goes too.
                _stop_group(None, pgid, grace_s)
        except BaseException:
            _stop_group(proc, pgid, min(grace_s, 1.0))
            raise
        finally:
            if pidfd is not None:
                os.close(pidfd)
        duration = time.monotonic() - began
        rc = proc.returncode
        why = "timed out" if timed_out else "cancelled" if cancelled else f"exit {rc}"
        _footer(log_fd, f"{why} after {duration:.2f}s")
        return ProcessOutcome(rc, timed_out, cancelled, duration, proc.pid, None)
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()
        os.close(log_fd)
        if registered is not None:
            registered.unlink(missing_ok=True)


def _wait(
    proc: subprocess.Popen[bytes],
    pidfd: int | None,
    deadline: float | None,
    cancel: threading.Event | None,
) -> tuple[bool, bool]:
    """Block until the leader exits, ``deadline`` (monotonic) passes or ``cancel`` is
    set; returns (timed_out, cancelled).

    A pidfd wakes us the moment the leader exits (Popen.wait(timeout) polls with growing
    sleeps, adding up to milliseconds to every short task); the cancel event is looked
    at every _CANCEL_SLICE_S.
    """
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return True, False
        step = remaining
        if cancel is not None:
            step = _CANCEL_SLICE_S if remaining is None else min(_CANCEL_SLICE_S, remaining)
        if pidfd is not None:
            if select.select([pidfd], [], [], step)[0]:
                proc.wait()
                return False, False
        else:
            try:
                proc.wait(timeout=step)
                return False, False
            except subprocess.TimeoutExpired:
                pass
        if cancel is not None and cancel.is_set():
            return False, True


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3
        return None
