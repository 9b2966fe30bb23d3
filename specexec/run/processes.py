"""Run one worker process: own process group, output to a log file, timeout, cancel, cleanup.

Guarantees (DESIGN §3.3-3.4):

- stdout and stderr go straight to the log's file descriptor: no pipe is read in Python, so
  a worker printing gigabytes can neither deadlock the runner nor grow its memory.
- The log is created mode 0600 (agent output may contain secrets) and appended to across
  attempts; each attempt starts with a header line beginning with ``ATTEMPT_HEADER`` so that
  result parsing looks only at the latest attempt.
- The worker runs in its own session/process group. On timeout or cancel the whole group
  gets SIGTERM, then SIGKILL after ``grace_s``. After the leader exits on its own, anything
  left in its group (``cmd &``) is stopped the same way.
- No process of a worker outlives its attempt, even one that left the group (setsid,
  double fork, setpgid, nohup): the runner is a child subreaper (Linux), so orphans are
  reparented to it, and every attempt's processes carry a marker of their own
  (MARKER_VAR) in their environment. At every end (exit, timeout, cancel, an exception)
  the orphans with the attempt's marker, and all their descendants, get SIGTERM, then
  SIGKILL; their zombies are reaped here. Orphans no running attempt can own (a cleared
  environment, a forged marker) are stopped when no attempt is in flight. Out of reach:
  a process another service starts for the worker (systemd-run, at), which would need
  cgroups.
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
import ctypes
import errno
import functools
import json
import logging
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
        with _state_lock:
            self.proc = self._popen(package_root)
            _own_sessions.add(self.proc.pid)

    def _popen(self, package_root: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
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


# --------------------------------------------------------------------------- task sweep

# Every process of one attempt carries this variable with a value unique to the attempt:
# it survives setsid, double forks, nohup and setpgid (a process keeps the environment it
# was started with), so the attempt's end finds them all, wherever they were reparented.
MARKER_VAR = "SPECEXEC_MARKER"
# The runner's own children (git, the guardian) inherit this one instead; a child of the
# runner that has neither is an orphan no one else owns (see _task_orphans).
RUNNER_VAR = "SPECEXEC_RUNNER"
_PR_SET_CHILD_SUBREAPER = 36

# Pids the runner started in a session of their own (workers, the guardian): a zombie
# child in another session that is not one of these is an orphan nobody else will reap.
_own_sessions: set[int] = set()
_in_flight = 0  # attempts between start and sweep in this process
_live_markers: set[str] = set()  # their markers
# When _in_flight last went from 0 to 1 (_process_clock), in a list to be set in place.
_busy_since = [0.0]
# Process start times are in clock ticks: a process born just before a reading.
_BORN_SLACK_S = 0.05
_state_lock = threading.Lock()


def _subreaper() -> bool:
    return become_subreaper.cache_info().currsize > 0 and become_subreaper()


@functools.cache
def become_subreaper() -> bool:
    """Make this process the child subreaper of everything it starts (Linux): a worker's
    orphans (double fork, setsid + exit) are reparented to it instead of to init, so they
    stay findable and their zombies are reaped here (reap_orphans). Also marks the runner's
    own environment (RUNNER_VAR) so that its legitimate children can be told apart."""
    os.environ[RUNNER_VAR] = f"{os.getpid()}-{os.urandom(6).hex()}"
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _process_clock() -> float:
    """Now, on the clock of process start times (psutil's: boot time + time since boot;
    time.time() can differ from it by up to a second)."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        # system's boot time is psutil's (btime of /proc/stat), read once per process.
        return system._boot_time() + time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time()


def new_marker() -> str:
    return f"{os.getpid()}-{os.urandom(8).hex()}"


