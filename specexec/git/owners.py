"""Who holds what: the repository lock, and the owner marker beside each worktree.

``<common>/specexec/git.lock`` serialises every git metadata change of one repository
(a threading lock for the executor's worker threads, around ``system.file_lock`` for
other processes). ``<worktree>.owner`` records the process using a worktree
(``system.ProcessId``) and, for a task, what it started from: a record for the stash
clean-up and for messages only, since a worker can delete or forge it. Who uses a
worktree is decided by its *hold* (below), a lock only the runner holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock

from specexec.errors import Busy
from specexec.system import LockTimeout, ProcessId, atomic_write, file_lock

LOCK_TIMEOUT = 300.0  # seconds; git metadata operations take milliseconds
MARKER_SUFFIX = ".owner"

Owner = ProcessId


class RepoLock:
    """Threads queue on the RLock (prompt wake-up); the holder then takes the file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = threading.RLock()
        self._file = file_lock(path, LOCK_TIMEOUT)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._thread.acquire(timeout=LOCK_TIMEOUT):
            raise Busy(f"timed out waiting for the repository lock {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file.acquire()
            except LockTimeout as exc:
                raise Busy(f"another process holds the repository lock {self.path}") from exc
            try:
                yield
            finally:
                self._file.release()
        finally:
            self._thread.release()


_LOCKS: dict[Path, RepoLock] = {}
_LOCKS_GUARD = threading.Lock()


def repo_lock(common_dir: Path) -> RepoLock:
    """The one lock of the repository whose git common dir is ``common_dir``."""
    path = common_dir / "specexec" / "git.lock"
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, RepoLock(path))


# --- owner markers ---------------------------------------------------------------------


def marker_file(worktree_path: Path) -> Path:
    return worktree_path.with_name(worktree_path.name + MARKER_SUFFIX)


def marked_name(entry_name: str) -> str | None:
    """The worktree a marker file (or a write of one left by a crash) belongs to."""
    name = entry_name
    if name.startswith(".") and name.endswith(".tmp"):  # system.atomic_write's temp file
        name = name[1:].removesuffix(".tmp").rpartition(".")[0]
    name = name.removesuffix(".tmp")  # older versions' temp file
    if name.endswith(MARKER_SUFFIX):
        return name.removesuffix(MARKER_SUFFIX) or None
    return None


def remove_marker(worktree_path: Path) -> None:
    """The marker and any temp file a killed writer left."""
    target = marker_file(worktree_path)
    target.unlink(missing_ok=True)
    target.with_name(target.name + ".tmp").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        for tmp in target.parent.glob(f".{target.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def read_marker(worktree_path: Path) -> dict[str, Any] | None:
    """The whole owner record beside a worktree (the pool keeps its task there too)."""
    try:
        raw: Any = json.loads(marker_file(worktree_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def read_owner(worktree_path: Path) -> Owner | None:
    """The owner recorded beside a worktree, or None if missing or unreadable."""
    return ProcessId.from_json(read_marker(worktree_path))


def owner_alive(owner: Owner) -> bool:
    """Is the owner still running? Another host's process counts as alive: this machine
    cannot tell, so its work is kept."""
    return owner.alive() is not False


def owned_by_me(worktree_path: Path) -> bool:
    owner = read_owner(worktree_path)
    return owner is not None and owner.pid == os.getpid() and owner_alive(owner)


def _me() -> ProcessId:
    # Not ProcessId.current(): its cache would name the parent in a forked child.
    me = ProcessId.of(os.getpid())
    assert me is not None  # this very process is running
    return me


def write_marker(worktree_path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Record this process as the owner (atomically: a crash leaves the old record).
    Not fsynced: it must survive the owner's death, not the machine's."""
    doc = {**(extra or {}), **_me().to_json()}
    atomic_write(marker_file(worktree_path), json.dumps(doc) + "\n", durable=False)


# --- holds: which worktrees this process uses ------------------------------------------
# A worktree in use is *held*: an flock on ``<common>/specexec/holds/<where>.lock`` that
# the runner keeps for as long as its task uses the worktree. The kernel drops it when the
# runner dies; a worker cannot release it, and deleting or forging the marker beside the
# worktree changes nothing. Every hold is taken, probed and deleted under the repository
# lock, so deleting a lock file (once it is ours) never splits one hold into two inodes.

_HOLDS: dict[Path, filelock.FileLock] = {}
_HOLDS_GUARD = threading.Lock()


def hold_mine(lock_path: Path) -> bool:
    """Does this process hold it?"""
    with _HOLDS_GUARD:
        return lock_path in _HOLDS


def take_hold(lock_path: Path) -> bool:
    """Hold it (repository lock held): False if anyone holds it, this process included:
    two runs in one process (the daemon) each have their own pool, and a slot one of them
    holds is not free for the other."""
    with _HOLDS_GUARD:
        if lock_path in _HOLDS:
            return False
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = file_lock(lock_path, 0)
    try:
        lock.acquire()
    except LockTimeout:
        return False
    with _HOLDS_GUARD:
        _HOLDS[lock_path] = lock
    return True


def drop_hold(lock_path: Path, *, delete: bool = False) -> None:
    """Release our hold (repository lock held); ``delete``: its file too (the worktree
    is gone; nobody can be waiting for it, since holds are only taken under that lock)."""
    with _HOLDS_GUARD:
        lock = _HOLDS.pop(lock_path, None)
    if lock is None:
        return
    if delete:
        lock_path.unlink(missing_ok=True)
    lock.release()


def held_elsewhere(lock_path: Path) -> bool | None:
    """Does another process hold it? None: there is no lock file (never held, or a worker
    deleted it). Probed by taking and releasing it at once (repository lock held)."""
    if hold_mine(lock_path):
        return False
    if not lock_path.exists():
        return None
    lock = file_lock(lock_path, 0)
    try:
        lock.acquire()
    except LockTimeout:
        return True
    except OSError:
        return None
    lock.release()
    return False


def processes_inside(path: Path) -> list[int]:
    """Processes whose working directory is ``path`` or beneath it: a worker that outlived
    its hold, or whose lock file was deleted (a scan of all: only done for a worktree whose
    hold says nothing)."""
    import psutil  # only for this scan

    inside: list[int] = []
    prefix = str(path) + os.sep
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info.get("cwd")
        if isinstance(cwd, str) and (cwd == str(path) or cwd.startswith(prefix)):
            inside.append(proc.pid)
    return inside
