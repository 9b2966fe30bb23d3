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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import filelock
import psutil

# A reused pid has another start time; this absorbs clock-tick rounding of start times.
START_TIME_SLACK_S: Final = 1.0


# --------------------------------------------------------------------------- files


def atomic_write(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a
    part. The temp file sits beside the target (same filesystem), is created exclusively
    and never through a link; ``durable`` also fsyncs the file and its directory."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask may have narrowed it
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


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


def file_lock(path: Path, timeout: float) -> filelock.FileLock:
    """The one lock primitive: an flock on ``path`` that the kernel releases when its
    holder dies. The file is never deleted (deleting it would let two holders lock two
    different inodes) and the lock is shared by the threads of a process."""
    return filelock.FileLock(path, timeout=timeout, thread_local=False, preserve_lock_file=True)


LockTimeout = filelock.Timeout


# --------------------------------------------------------------------------- processes


@functools.cache
def _boot_time() -> float:
    return float(psutil.boot_time())


def start_time(pid: int) -> float | None:
    """When ``pid`` started, on psutil's clock (None: it is gone or unreadable).

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
            if fields[0] == b"Z":
                return None  # a zombie has finished; only its exit status is left
            return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
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
    @functools.cache
    def current() -> ProcessId:
        started = start_time(os.getpid())
        assert started is not None  # this very process is running
        return ProcessId(os.getpid(), started, socket.gethostname())

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


# --------------------------------------------------------------------------- time


def utc_iso(t: float | None = None, *, ms: bool = False) -> str:
    """``2026-12-01T21:56:35Z`` (with ``ms``: ``…35.123Z``), the one timestamp format of
    every file specexec writes."""
    now = time.time() if t is None else t
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    if ms:
        text += f".{int(now * 1000) % 1000:03d}"
    return text + "Z"


def utc_stamp(t: float | None = None) -> str:
    """``20261201T215635Z``: a timestamp that sorts and fits in a file name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if t is None else t))
