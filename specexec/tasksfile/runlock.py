"""One run at a time per spec folder, and recovery from a run that died.

The run lock is an ``flock`` on ``<spec>/.specexec/run.lock``: the kernel guarantees two
live processes never hold it, and releases it when its holder dies however it dies. The
holder writes who it is (pid, host, process start time, since when) into the file for
the ``Busy`` message and ``status``; a clean release empties the file, so owner details
still present when the lock is taken mean the previous holder died (``taken_over``).
A pid alone is not trusted: with its start time, a reused pid is told apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import psutil

from specexec.errors import Busy, SpecexecError
from specexec.tasksfile.events import EventLog, utc_now
from specexec.tasksfile.store import (
    DELETE,
    TasksStore,
    open_error,
    runtime_dir,
    set_fields,
    task_objects,
)
from specexec.tasksfile.types import RUNTIME_DIR

log = logging.getLogger(__name__)

RUN_LOCK_FILE: Final = "run.lock"
_INFO_MAX: Final = 64 * 1024

_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()


def _close_in_child() -> None:
    # A forked child shares the holder's open file description, which would keep the
    # flock alive after the holder dies. Drop it in the child (without unlocking).
    for lock in list(_HELD):
        lock._forget()


os.register_at_fork(after_in_child=_close_in_child)


def _process_start(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


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
    if info.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(info["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = float(proc.create_time())
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError, KeyError, TypeError, ValueError):
        return None
    recorded = info.get("start_time")
    return not isinstance(recorded, int | float) or abs(started - recorded) < 1.0


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
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool | None = None, timeout: float | None = None) -> None:
        wait = self.wait if wait is None else wait
        timeout = self.timeout if timeout is None else timeout
        if self._fd is not None:
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
        runtime_dir(self.spec_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise open_error(self.path, "open", e) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            previous = _parse_info(os.pread(fd, _INFO_MAX, 0))
            me = os.getpid()
            info = {
                "pid": me,
                "host": socket.gethostname(),
                "start_time": _process_start(me),
                "since": utc_now(),
                "run_id": self.run_id,
            }
            data = json.dumps(info).encode()
            # Write, then cut: a concurrent reader sees old or new details, never none.
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError as e:
            os.close(fd)
            raise SpecexecError(f"{self.path}: cannot lock: {e.strerror or e}") from None
        self._fd = fd
        _HELD.add(self)
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
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.discard(self)
        try:
            os.ftruncate(fd, 0)  # empty = released cleanly
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _forget(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

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


def recover_in_progress(
    store: TasksStore,
    events: EventLog,
    *,
    reason: str = "the run that started it is gone",
) -> list[str]:
    """Put tasks left ``in_progress`` back to ``pending``, recording a ``recovered`` event
    for each (before the file is written). Call it while holding the ``RunLock``: then
    no live run owns those tasks. Returns the recovered ids."""
    recovered: list[str] = []

    def change(doc: dict[str, Any]) -> bool:
        recovered.clear()
        for t in task_objects(doc, store.path):
            if t.get("status") == "in_progress":
                events.append(
                    "recovered",
                    task=t["id"],
                    **{"from": "in_progress", "to": "pending"},
                    attempt=t.get("attempts"),
                    reason=reason,
                )
                set_fields(t, {"status": "pending", "started_at": DELETE})
                recovered.append(t["id"])
        return bool(recovered)

    store.edit(change)
    return list(recovered)