def _environ(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def _settled_environ(pid: int) -> bytes | None:
    """``_environ``, waiting a moment while it reads empty: a process in the middle of
    execve shows no environment until the new image is set up (a worker's escaped child
    that had just written its pid and was exec'ing `sleep` would look unmarked)."""
    env = _environ(pid)
    for _ in range(40):
        if env != b"" or not _alive(pid):
            break
        time.sleep(0.005)
        env = _environ(pid)
    return env


def _user_pids() -> list[int]:
    """Pids of this user's processes other than this one (cheap: one stat per pid)."""
    me, uid = os.getpid(), os.getuid()
    pids = []
    if os.path.isdir("/proc/self"):
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                continue
        return pids
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if proc.pid != me and uids is not None and uids.real == uid:
            pids.append(proc.pid)
    return pids


def marked_processes(marker: str) -> list[int]:
    """Live processes of this user whose environment carries MARKER_VAR=``marker`` (a
    scan of every process: the fallback where the runner cannot be a subreaper)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for pid in _user_pids():
        env = _environ(pid)
        if env is not None and needle in env.split(b"\0"):
            found.append(pid)
    return found


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, zombies included (Linux: the kernel's own lists, one
    small read per thread instead of a scan of every process)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    out: list[int] = []
    for tid in tids:
        # os.open/os.read: a buffered open() adds four system calls per file, and this runs
        # at the end of every task, for every thread of the runner.
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
            out.extend(int(x) for x in data.split())
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    if not tids:
        with contextlib.suppress(psutil.Error):
            out = [p.pid for p in psutil.Process(pid).children()]
    return out


def _descendants(pids: Sequence[int]) -> set[int]:
    out: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(_children(pid))
    return out


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _orphans() -> tuple[list[int], set[str]]:
    """Children of this runner it did not start itself: reparented to it as subreaper
    (its own git commands are in its session; its workers and guardian are recorded),
    and the markers of the attempts in flight at that moment.

    One snapshot under the lock that workers are started under: a worker started just
    after the list was read would otherwise be an unrecorded child, mistaken for an
    orphan and killed at birth."""
    own_sid = _session(0)
    with _state_lock:
        own = set(_own_sessions)
        live = set(_live_markers)
        children = _children(os.getpid())
    return [c for c in children if c not in own and _session(c) not in (None, own_sid)], live


def _task_orphans(marker: str, cleared_since: float | None) -> tuple[list[int], bool]:
    """The orphans of the attempt with ``marker``; with ``cleared_since`` (the start of a
    busy period that ends now: no other attempt in flight) also the orphans born since
    then that no running attempt and not the runner can own: environment cleared, or a
    marker forged or of an attempt that has ended. Only a worker can have left those.
    Also whether there was any orphan at all (zombies included)."""
    own = os.environ.get(RUNNER_VAR, "")
    found: list[int] = []
    orphans, live = _orphans()
    if not orphans:  # the usual end of a task: nothing was reparented here
        return found, False
    try:
        exe = os.readlink("/proc/self/exe")
    except OSError:
        exe = None
    for pid in orphans:
        env = _settled_environ(pid)
        if env is None:
            continue  # a zombie (reaped below) or gone
        values = dict(item.partition(b"=")[::2] for item in env.split(b"\0") if item)
        theirs = values.get(MARKER_VAR.encode(), b"").decode(errors="replace")
        if theirs == marker:
            found.append(pid)
        elif cleared_since is None or theirs in live:
            continue  # another running attempt's, or not attributable yet
        elif own and values.get(RUNNER_VAR.encode()) == own.encode():
            continue  # the runner's own (a detached git gc)
        else:
            born = system.start_time(pid)
            with contextlib.suppress(OSError):
                # Same exe as ours: forked by this runner and not yet exec'd.
                if (
                    born is not None
                    and born >= cleared_since
                    and os.readlink(f"/proc/{pid}/exe") != exe
                ):
                    found.append(pid)
    return found, True


def _alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.Error:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop_all(pids: set[int], grace_s: float) -> set[int]:
    """SIGTERM the processes and all their descendants, SIGKILL what is left after
    ``grace_s``, reap what was reparented here. Returns every pid signalled."""
    # Stopped first, so none of them forks more while the tree is collected.
    _signal_all(sorted(pids), signal.SIGSTOP)
    pids = _descendants(sorted(pids))
    _signal_all(sorted(pids), signal.SIGSTOP)
    _signal_all(sorted(pids), signal.SIGTERM)
    _signal_all(sorted(pids), signal.SIGCONT)
    deadline = time.monotonic() + max(0.0, grace_s)
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        reap_orphans()
        time.sleep(_GROUP_POLL_S)
    left = [p for p in pids if _alive(p)]
    if left:
        _signal_all(left, signal.SIGKILL)
        deadline = time.monotonic() + _KILL_WAIT_S
        while any(_alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(_GROUP_POLL_S)
    reap_orphans()
    return pids


def reap_orphans() -> list[int]:
    """Reap the zombies of orphans reparented to this subreaper. Never a child this
    process started (a Popen, git's included, must get its own exit status)."""
    reaped = []
    for child in _orphans()[0]:
        with _state_lock:
            if child in _own_sessions:
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                if not _alive(child) and os.waitpid(child, os.WNOHANG)[0] == child:
                    reaped.append(child)
    return reaped


def sweep_task(marker: str, *, grace_s: float, cleared_since: float | None = None) -> list[int]:
    """Stop every process the attempt with ``marker`` left behind, wherever it went
    (setsid, double fork, setpgid), with all its descendants, and reap their zombies.
    Returns the pids stopped."""
    found, any_orphan = _task_leftovers(marker, cleared_since)
    targets = set(found) - {os.getpid()}
    stopped = _stop_all(targets, grace_s) if targets else set()
    # No orphan at all a moment ago: no zombie to reap either (a later one is reaped by
    # the next sweep); this skips a second scan of the children at most tasks' end.
    if _subreaper() and (any_orphan or targets):
        reap_orphans()
    return sorted(stopped)


def _task_leftovers(marker: str, cleared_since: float | None) -> tuple[list[int], bool]:
    """What sweep_task would stop (and whether any orphan at all was seen)."""
    if _subreaper():
        return _task_orphans(marker, cleared_since)
    # Without a subreaper the orphans went to init: only a scan of everything finds them.
    return marked_processes(marker), False


# --------------------------------------------------------------------------- run


def _describe(command: Sequence[str] | str) -> str:
    return command if isinstance(command, str) else shlex.join(command)


@functools.cache
def _shell() -> str:
    # Found once: exec would otherwise try every PATH entry before sh's for each worker.
    return shutil.which("sh") or "sh"


def _open_log(log_path: Path) -> int:
    # Readable too: the footer checks whether the worker's output ended its last line.
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:  # the folder is there but for the first attempt: no stat of it per task
        fd = os.open(log_path, flags, 0o600)
    except FileNotFoundError:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path, flags, 0o600)
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


@dataclass(frozen=True, slots=True)
class ProcessRequest:
    """What run_process / start_worker are asked to run (an attempt hands these to its
    driver: a thread that blocks on each, or the executor's loop, which waits on many)."""

    command: Sequence[str] | str
    cwd: Path
    env: Mapping[str, str]
    stdin_path: Path | None
    log_path: Path
    timeout_s: float | None
    grace_s: float = 5.0
    cancel: threading.Event | None = None
    registry_dir: Path | None = None

    def run(self, on_start: Callable[[int], None] | None = None) -> ProcessOutcome:
        """Start it and wait for it and its group in this thread (see run_process)."""
        w = start_worker(self)
        if isinstance(w, ProcessOutcome):
            return w
        try:
            timed_out, cancelled = wait_for(w, self.cancel, on_start)
        except BaseException:
            w.grace_s = min(self.grace_s, 1.0)
            w.stop()
            w.finish()
            raise
        return w.finish(timed_out=timed_out, cancelled=cancelled)


class Worker:
    """A started worker process, until its end is recorded (``finish``).

    run_process drives one from start to end in the calling thread; the executor's loop
    drives many at once, waiting on their pidfds, and hands one to a thread only when it
    must block (a timeout, a cancel, stopping what outlived the leader)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        req: ProcessRequest,
        *,
        marker: str,
        log_fd: int,
        stdin: int,
        began: float,
    ) -> None:
        self.proc = proc
        self.pgid = proc.pid  # start_new_session: the leader's pid is the group id
        self.command = req.command
        self.marker = marker
        self.log_fd = log_fd
        self.stdin = stdin
        self.began = began
        # When it times out (monotonic, as ``began``).
        self.deadline = None if req.timeout_s is None else began + max(0.0, req.timeout_s)
        self.grace_s = req.grace_s
        self.registry_dir = req.registry_dir
        self.pidfd = _pidfd(proc.pid)
        # Recorded only if still running after a moment: most short workers are done by
        # then, and reading a process's start time while it is still in exec() blocks for
        # about a millisecond. A runner killed within that moment leaves the group to the
        # next run's sweep_spec_orphans.
        self.register_at: float | None = None
        if self.registry_dir is not None:
            soon = began + _REGISTER_AFTER_S
            self.register_at = soon if self.deadline is None else min(soon, self.deadline)
        self.registered: Path | None = None
        self._group_stopped = False
        self._closed = False

    def fileno(self) -> int:
        """The pidfd (readable once the leader has exited); -1 without pidfds."""
        return -1 if self.pidfd is None else self.pidfd

    def register(self) -> None:
        """Record the group in the registry (for the guardian and the next run's sweep)
        if the leader is still running; done at ``register_at``."""
        self.register_at = None
        if self.registry_dir is not None and self.proc.poll() is None:
            self.registered = _register(self.registry_dir, self.proc.pid, _describe(self.command))
            guard(self.registry_dir)

    def exited(self) -> bool:
        """Whether the leader has exited (reaped here if so)."""
        return self.proc.poll() is not None

    def left_running(self) -> bool:
        """After the leader exited: is anything still running in its group (``cmd &``)?
        Stopping it may take up to the grace period."""
        return bool(live_group_members(self.pgid))

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the group, SIGKILL what is left after the grace period (blocks)."""
        if not self._group_stopped:
            self._group_stopped = True
            _stop_group(self.proc, self.pgid, self.grace_s if grace_s is None else grace_s)

    def finish(self, *, timed_out: bool = False, cancelled: bool = False) -> ProcessOutcome:
        """End the attempt's processes and record the end: the group (if the leader timed
        out, was cancelled or left members behind), then every orphan with the attempt's
        marker; the log's footer. May block for the grace period; once only."""
        try:
            try:
                if timed_out or cancelled or self.left_running():
                    self.stop()
            finally:
                # Whatever left the group (setsid, double fork, setpgid) goes too, at every
                # end: normal, timeout, cancel or an exception in the waiting thread.
                try:
                    sweep_task(self.marker, grace_s=self.grace_s, cleared_since=self._since())
                finally:
                    self._count_out()
        except BaseException:
            self._close(None)
            raise
        return self._close((timed_out, cancelled))

    def finish_now(self) -> ProcessOutcome | None:
        """``finish()`` of a leader that exited, when nothing is left to stop (the usual
        end); None, and nothing done, when its group or an orphan with its marker still
        runs (stopping them may take the grace period: call ``finish()``)."""
        if self.left_running():
            return None
        found, any_orphan = _task_leftovers(self.marker, self._since())
        if found:
            return None
        try:
            self._count_out()
            if any_orphan and _subreaper():
                reap_orphans()
        except BaseException:
            self._close(None)
            raise
        return self._close((False, False))

    def _since(self) -> float | None:
        """When the busy period that ends with this attempt began, if no other attempt is
        in flight (its sweep may then stop orphans no attempt can own), else None."""
        with _state_lock:
            return _busy_since[0] if _in_flight == 1 else None

    def _count_out(self) -> None:
        """This attempt is no longer in flight. Only after its sweep: until then its
        marker is live, so that another attempt's sweep leaves its orphans to it."""
        global _in_flight
        assert not self._closed
        self._closed = True
        if self.pidfd is not None:
            os.close(self.pidfd)
        with _state_lock:
            _in_flight -= 1
            _live_markers.discard(self.marker)

    def _close(self, end: tuple[bool, bool] | None) -> ProcessOutcome:
        """Close the attempt's files; with ``end`` (timed_out, cancelled), its footer
        first (none after an error)."""
        try:
            if self.proc.returncode is not None:
                with _state_lock:
                    _own_sessions.discard(self.proc.pid)
            duration = time.monotonic() - self.began
            rc = self.proc.returncode
            timed_out, cancelled = end or (False, False)
            if end is not None:
                why = "timed out" if timed_out else "cancelled" if cancelled else f"exit {rc}"
                _footer(self.log_fd, f"{why} after {duration:.2f}s")
            return ProcessOutcome(rc, timed_out, cancelled, duration, self.proc.pid, None)
        finally:
            if self.stdin != subprocess.DEVNULL:
                os.close(self.stdin)
            os.close(self.log_fd)
            if self.registered is not None:
                self.registered.unlink(missing_ok=True)


def start_worker(req: ProcessRequest) -> Worker | ProcessOutcome:
    """Start ``req.command`` (argv, or a string for ``sh -c``) in its own session, output
    to the log; the Worker, or the outcome of a command that never started (``start_error``
    says why, or ``cancel`` was already set). Never raises for a command that cannot be
    started. stdin is ``stdin_path`` (else /dev/null)."""
    command, cwd, env, stdin_path = req.command, req.cwd, req.env, req.stdin_path
    argv: list[str] = [_shell(), "-c", command] if isinstance(command, str) else list(command)
    if not argv:
        return ProcessOutcome(None, False, False, 0.0, 0, "empty command")
    if req.cancel is not None and req.cancel.is_set():
        return ProcessOutcome(None, False, True, 0.0, 0, None)
    global _in_flight
    become_subreaper()
    marker = new_marker()
    # Never the runner's own mark: that would make the worker's orphans look like ours.
    full_env = {k: v for k, v in env.items() if k != RUNNER_VAR}
    full_env[MARKER_VAR] = marker
    log_fd = _open_log(req.log_path)
    stdin: int = subprocess.DEVNULL
    began = time.monotonic()
    worker: Worker | None = None
    try:
        _header(log_fd, command, cwd, env)
        if stdin_path is not None:
            # A descriptor, not a file object: three system calls fewer per task.
            stdin = os.open(stdin_path, os.O_RDONLY | os.O_CLOEXEC)
            if stat.S_ISDIR(os.fstat(stdin).st_mode):  # as open() would refuse it
                os.close(stdin)
                stdin = subprocess.DEVNULL
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(stdin_path))
        with _state_lock:
            # Under the lock: reap_orphans must know it is ours before it can exit.
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdin=stdin,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                close_fds=True,
            )
            _own_sessions.add(proc.pid)
            if _in_flight == 0:
                _busy_since[0] = _process_clock() - _BORN_SLACK_S
            _in_flight += 1
            _live_markers.add(marker)
        worker = Worker(proc, req, marker=marker, log_fd=log_fd, stdin=stdin, began=began)
        return worker
    except OSError as exc:
        if stdin_path is not None and stdin == subprocess.DEVNULL:
            message = f"cannot read the prompt file {stdin_path}: {exc.strerror or exc}"
        else:
            message = _start_error(exc, argv[0], cwd)
        _footer(log_fd, message)
        return ProcessOutcome(None, False, False, time.monotonic() - began, 0, message)
    finally:
        if worker is None:  # the worker owns them from its start
            if stdin != subprocess.DEVNULL:
                os.close(stdin)
            os.close(log_fd)


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
    req = ProcessRequest(
        command, cwd, env, stdin_path, log_path, timeout_s, grace_s, cancel, registry_dir
    )
    return req.run(on_start)


