"""One run at a time per spec folder.

The run lock is ``system.file_lock`` (an ``flock``) on ``<spec>/.specexec/run.lock``: the
kernel guarantees two live processes never hold it, and releases it when its holder dies
however it dies (filelock closes the descriptor in forked children, so a child that
outlives the holder does not keep it). The holder writes who it is (``ProcessId``: pid,
host, start time; since when; run id) into the file for the ``Busy`` message and
``status``; a clean release empties the file, so owner details still present when the
lock is taken mean the previous holder died (``taken_over``). A pid alone is not
trusted: with its start time, a reused pid is told apart.

What to do about a run that died is ``specexec.run.recovery``'s decision.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import filelock

from specexec import system
from specexec.errors import Busy, SpecexecError
from specexec.tasksfile.store import open_error, runtime_dir
from specexec.tasksfile.types import RUNTIME_DIR

log = logging.getLogger(__name__)

RUN_LOCK_FILE: Final = "run.lock"
_INFO_MAX: Final = 64 * 1024


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _parse_info(os.pread(fd, _INFO_MAX, 0))
    finally:
        os.close(fd)


def _parse_info(data: bytes) -> dict[str, Any] | None:
    try:
        # raw_decode: a holder writes its info before truncating, so a reader may see
        # the new record followed by the tail of an older, longer one.
        info, _ = json.JSONDecoder().raw_decode(data.decode("utf-8", "replace"))
    except ValueError:
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def is_alive(info: dict[str, Any]) -> bool | None:
    """Whether the process an info record names still runs: None if it is on another
    host (unknowable here), False if the pid is gone or now belongs to a newer process."""
    host = info.get("host")
    if host != socket.gethostname():
        return None
    pid, recorded = int(info["pid"]), info.get("start_time")
    if not isinstance(recorded, int | float):  # no start time recorded: the pid alone
        return system.start_time(pid) is not None
    return system.ProcessId(pid, float(recorded), host).alive()


def describe(spec_dir: Path, info: dict[str, Any] | None) -> str:
    if info is None:
        return f"spec folder {spec_dir} is being run by another process"
    return (
        f"spec folder {spec_dir} is being run by pid {info.get('pid')} on host "
        f"{info.get('host')} since {info.get('since')}"
    )


class RunLock:
    """The run lock of one spec folder. ``with RunLock(d):`` raises ``Busy`` at once if
    another process runs it; ``RunLock(d, wait=True, timeout=...)`` waits instead."""

    def __init__(
        self,
        spec_dir: str | os.PathLike[str],
        *,
        wait: bool = False,
        timeout: float | None = None,
        run_id: str | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        self.spec_dir = Path(spec_dir)
        self.path = self.spec_dir / RUNTIME_DIR / RUN_LOCK_FILE
        self.wait = wait
        self.timeout = timeout
        self.run_id = run_id
        self.poll_interval = poll_interval
        # The owner details a dead holder left behind, if we took its lock over.
        self.taken_over: dict[str, Any] | None = None
        self._lock: filelock.FileLock | None = None
        self._info_fd: int | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self, wait: bool | None = None, timeout: float | None = None) -> None:
        wait = self.wait if wait is None else wait
        timeout = self.timeout if timeout is None else timeout
        if self._lock is not None:
            raise RuntimeError(f"{self.path}: already held by this RunLock")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._try():
            if not wait:
                raise Busy(f"{self._busy_message()} (use --wait to wait for it)")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise Busy(f"{self._busy_message()}; gave up after waiting {timeout:g} s")
            left = (
                self.poll_interval if deadline is None else min(self.poll_interval, deadline - now)
            )
            time.sleep(max(left, 0.0))

    def _try(self) -> bool:
        """One attempt, without waiting: True when this RunLock holds the lock now."""
        runtime_dir(self.spec_dir)
        lock = system.file_lock(self.path)
        try:
            lock.acquire(timeout=0)
        except system.LockTimeout:
            return False
        except OSError as e:
            raise open_error(self.path, "open", e) from None
        try:
            previous = self._write_info()
        except OSError as e:
            lock.release()
            raise SpecexecError(f"{self.path}: cannot lock: {e.strerror or e}") from None
        self._lock = lock
        if previous is not None:
            self.taken_over = previous
            log.warning(
                "%s: took over the run lock left by pid %s on host %s (since %s), which "
                "did not release it",
                self.spec_dir,
                previous.get("pid"),
                previous.get("host"),
                previous.get("since"),
            )
        return True

    def _write_info(self) -> dict[str, Any] | None:
        """Record this holder in the lock file; the details a dead holder left there."""
        me = system.ProcessId.current()
        info = {
            "pid": me.pid,
            "host": me.host,
            "start_time": me.start_time,
            "since": system.utc_iso(ms=True),
            "run_id": self.run_id,
        }
        # A descriptor of our own, kept until the release (the folder may be renamed
        # meanwhile); the flock belongs to filelock's open file description, not to it.
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            previous = _parse_info(os.pread(fd, _INFO_MAX, 0))
            data = json.dumps(info).encode()
            # Write, then cut: a concurrent reader sees old or new details, never none.
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except BaseException:
            os.close(fd)
            raise
        self._info_fd = fd
        return previous

    def _busy_message(self) -> str:
        # The winner of the flock writes its details a moment after winning; the file may
        # still hold a dead predecessor's. Give a live owner a short while to show up.
        info = _read_info(self.path)
        deadline = time.monotonic() + 0.5
        while (info is None or is_alive(info) is False) and time.monotonic() < deadline:
            time.sleep(0.02)
            info = _read_info(self.path)
        if info is not None and is_alive(info) is False:
            return (
                f"{describe(self.spec_dir, None)} (the lock file names pid {info.get('pid')}, "
                "which is gone; a process it started still holds the lock)"
            )
        return describe(self.spec_dir, info)

    def release(self) -> None:
        lock, self._lock = self._lock, None
        fd, self._info_fd = self._info_fd, None
        if lock is None:
            return
        try:
            if fd is not None:
                os.ftruncate(fd, 0)  # empty = released cleanly
        finally:
            if fd is not None:
                os.close(fd)
            lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @staticmethod
    def holder(spec_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
        """Who runs this spec folder now (pid, host, start_time, since, run_id), or None.

        Read-only: it neither creates files nor touches the lock, so it cannot make a
        starting run fail. Details naming a dead process (or a reused pid) mean None.
        """
        runtime = Path(spec_dir) / RUNTIME_DIR
        if runtime.is_symlink():  # planted: never read through it
            return None
        info = _read_info(runtime / RUN_LOCK_FILE)
        if info is None or is_alive(info) is False:
            return None
        return info
