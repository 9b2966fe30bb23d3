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
from typing import Any, Final, Self

import filelock

from specexec import system
from specexec.errors import Busy, InvalidInput, SpecexecError, UnsafePath
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


class _RecordedLock:
    """An flock (``system.file_lock``) plus a record of its holder written through a
    descriptor of our own, emptied at release: the shape of the run lock and the spec-name
    claim. Subclasses set ``_lock`` and ``_fd`` when they acquire."""

    _lock: filelock.FileLock | None
    _fd: int | None

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        lock, self._lock = self._lock, None
        fd, self._fd = self._fd, None
        if lock is None:
            return
        try:
            if fd is not None:
                os.ftruncate(fd, 0)  # empty = released cleanly
        finally:
            if fd is not None:
                os.close(fd)
            lock.release()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class RunLock(_RecordedLock):
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
        self._fd: int | None = None

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
        self._fd = fd
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


# --- one spec name, one spec folder ---------------------------------------------------------

SPEC_CLAIMS_DIR: Final = "specexec/specs"  # under the repository's git common dir


class SpecNameClaim(_RecordedLock):
    """A run's claim on its spec name in its repository, held as long as the run lock.

    Two spec folders whose spec name is the same (``specs/auth`` and ``legacy/auth``, no
    ``spec`` field) would both merge into ``specexec/auth`` and fail each other's tasks.
    The claim is ``system.file_lock`` on ``<git common dir>/specexec/specs/<name>.lock``,
    holding the folder's real path: the run lock cannot tell, being one per folder. Only
    specexec's own lock decides, never a file a worker can delete (the kernel drops the
    flock when its holder dies, whatever is left in the file)."""

    def __init__(self, spec_dir: str | os.PathLike[str], name: str, common_dir: Path) -> None:
        self.spec_dir = Path(os.path.realpath(spec_dir))
        self.name = name
        self.path = common_dir / SPEC_CLAIMS_DIR / f"{name}.lock"
        self._lock: filelock.FileLock | None = None
        self._fd: int | None = None

    def holder(self) -> str | None:
        """The folder another run holds this name for (None: free, or held for this
        folder: the run lock decides that case). Waits a moment for a new holder to
        write its folder."""
        if not self.path.exists():
            return None
        lock = system.file_lock(self.path, mode=0o600)
        deadline = time.monotonic() + 0.5
        while True:
            try:
                lock.acquire(timeout=0)
            except system.LockTimeout:
                pass
            except OSError as e:
                raise open_error(self.path, "open", e) from None
            else:
                lock.release()
                return None
            info = _read_claim(self.path)
            if info is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if info is not None and info == str(self.spec_dir):
            return None
        return info or "(a folder that did not say which)"

    def check(self) -> None:
        """Refuse (exit 2, nothing written) if another folder's run holds the name."""
        other = self.holder()
        if other is not None:
            raise InvalidInput(
                f"spec name {self.name!r} of {self.spec_dir} is the name of {other} too, "
                f"which is being run: both would run into branch specexec/{self.name}",
                [
                    f"{self.spec_dir}: spec name {self.name!r} is also the spec name of "
                    f"{other}, which another specexec process is running; two spec "
                    f'folders of one repository must not share a spec name (set "spec" '
                    "in one tasks.json to tell them apart)"
                ],
            )

    def acquire(self) -> None:
        claims = self.path.parent
        for d in (claims.parent, claims):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise SpecexecError(f"{d}: cannot create: {e.strerror or e}") from None
            if d.is_symlink() or not d.is_dir():
                raise UnsafePath(f"{d}: must be a directory, not a symbolic link or a file")
        lock = system.file_lock(self.path, mode=0o600)
        deadline = time.monotonic() + 0.5
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except system.LockTimeout:
                pass
            except OSError as e:
                raise open_error(self.path, "open", e) from None
            # Held: for another folder, refused naming it; else (a holder that has not
            # written its folder yet, or a peek by check()) try again for a moment.
            self.check()
            if time.monotonic() >= deadline:
                raise Busy(f"spec name {self.name!r} is being claimed by another process")
            time.sleep(0.02)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            data = json.dumps({"spec_dir": str(self.spec_dir), "pid": os.getpid()}).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError as e:
            lock.release()
            raise SpecexecError(f"{self.path}: cannot lock: {e.strerror or e}") from None
        self._lock, self._fd = lock, fd


def _read_claim(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, _INFO_MAX, 0)
    finally:
        os.close(fd)
    try:
        info, _ = json.JSONDecoder().raw_decode(data.decode("utf-8", "replace"))
    except ValueError:
        return None
    folder = info.get("spec_dir") if isinstance(info, dict) else None
    return folder if isinstance(folder, str) else None