def wait_for(
    w: Worker, cancel: threading.Event | None, on_start: Callable[[int], None] | None = None
) -> tuple[bool, bool]:
    """Block until the worker's leader exits, its deadline passes or ``cancel`` is set,
    recording it in the registry at its moment; returns (timed_out, cancelled)."""
    timed_out = cancelled = False
    if w.register_at is not None:
        timed_out, cancelled = _wait(w, w.register_at, cancel)
        if timed_out and not cancelled:
            w.register()
            timed_out = False
    if on_start is not None:
        on_start(w.proc.pid)
    if w.proc.returncode is None and not cancelled:
        timed_out, cancelled = _wait(w, w.deadline, cancel)
    return timed_out, cancelled


def _wait(w: Worker, deadline: float | None, cancel: threading.Event | None) -> tuple[bool, bool]:
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
        if w.pidfd is not None:
            if select.select([w.pidfd], [], [], step)[0]:
                w.proc.wait()
                return False, False
        else:
            try:
                w.proc.wait(timeout=step)
                return False, False
            except subprocess.TimeoutExpired:
                pass
        if cancel is not None and cancel.is_set():
            return False, True


@functools.cache
def pidfds_work() -> bool:
    """Whether this system has pidfds (Linux >= 5.3): a worker can then be waited on in
    a poll set beside others."""
    fd = _pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return True


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3
        return None
