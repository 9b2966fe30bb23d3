"""The one answer to each operating-system question specexec asks: how to replace a file
atomically, how to lock, which process is which, what time it is.

Every other module calls these; none writes its own temp-file-and-replace, lock, pid check
or timestamp format.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import filelock

# A reused pid has another start time; this absorbs clock-tick rounding of start times.
START_TIME_SLACK_S: Final = 1.0


# --------------------------------------------------------------------------- files


def atomic_write(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    durable: bool = True,
    owner: tuple[int, int] | None = None,
    exclusive: bool = False,
    unless_changed: Callable[[], bool] | None = None,
) -> bool:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a
    part. The temp file sits beside the target (same filesystem), is created exclusively
    and never through a link; ``durable`` also fsyncs the file and its directory.

    ``owner`` (uid, gid) is given to the new file where this user may (the group alone
    otherwise): a rewrite keeps the file's owner. ``exclusive`` never replaces: the file
    must not exist yet (``FileExistsError``). ``unless_changed`` is asked just before the
    replace; when it says False the target is left alone and this returns False."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    # Per thread too: two threads of one process may write the same file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            if owner is not None:
                _give(fd, owner)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask may have narrowed it; after chown (set-id bits)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if unless_changed is not None and not unless_changed():
            tmp.unlink()
            return False
        if exclusive:
            os.link(tmp, path)  # fails if ``path`` exists, unlike a rename
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)
    return True


def _give(fd: int, owner: tuple[int, int]) -> None:
    if owner == (os.geteuid(), os.getegid()):
        return
    # Only root may give a file away; a member of the group may still keep the group.
    try:
        os.fchown(fd, *owner)
    except PermissionError:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, owner[1])


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be
    opened)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def file_lock(
    path: Path, timeout: float = -1, *, mode: int = 0o644, poll_interval: float = 0.05
) -> filelock.FileLock:
    """The one lock primitive: an flock on ``path`` that the kernel releases when its
    holder dies. The file is never deleted (deleting it would let two holders lock two
    different inodes), never opened through a link, never truncated (filelock keeps its
    content), and the lock is shared by the threads of a process. filelock also closes
    the descriptor in a forked child, so a child that outlives its parent does not keep
    the lock. No soft-lock fallback: a soft lock is released by deleting its file."""
    return filelock.FileLock(
        path,
        timeout=timeout,
        mode=mode,
        poll_interval=poll_interval,
        thread_local=False,
        preserve_lock_file=True,
        fallback_to_soft=False,
    )


LockTimeout = filelock.Timeout


# --------------------------------------------------------------------------- processes


@functools.cache
def _boot_time() -> float:
    # psutil's own Linux source (``btime`` of /proc/stat), read without importing psutil:
    # a run needs it for its run lock, and psutil's import costs more than the read.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
    import psutil

    return float(psutil.boot_time())


def start_time(pid: int, *, zombie: bool = False) -> float | None:
    """When ``pid`` started, on psutil's clock (None: it is gone or unreadable, or a
    zombie unless ``zombie``: a zombie has finished, only its exit status is left).

    On Linux this reads ``/proc/PID/stat`` directly: psutil parses more than this needs,
    which costs more than starting a small worker."""
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        # Field 22 (starttime, clock ticks since boot), counted from the end of the
        # command name, which may itself hold spaces and parentheses.
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 19:
            if fields[0] == b"Z" and not zombie:
                return None
            return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    import psutil  # not Linux, or no /proc

    try:
        proc = psutil.Process(pid)
        if not zombie and proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.Error, OSError):
        return None


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process, told apart from a later one that reuses its pid: pid + start time + host."""

    pid: int
    start_time: float
    host: str

    @staticmethod
    def current() -> ProcessId:
        return _current(os.getpid())  # keyed by pid: a forked child is another process

    @staticmethod
    def of(pid: int) -> ProcessId | None:
        started = start_time(pid)
        return None if started is None else ProcessId(pid, started, socket.gethostname())

    def alive(self) -> bool | None:
        """True: still running. False: gone, a zombie, or the pid now names a newer
        process. None: on another host, which this machine cannot tell."""
        if self.host != socket.gethostname():
            return None
        started = start_time(self.pid)
        return started is not None and abs(started - self.start_time) <= START_TIME_SLACK_S

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start_time": self.start_time, "host": self.host}

    @staticmethod
    def from_json(raw: object) -> ProcessId | None:
        """The identity in a record written by ``to_json`` (None when it is not one)."""
        if not isinstance(raw, dict):
            return None
        try:
            return ProcessId(int(raw["pid"]), float(raw["start_time"]), str(raw["host"]))
        except (KeyError, TypeError, ValueError):
            return None


def umask() -> int:
    """This process's umask. Read from /proc where it can be: ``os.umask()`` can only
    be read by setting it, which races with threads creating files."""
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@functools.cache
def _current(pid: int) -> ProcessId:
    started = start_time(pid)
    assert started is not None  # this very process is running
    return ProcessId(pid, started, socket.gethostname())


# --------------------------------------------------------------------------- time


# The last second formatted: a run stamps several events per task, most within the same
# second, and strftime is the dearest part of a stamp. A tuple, swapped whole: any thread
# reads a matching pair.
_last_second: tuple[int, str] = (-1, "")


def utc_iso(t: float | None = None, *, ms: bool = False) -> str:
    """``2026-12-01T21:56:35Z`` (with ``ms``: ``…35.123Z``), the one timestamp format of
    every file specexec writes."""
    global _last_second
    now = time.time() if t is None else t
    second = int(now // 1)
    cached = _last_second
    if cached[0] == second:
        text = cached[1]
    else:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    if ms:
        text += f".{int(now * 1000) % 1000:03d}"
    return text + "Z"


def utc_stamp(t: float | None = None) -> str:
    """``20261201T215635Z``: a timestamp that sorts and fits in a file name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if t is None else t))
