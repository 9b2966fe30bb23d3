"""The only writer of tasks.json: locked, field-level, durable read-modify-write, and
``create`` for a new one (``specexec init``).

Every write takes ``<spec>/.specexec/tasks.lock`` (``system.file_lock``, never deleted),
re-reads the *current* file, applies only the named fields of the named tasks, and
replaces the file atomically (``system.atomic_write``: temp file in the same directory,
fsync, ``os.replace``, fsync of the directory), keeping its mode and owner. So hand
edits made between two writes survive, and a crash at any point leaves either the old
or the new file.

Updating a task id that is not in the current file does not fail: the user may have
deleted the task by hand during a run, and the other changes of the batch must still
land. Such ids are skipped and reported in ``UpdateResult.missing`` (``apply``), or
rejected with ``strict=True``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from filelock import FileLock

from specexec import fmt, system
from specexec.errors import Busy, InvalidInput, SpecexecError, UnsafePath
from specexec.tasksfile import jsonio
from specexec.tasksfile.types import RUNTIME_DIR, TASKS_FILE

log = logging.getLogger(__name__)

LOCK_FILE: Final = "tasks.lock"
STALE_TMP_SECONDS: Final = 60.0
# The names system.atomic_write gives its temp files (``.tasks.json.PID.THREAD.tmp``).
_TMP_NAME: Final = re.compile(rf"\.{re.escape(TASKS_FILE)}\.[^/]+\.tmp\Z")
# An unlocked edit (an editor) landing between our read and our replace makes us redo
# the update on the new file; give up after this many rounds.
_MAX_ROUNDS: Final = 5


class _Delete(enum.Enum):
    DELETE = "DELETE"

    def __repr__(self) -> str:
        return "DELETE"


DELETE: Final = _Delete.DELETE
"""Field value that removes the key instead of setting it."""


@dataclass(frozen=True, slots=True)
class UpdateResult:
    doc: dict[str, Any]  # the document now on disk (the store keeps using it: do not modify)
    written: bool  # False when the changes were already in the file
    missing: tuple[str, ...] = ()  # task ids not in the current file (skipped)


def runtime_dir(spec_dir: Path) -> Path:
    """``<spec_dir>/.specexec``, created private (0700) if needed; never a symlink."""
    path = spec_dir / RUNTIME_DIR
    try:
        os.mkdir(path, 0o700)
        # Runtime data is never committed: git ignores the folder without the user
        # having to edit their .gitignore.
        (path / ".gitignore").write_text("*\n")
    except FileExistsError:
        pass
    except OSError as e:
        raise SpecexecError(f"{path}: cannot create: {e.strerror or e}") from None
    if path.is_symlink() or not path.is_dir():
        raise UnsafePath(f"{path}: must be a directory, not a symbolic link or a file")
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed; refuse it if it is a symlink or a file.

    Everything under ``.specexec`` may have been planted by whoever dropped the folder:
    specexec never writes through a link there."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SpecexecError(f"{path}: cannot create: {e.strerror or e}") from None
    if path.is_symlink() or not path.is_dir():
        raise UnsafePath(f"{path}: must be a directory, not a symbolic link or a file")
    return path


def open_error(path: Path, what: str, e: OSError) -> SpecexecError:
    """The error for a failed open: a planted symlink (ELOOP) is unsafe input (exit 2)."""
    if e.errno == errno.ELOOP:
        return UnsafePath(
            f"{path}: is a symbolic link; specexec does not follow links in .specexec"
        )
    return SpecexecError(f"{path}: cannot {what}: {e.strerror or e}")


def _same(a: Any, b: Any) -> bool:
    # Strict: 1, 1.0 and true are different JSON values.
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        return bool(jsonio.dumps(a) == jsonio.dumps(b))
    return bool(a == b)


def set_fields(obj: dict[str, Any], fields: Mapping[str, Any]) -> bool:
    """Apply ``fields`` to ``obj`` in place (``DELETE`` removes); True if anything changed.

    Existing keys keep their position; new keys go at the end.
    """
    changed = False
    for key, value in fields.items():
        if value is DELETE:
            if key in obj:
                del obj[key]
                changed = True
        elif key not in obj or not _same(obj[key], value):
            obj[key] = value
            changed = True
    return changed


def task_objects(doc: dict[str, Any], source: Path | str) -> list[dict[str, Any]]:
    """The task objects of a raw document that have a string id (others are skipped:
    reporting them is the validator's job)."""
    tasks = doc.get("tasks", [])
    if not isinstance(tasks, list):
        raise InvalidInput(f'{source}: "tasks" must be a list')
    return [t for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), str)]


class TasksStore:
    """Locked, field-level access to ``<spec_dir>/tasks.json``. Thread-safe."""

    def __init__(self, spec_dir: str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        self.spec_dir = Path(spec_dir)
        self.path = self.spec_dir / TASKS_FILE
        self.lock_path = self.spec_dir / RUNTIME_DIR / LOCK_FILE
        self.lock_timeout = lock_timeout
        self._filelock: FileLock | None = None
        # Threads of this process queue here instead of polling the file lock.
        self._mutex = threading.RLock()
        # The document as this store last wrote it, keyed by the file's identity then:
        # while nobody else touched the file, the next update need not parse it again.
        self._cache: tuple[tuple[int, int, int, int], dict[str, Any]] | None = None
        # The encoding of each task as last written: a write re-encodes only changed tasks.
        self._encoder = jsonio.IncrementalEncoder("tasks")
        # The bytes a finished task's record may take (tasksfile.bounds sets it per run).
        self.record_budget = 256 * 1024

    # -- reading -------------------------------------------------------------------

    def _load(self) -> tuple[dict[str, Any], os.stat_result]:
        data, st = jsonio.read_bytes(self.path)
        if st.st_nlink > 1:
            raise UnsafePath(
                f"{self.path}: has {st.st_nlink} hard links; replacing it would leave the "
                "other names with the old content (make it a single file, e.g. "
                f"cp {self.path} {self.path}.new && mv {self.path}.new {self.path})"
            )
        doc = jsonio.loads(data, source=str(self.path))
        if not isinstance(doc, dict):
            raise InvalidInput(f"{self.path}: the top level must be a JSON object")
        return doc, st

    def read(self) -> dict[str, Any]:
        """The current raw document (no lock needed: writes replace the file atomically)."""
        return self._load()[0]

    # -- writing -------------------------------------------------------------------

    def update(
        self,
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        top: Mapping[str, Any] | None = None,
        *,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Set (or ``DELETE``) fields of tasks by id and of the top level; return the
        document now on disk. Unknown ids are skipped (see ``apply``) unless ``strict``."""
        return self.apply(tasks, top, strict=strict).doc

    def apply(
        self,
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        top: Mapping[str, Any] | None = None,
        *,
        strict: bool = False,
    ) -> UpdateResult:
        """Like ``update`` but says whether the file was written and which ids were missing.

        With ``strict``, a missing id raises ``InvalidInput`` naming it and nothing is written.
        """
        tasks = tasks or {}
        top = top or {}
        if "tasks" in top:
            raise ValueError("update the task list through tasks=, not top=")
        missing: list[str] = []

        def change(doc: dict[str, Any]) -> bool:
            missing.clear()
            changed = set_fields(doc, top)
            if tasks:
                by_id: dict[str, dict[str, Any]] = {}
                for t in task_objects(doc, self.path):
                    by_id.setdefault(t["id"], t)
                missing.extend(tid for tid in tasks if tid not in by_id)
                if missing and strict:
                    raise InvalidInput(
                        f"{self.path}: no task with id {', '.join(missing)}",
                        [f"{self.path}: no task with id {tid!r}" for tid in missing],
                    )
                for tid, fields in tasks.items():
                    if tid in by_id:
                        self._encoder.forget(by_id[tid])  # its cached encoding goes stale
                        changed = set_fields(by_id[tid], fields) or changed
            return changed

        # Only the new values need the depth check: the rest was loaded, so it is fine.
        for fields, limit in [
            (top, jsonio.MAX_DEPTH - 1),
            *((f, jsonio.MAX_DEPTH - 3) for f in tasks.values()),
        ]:
            for key, value in fields.items():
                if value is not DELETE and jsonio.too_deep(value, limit):
                    raise InvalidInput(
                        f"{self.path}: field {key!r}: refusing to write a value nested deeper "
                        f"than {jsonio.MAX_DEPTH} levels (it could not be loaded again); "
                        "the file was left unchanged"
                    )
        doc, written = self._edit(change, checked=True)
        if missing:
            log.warning("%s: skipped changes to tasks not in the file: %s", self.path, missing)
        return UpdateResult(doc, written, tuple(missing))

    def edit(self, change: Callable[[dict[str, Any]], bool]) -> tuple[dict[str, Any], bool]:
        """Under the lock: read the current document, let ``change`` modify it in place
        and say whether it changed anything, and if so write it. Returns (document,
        written). ``change`` may run more than once if the file is edited meanwhile."""

        def change_any(doc: dict[str, Any]) -> bool:
            self._encoder.clear()  # ``change`` may modify any task in place
            return change(doc)

        return self._edit(change_any, checked=False)

    def _current(self) -> tuple[dict[str, Any], os.stat_result]:
        """The document on disk: our cached copy if the file is the one we wrote."""
        cache, self._cache = self._cache, None  # taken: ``change`` edits it in place
        if cache is not None:
            try:
                st = os.stat(self.path, follow_symlinks=False)
            except OSError:
                st = None
            if st is not None and _identity(st) == cache[0] and st.st_nlink == 1:
                return cache[1], st
        return self._load()

    def _edit(
        self, change: Callable[[dict[str, Any]], bool], *, checked: bool
    ) -> tuple[dict[str, Any], bool]:
        with self.locked():
            for _ in range(_MAX_ROUNDS):
                doc, st = self._current()
                if not change(doc):
                    self._cache = (_identity(st), doc)
                    return doc, False
                if self._replace(self._encode(doc, check_depth=not checked), st):
                    with contextlib.suppress(OSError):
                        self._cache = (_identity(os.stat(self.path, follow_symlinks=False)), doc)
                    return doc, True
                log.info("%s changed while being updated; redoing the update", self.path)
        raise SpecexecError(
            f"{self.path}: the file kept changing while specexec was updating it; "
            "stop editing it and retry"
        )

    def _encode(self, doc: dict[str, Any], *, check_depth: bool = True) -> bytes:
        # Never write a file that specexec itself would refuse to load again.
        if check_depth and jsonio.too_deep(doc):
            raise InvalidInput(
                f"{self.path}: refusing to write a document nested deeper than "
                f"{jsonio.MAX_DEPTH} levels (it could not be loaded again); the file was left unchanged"
            )
        payload = self._encoder.encode(doc)
        if len(payload) > jsonio.MAX_BYTES:
            raise InvalidInput(
                f"{self.path}: refusing to write {fmt.size(len(payload))}, more than the "
                f"{fmt.size(jsonio.MAX_BYTES)} limit of tasks.json (it could not be loaded "
                "again); the file was left unchanged"
            )
        return payload

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the tasks.json lock (in-process mutex + file lock); reentrant per thread."""
        with self._mutex:
            lock = self._lock()
            try:
                lock.acquire(timeout=self.lock_timeout)
            except system.LockTimeout:
                raise Busy(
                    f"{self.path}: timed out after {self.lock_timeout:g} s waiting for "
                    f"{self.lock_path}, held by another specexec process"
                ) from None
            except OSError as e:
                if e.errno == errno.ELOOP:  # a planted symlink: never lock (or truncate) its target
                    raise UnsafePath(
                        f"{self.lock_path}: is a symbolic link; specexec does not follow links "
                        "in .specexec (remove it)"
                    ) from None
                raise SpecexecError(f"{self.lock_path}: cannot lock: {e.strerror or e}") from None
            try:
                if lock.lock_counter == 1:
                    self._remove_stale_temps()
                yield
            finally:
                lock.release()

    def _lock(self) -> FileLock:
        if self._filelock is None:
            runtime_dir(self.spec_dir)
            # Contention is short; a long poll would idle the lock.
            self._filelock = system.file_lock(self.lock_path, mode=0o600, poll_interval=0.002)
        return self._filelock

    def _remove_stale_temps(self) -> None:
        # Temp files only exist while a writer holds the lock, so an old one is a crash
        # leftover. The age guard spares a writer on another host of a shared disk.
        now = time.time()
        try:
            entries = list(os.scandir(self.spec_dir))
        except OSError:
            return
        for entry in entries:
            if not _TMP_NAME.match(entry.name):
                continue
            with contextlib.suppress(OSError):
                if (
                    entry.is_file(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
                ):
                    os.unlink(entry.path)
                    log.info("removed a temporary file left by a crashed writer: %s", entry.path)

    def _replace(self, payload: bytes, st: os.stat_result) -> bool:
        """Durably replace the file with ``payload`` (keeping its owner and mode) unless
        it changed since ``st``."""
        try:
            return system.atomic_write(
                self.path,
                payload,
                mode=stat.S_IMODE(st.st_mode),
                owner=(st.st_uid, st.st_gid),
                unless_changed=lambda: _same_file(self.path, st),
            )
        except OSError as e:
            raise _write_error(self.path, e) from None


def create(spec_dir: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    """Write a new ``tasks.json`` in ``spec_dir`` (``InvalidInput`` if there is one
    already, or if ``doc`` could not be loaded again); its path."""
    path = Path(spec_dir) / TASKS_FILE
    payload = jsonio.encode(doc)
    if jsonio.too_deep(doc) or len(payload) > jsonio.MAX_BYTES:
        raise InvalidInput(f"{path}: refusing to write a document specexec could not load")
    try:
        system.atomic_write(path, payload, exclusive=True)
    except FileExistsError:
        raise InvalidInput(f"{path} already exists; not overwriting it") from None
    except OSError as e:
        raise _write_error(path, e) from None
    return path


def _write_error(path: Path, e: OSError) -> SpecexecError:
    name = errno.errorcode.get(e.errno or 0, "")
    return SpecexecError(
        f"{path}: cannot write: {e.strerror or e}{f' ({name})' if name else ''}; "
        "the file was left unchanged"
    )


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _same_file(path: Path, st: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )


class CoalescingWriter:
    """Batches task transitions into few writes: a change is written at most ``interval``
    seconds after it was made (plus the write time), and writes are at least
    ``interval`` apart. ``close()`` (or leaving the ``with`` block) writes what is left.

    Thread-safe. Later values of the same field win. A failed background write keeps
    its changes pending and is retried; ``flush()`` and ``close()`` raise the failure.
    """

    def __init__(self, store: TasksStore, interval: float = 0.25) -> None:
        self.store = store
        self.interval = interval
        self.missing: set[str] = set()  # ids that were not in the file when written
        self.error: BaseException | None = None  # the last background failure
        self._cond = threading.Condition()
        self._io = threading.Lock()  # one write at a time, in order
        self._tasks: dict[str, dict[str, Any]] = {}
        self._top: dict[str, Any] = {}
        self._since: float | None = None  # when the oldest unwritten change was made
        self._last_write = float("-inf")
        self._last_cost = 0.0  # seconds the last write took
        self._closed = False
        self._writes = 0
        self._thread = threading.Thread(target=self._run, name="specexec-tasks-writer", daemon=True)
        self._thread.start()

    @property
    def writes(self) -> int:
        """How many times the file was actually written."""
        return self._writes

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._since is not None

    def set(self, task_id: str, **fields: Any) -> None:
        # A task's fields sit 3 levels down (document, task list, task).
        self._check_depth(fields, jsonio.MAX_DEPTH - 3, f"task {task_id!r}")
        with self._cond:
            self._check_open()
            self._tasks.setdefault(task_id, {}).update(fields)
            self._mark()

    def set_top(self, **fields: Any) -> None:
        self._check_depth(fields, jsonio.MAX_DEPTH - 1, "the top level")
        with self._cond:
            self._check_open()
            self._top.update(fields)
            self._mark()

    def _check_depth(self, fields: Mapping[str, Any], limit: int, where: str) -> None:
        # Refused here, in the caller, rather than poisoning every later batch write.
        for key, value in fields.items():
            if jsonio.too_deep(value, limit):
                raise InvalidInput(
                    f"{self.store.path}: {where}, field {key!r}: the value is nested too "
                    f"deeply to be stored (tasks.json allows {jsonio.MAX_DEPTH} levels)"
                )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("CoalescingWriter is closed")

    def _mark(self) -> None:
        if self._since is None:
            self._since = time.monotonic()
            self._cond.notify_all()

    def flush(self) -> None:
        """Write every pending change now (from the calling thread)."""
        with self._io:
            with self._cond:
                tasks, top, since = self._tasks, self._top, self._since
                self._tasks, self._top, self._since = {}, {}, None
            if since is None:
                return
            started = time.monotonic()
            try:
                result = self.store.apply(tasks, top)
            except BaseException:
                self._put_back(tasks, top, since)
                raise
            with self._cond:
                self._last_write = time.monotonic()
                self._last_cost = self._last_write - started
                if result.written:
                    self._writes += 1
                self.missing.update(result.missing)
                self.error = None

    def _put_back(
        self, tasks: dict[str, dict[str, Any]], top: dict[str, Any], since: float
    ) -> None:
        with self._cond:
            for tid, fields in self._tasks.items():  # changes made meanwhile are newer
                tasks.setdefault(tid, {}).update(fields)
            top.update(self._top)
            self._tasks, self._top = tasks, top
            self._since = since if self._since is None else min(since, self._since)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._since is None:
                        self._cond.wait()
                        continue
                    # A big file takes long to write: space writes out so that writing
                    # never takes more than a quarter of the time.
                    gap = max(self.interval, 3 * self._last_cost)
                    left = max(self._since, self._last_write) + gap - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                else:
                    return  # close() writes what is left from its own thread
            try:
                self.flush()
            except Exception as e:  # kept pending; retried after another interval
                log.warning("could not write %s (will retry): %s", self.store.path, e)
                with self._cond:
                    self.error = e
                    self._last_write = time.monotonic()

    def close(self) -> None:
        """Stop the background writer and write whatever is pending."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self.flush()
        except UnsafePath:
            raise  # a link planted during the run: refused as such
        except InvalidInput as e:
            # The changes are a run's: its work is done (and merged), so this is never
            # "bad input, nothing was changed" (exit 2).
            raise SpecexecError(
                f"{self.store.path}: the run's last task changes could not be recorded "
                f"({e}); each transition is in {self.store.spec_dir / RUNTIME_DIR}/events.jsonl"
            ) from None

    def __enter__(self) -> CoalescingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
