"""The daemon behind ``specexec watch DIR`` (DESIGN §6): runs the spec folders dropped into
a directory. The one module that uses watchdog.

Threads: watchdog's observer thread calls the handler, which only records *what* changed
(a spec folder, or a directory to scan) with a time stamp; the serve loop (the caller's
thread) owns every decision: it debounces, filters, starts one run thread per spec
folder through the ordinary run machinery (``run.session.run_specs``), and restarts the
observer if it dies. All runs share one job pool (``slots``) of ``--jobs`` workers.

Its own writes never cause a run: a spec folder is looked at only when it is not
running, and only when its ``tasks.json`` (content, owner, mode) differs from what the
daemon last decided about; after a run, only tasks that became pending during it start
another run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from specexec import system
from specexec.errors import EXIT_INTERRUPTED, EXIT_OK, Busy, InvalidInput, SpecexecError
from specexec.git.repo import find_repo_root
from specexec.run import checks, recovery
from specexec.run.executor import RunOptions
from specexec.run.progress import clean, describe
from specexec.run.report import summary_lines
from specexec.run.session import run_specs
from specexec.tasksfile import jsonio
from specexec.tasksfile.runlock import RunLock
from specexec.tasksfile.schema import load_spec
from specexec.tasksfile.store import runtime_dir
from specexec.tasksfile.types import RUNTIME_DIR, TASKS_FILE
from specexec.workers.resolve import repo_allows_commands

log = logging.getLogger("specexec.daemon")

REFUSED_FILE: Final = "refused.json"

# Events that can mean "a tasks.json appeared or changed". Opens and read-only closes
# are left out: the daemon reads tasks.json itself, and must not wake itself up.
EVENT_TYPES: Final[list[type[FileSystemEvent]]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileAttribEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirAttribEvent,
]


# -- spec folders on disk -------------------------------------------------------------


def find_spec_dirs(root: Path) -> list[Path]:
    """Every folder at or under ``root`` holding a tasks.json, skipping hidden folders
    (``.git``, ``.specexec``, ...) and never following symbolic links."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if TASKS_FILE in filenames:
            found.append(Path(dirpath))
    return found


def _visible_entries(path: str | None) -> Iterator[os.DirEntry[str]]:
    """os.scandir without hidden entries: what the polling observer snapshots."""
    with os.scandir(path) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    return iter(entries)


@dataclass(frozen=True, slots=True)
class Signature:
    """What the daemon decides on: tasks.json's content, who may write the folder, and
    the repository's pyproject.toml (``[tool.specexec] allow_commands``)."""

    digest: str
    file_uid: int
    file_mode: int
    dir_uid: int
    dir_mode: int
    config_mtime_ns: int | None = None


def signature(spec_dir: Path) -> Signature | None:
    """The spec folder's signature, or None when it has no readable tasks.json."""
    path = spec_dir / TASKS_FILE
    try:
        dst = os.lstat(spec_dir)
        fst = os.lstat(path)
        h = hashlib.sha256()
        if stat.S_ISREG(fst.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                h.update(f.read(jsonio.MAX_BYTES + 1))
    except OSError:
        return None
    repo = find_repo_root(spec_dir)
    config: int | None = None
    if repo is not None:
        with contextlib.suppress(OSError):
            config = os.stat(repo / "pyproject.toml").st_mtime_ns
    return Signature(h.hexdigest(), fst.st_uid, fst.st_mode, dst.st_uid, dst.st_mode, config)


def trust_problem(spec_dir: Path) -> str | None:
    """Why a dropped spec folder must not be run: someone else may write it."""
    me = os.getuid()
    for path in (spec_dir, spec_dir / TASKS_FILE):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return f"{path} is a symbolic link"
        if st.st_uid != me:
            return (
                f"{path} is owned by uid {st.st_uid}, not by the user running the daemon (uid {me})"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (
                f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run: chmod go-w {path}"
            )
    return None


def _digest_of(spec_dir: Path) -> str | None:
    sig = signature(spec_dir)
    return sig.digest if sig is not None else None


def write_refusal(spec_dir: Path, reason: str, problems: Sequence[str] = ()) -> None:
    """Record why the daemon will not run this folder, for ``specexec status``."""
    doc = {
        "time": system.utc_iso(),
        "reason": reason,
        "problems": list(problems),
        "tasks_sha256": _digest_of(spec_dir),
    }
    # Not durable: a refusal lost in a crash is made again at the next look.
    path = runtime_dir(spec_dir) / REFUSED_FILE
    system.atomic_write(path, json.dumps(doc, indent=2) + "\n", durable=False)


def clear_refusal(spec_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (spec_dir / RUNTIME_DIR / REFUSED_FILE).unlink()


def read_refusal(spec_dir: Path) -> dict[str, Any] | None:
    """The daemon's refusal of this spec folder, if it is about the current tasks.json."""
    path = spec_dir / RUNTIME_DIR / REFUSED_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("reason"), str):
        return None
    if doc.get("tasks_sha256") != _digest_of(spec_dir):
        return None  # tasks.json changed since: the daemon will look again
    return doc


# -- logging of runs ------------------------------------------------------------------


class SpecLogReporter:
    """Run events as daemon log lines, each naming the spec."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "run_finished":
            log.info(
                "[%s] run %s finished: %s",
                self.spec,
                fields.get("run_id"),
                summary_lines(fields)[0],
            )
            return
        line = describe(kind, fields)
        if line is not None:
            log.info("[%s] %s", self.spec, line)

    def close(self) -> None:
        pass


# -- the file event handler -------------------------------------------------------------


class GuardedHandler(FileSystemEventHandler):
    """Passes each event to ``on_event``; an error is logged, never raised, so that it
    cannot kill watchdog's dispatch thread (which would silently stop all watching)."""

    def __init__(self, on_event: Callable[[FileSystemEvent], None]) -> None:
        super().__init__()
        self.on_event = on_event
        self.errors = 0

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.on_event(event)
        except Exception:  # the observer thread must survive anything
            self.errors += 1
            log.exception("error while handling %r (ignored; watching goes on)", event)


# -- the daemon -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Result:
    kind: str  # done | busy | refused | error
    code: int | None = None
    message: str = ""
    problems: tuple[str, ...] = ()


@dataclass(slots=True)
class _Running:
    spec_dir: Path
    name: str
    repo: Path | None
    pending: frozenset[str]
    thread: threading.Thread | None = None
    result: _Result | None = None


@dataclass(slots=True)
class _Marks:
    """What the observer thread reported, waiting for its quiet time (monotonic times)."""

    specs: dict[Path, float] = field(default_factory=dict)
    scans: dict[Path, float] = field(default_factory=dict)


class Daemon:
    """Watches ``root`` and runs the pending tasks of the spec folders under it."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        jobs: int = 4,
        polling: bool = False,
        allow_commands: bool = False,
        grace_s: float = 10.0,
        rescan_s: float = 30.0,
        debounce_s: float = 0.2,
        poll_interval_s: float = 1.0,
        busy_retry_s: float = 2.0,
        kill_grace_s: float = 1.0,
        native_observer: Callable[[], BaseObserver] = Observer,
        run_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(os.path.abspath(root))
        # More RunOptions for every run (--max-cost, --max-memory-percent, ...).
        self.run_options = dict(run_options or {})
        if not self.root.is_dir():
            raise InvalidInput(f"{root}: no such directory")
        self.jobs = jobs
        self.polling = polling
        self.allow_commands = allow_commands
        self.grace_s = grace_s
        self.rescan_s = rescan_s
        self.debounce_s = debounce_s
        self.poll_interval_s = poll_interval_s
        self.busy_retry_s = busy_retry_s
        self.kill_grace_s = kill_grace_s  # TERM -> KILL of a worker once the grace is over
        self.native_observer = native_observer

        self.slots = threading.BoundedSemaphore(jobs)  # one job pool across all specs
        self.drain = threading.Event()  # stop starting tasks
        self.cancel = threading.Event()  # stop running tasks (they go back to pending)
        self.handler = GuardedHandler(self.on_fs_event)
        self.observer: BaseObserver | None = None
        self.observer_restarts = 0
        self.runs_started = 0

        self._lock = threading.Lock()  # guards _marks and _finished
        self._marks = _Marks()
        self._finished: list[_Running] = []
        self._wake = threading.Event()
        self._stop_signal: int | None = None
        self._signals = 0
        # Loop-thread state:
        self._running: dict[Path, _Running] = {}
        self._seen: dict[Path, Signature] = {}  # decided about this content: do nothing
        self._retry: dict[Path, float] = {}  # busy: look again at this time
        self._busy_noted: set[Path] = set()

    # -- called from other threads ------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the serve loop to shut down; asked again, running tasks are stopped at once
        instead of after the grace period. Safe in a signal handler: it only stores."""
        if self._stop_signal is None:
            self._stop_signal = signum
        self._signals += 1

    def on_fs_event(self, event: FileSystemEvent) -> None:
        """Record what a file event may mean; decisions are the serve loop's."""
        now = time.monotonic()
        paths = [event.src_path]
        if isinstance(event, FileMovedEvent | DirMovedEvent) and event.dest_path:
            paths.append(event.dest_path)
        woke = False
        with self._lock:
            for raw in paths:
                path = Path(os.fsdecode(raw))
                if not self._visible(path):
                    continue
                if event.is_directory:
                    if isinstance(event, DirCreatedEvent | DirMovedEvent):
                        # A folder moved in comes as one event: its content has to be scanned.
                        self._marks.scans[path] = now
                        woke = True
                    elif isinstance(event, DirAttribEvent) and (path / TASKS_FILE).exists():
                        # `chmod go-w spec/`: a refused folder may be trusted now.
                        self._marks.specs[path] = now
                        woke = True
                elif path.name == TASKS_FILE:
                    self._marks.specs[path.parent] = now
                    woke = True
        if woke:
            self._wake.set()

    def _visible(self, path: Path) -> bool:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return False
        return not any(part.startswith(".") for part in rel.parts)

    # -- the observer ---------------------------------------------------------------------

    def _start_observer(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(self.root))
        if not self.polling:
            obs: BaseObserver | None = None
            try:
                obs = self.native_observer()
                obs.schedule(self.handler, str(self.root), recursive=True, event_filter=EVENT_TYPES)
                obs.start()
                self.observer = obs
                log.info("watching %s (native file events)", self.root)
                return
            except OSError as e:
                # inotify limits (ENOSPC: too many watches, EMFILE: too many instances),
                # or no inotify at all.
                if obs is not None:
                    with contextlib.suppress(Exception):
                        obs.stop()
                log.warning(
                    "native file events unavailable (%s): polling every %gs instead",
                    e,
                    self.poll_interval_s,
                )
                self.polling = True
        pobs = PollingObserverVFS(os.stat, _visible_entries, polling_interval=self.poll_interval_s)
        pobs.schedule(self.handler, str(self.root), recursive=True, event_filter=EVENT_TYPES)
        pobs.start()
        self.observer = pobs
        log.info("watching %s (polling every %gs)", self.root, self.poll_interval_s)

    def observer_healthy(self) -> bool:
        obs = self.observer
        return obs is not None and obs.is_alive() and all(e.is_alive() for e in obs.emitters)

    def _restart_observer(self) -> None:
        old, self.observer = self.observer, None
        if old is not None:
            self.observer_restarts += 1
            log.error("the file watcher stopped unexpectedly: restarting it and rescanning")
            with contextlib.suppress(Exception):
                old.stop()
                old.join(timeout=2)
        try:
            self._start_observer()
        except OSError as e:
            log.error("cannot watch %s: %s (trying again shortly)", self.root, e)
        self._mark_scan(self.root, due_now=True)  # events may have been lost meanwhile

    def _mark_scan(self, path: Path, *, due_now: bool = False) -> None:
        with self._lock:
            self._marks.scans[path] = time.monotonic() - (self.debounce_s if due_now else 0)

    # -- the serve loop -------------------------------------------------------------------

    def serve(self) -> int:
        """Run until ``request_stop``; the exit code (0, or 130 after SIGINT)."""
        self._start_observer()
        log.info(
            "specexec watch: --jobs %d, grace %gs, rescan every %gs%s",
            self.jobs,
            self.grace_s,
            self.rescan_s,
            ", tasks' own commands allowed" if self.allow_commands else "",
        )
        self._mark_scan(self.root, due_now=True)  # the initial scan, once events flow
        next_rescan = time.monotonic() + self.rescan_s
        next_health = time.monotonic() + 1.0
        try:
            while self._stop_signal is None:
                now = time.monotonic()
                self._collect_finished()
                specs, scans = self._due(now)
                for d in scans:
                    specs.update(find_spec_dirs(d) if d.is_dir() else ())
                for d in [d for d, t in self._retry.items() if t <= now]:
                    del self._retry[d]
                    specs.add(d)
                if now >= next_rescan:
                    specs.update(self._full_rescan())
                    next_rescan = now + self.rescan_s
                for d in sorted(specs):
                    self._consider_safely(d)
                if now >= next_health:
                    if not self.observer_healthy():
                        self._restart_observer()
                    # Checked every second; a watcher that cannot start is retried slower.
                    next_health = now + (1.0 if self.observer is not None else 10.0)
                self._wake.wait(self._sleep_time(next_rescan, next_health))
                self._wake.clear()
        finally:
            self._shutdown()
        return EXIT_INTERRUPTED if self._stop_signal == signal.SIGINT else EXIT_OK

    def _due(self, now: float) -> tuple[set[Path], list[Path]]:
        with self._lock:
            marks = self._marks
            specs = {d for d, t in marks.specs.items() if now - t >= self.debounce_s}
            scans = [d for d, t in marks.scans.items() if now - t >= self.debounce_s]
            for d in specs:
                del marks.specs[d]
            for d in scans:
                del marks.scans[d]
        return specs, scans

    def _sleep_time(self, next_rescan: float, next_health: float) -> float:
        now = time.monotonic()
        deadlines = [next_rescan, next_health, *self._retry.values()]
        with self._lock:
            deadlines += [t + self.debounce_s for t in self._marks.specs.values()]
            deadlines += [t + self.debounce_s for t in self._marks.scans.values()]
        # Capped: a signal handler only sets a flag, seen at the next turn.
        return min(max(min(deadlines) - now, 0.01), 0.2)

    def _full_rescan(self) -> set[Path]:
        found = set(find_spec_dirs(self.root))
        for d in list(self._seen):
            if d not in found:
                del self._seen[d]  # gone
        return found

    def _consider_safely(self, spec_dir: Path) -> None:
        try:
            self._consider(spec_dir)
        except Exception:  # one bad folder must not stop the daemon
            log.exception("%s: unexpected error (the other spec folders go on)", spec_dir)
            sig = signature(spec_dir)
            if sig is not None:
                self._seen[spec_dir] = sig

    def _consider(self, spec_dir: Path) -> None:
        """Start a run of this spec folder if it has pending tasks and may run."""
        if spec_dir in self._running or self.drain.is_set():
            return  # the end of its run looks at it again
        sig = signature(spec_dir)
        if sig is None:
            self._seen.pop(spec_dir, None)
            return
        if self._seen.get(spec_dir) == sig:
            return
        problem = trust_problem(spec_dir)
        if problem is not None:
            self._refuse(spec_dir, sig, problem)
            return
        try:
            spec = load_spec(spec_dir)[0]
            repo = find_repo_root(spec.dir)
            allow = self.allow_commands or repo_allows_commands(repo)
        except InvalidInput as e:
            self._seen[spec_dir] = sig
            log.error(
                "%s: not run: %s%s",
                spec_dir / TASKS_FILE,
                e,
                "".join(f"\n    {p}" for p in e.problems if p != str(e)),
            )
            return
        holder = RunLock.holder(spec_dir)
        pending = frozenset(t.id for t in spec.tasks if t.status == "pending")
        cleanup = False
        if holder is None:
            # Nobody runs it: what a run that died (a daemon killed hard) left is for the
            # next run's recovery (in_progress back to pending, merged branches removed).
            pending |= recovery.left_in_progress(spec)
            cleanup = not pending and recovery.left_merged_branches(spec, repo)
        if not pending and not cleanup:
            self._seen[spec_dir] = sig
            clear_refusal(spec_dir)
            return
        same_name = [r for r in self._running.values() if r.name == spec.name and r.repo == repo]
        if holder is not None or same_name:
            if spec_dir not in self._busy_noted:
                self._busy_noted.add(spec_dir)
                who = (
                    f"pid {holder.get('pid')}"
                    if holder is not None
                    else f"the daemon, for {same_name[0].spec_dir} (same spec name)"
                )
                log.info("[%s] busy: being run by %s; will try again", spec.name, who)
            self._retry[spec_dir] = time.monotonic() + self.busy_retry_s
            return
        self._busy_noted.discard(spec_dir)
        opts = RunOptions(
            jobs=self.jobs, allow_commands=allow, grace_s=self.kill_grace_s, **self.run_options
        )
        # The run's own start-up checks (read-only), first: a folder they refuse is logged
        # as refused, never as a run that is about to start.
        if problems := checks.problems(spec, opts):
            self._refuse(spec_dir, sig, f"{len(problems)} problem(s) refuse the run", problems)
            return
        clear_refusal(spec_dir)
        running = _Running(spec_dir, spec.name, repo, pending)
        running.thread = threading.Thread(
            target=self._run_thread,
            args=(running, opts),
            name=f"specexec-run-{spec.name}",
            daemon=True,
        )
        self._running[spec_dir] = running
        self.runs_started += 1
        if cleanup:
            log.info("[%s] run: removing the task branches a killed run left", spec.name)
        else:
            log.info("[%s] run: %d pending task(s) in %s", spec.name, len(pending), spec_dir)
        running.thread.start()

    def _run_thread(self, running: _Running, opts: RunOptions) -> None:
        result: _Result
        try:
            code = run_specs(
                [str(running.spec_dir)],
                opts,
                SpecLogReporter(running.name),
                cancel=self.cancel,
                slots=self.slots,
                drain=self.drain,
            )
            result = _Result("done", code)
        except Busy as e:
            result = _Result("busy", message=str(e))
        except InvalidInput as e:
            result = _Result("refused", message=str(e), problems=e.problems)
        except SpecexecError as e:
            result = _Result("error", message=str(e))
        except Exception as e:  # reported by the loop; the daemon goes on
            log.exception("[%s] run crashed", running.name)
            result = _Result("error", message=f"internal error: {type(e).__name__}: {e}")
        running.result = result
        with self._lock:
            self._finished.append(running)
        self._wake.set()

    def _collect_finished(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        for r in finished:
            if r.thread is not None:
                r.thread.join()
            del self._running[r.spec_dir]
            try:
                self._after_run(r)
            except Exception:  # the daemon goes on; tasks.json changing brings it back
                log.exception("[%s] unexpected error after the run", r.name)

    def _after_run(self, r: _Running) -> None:
        res = r.result
        assert res is not None
        sig = signature(r.spec_dir)
        if res.kind == "busy":
            log.info("[%s] busy: %s; will try again", r.name, res.message)
            self._retry[r.spec_dir] = time.monotonic() + self.busy_retry_s
        elif res.kind == "refused":
            if sig is not None:
                self._refuse(r.spec_dir, sig, res.message, res.problems)
        elif res.kind == "error":
            log.error("[%s] run failed: %s", r.name, res.message)
            if sig is not None:
                self._seen[r.spec_dir] = sig  # look again once tasks.json changes
        elif not self.drain.is_set() and sig is not None:
            try:
                spec = load_spec(r.spec_dir)[0]
            except InvalidInput:
                self._consider_safely(r.spec_dir)  # it logs the problems
                return
            still = frozenset(t.id for t in spec.tasks if t.status == "pending")
            if still & r.pending:
                # The run could not start them (say, a blocker left in_progress): running
                # again would change nothing. Wait for tasks.json to change.
                self._seen[r.spec_dir] = sig
                log.warning(
                    "[%s] %d task(s) still pending after the run: %s",
                    r.name,
                    len(still & r.pending),
                    ", ".join(sorted(still & r.pending)[:10]),
                )
            elif still:
                self._consider_safely(r.spec_dir)  # tasks added during the run
            else:
                self._seen[r.spec_dir] = sig

    def _refuse(
        self, spec_dir: Path, sig: Signature, reason: str, problems: Sequence[str] = ()
    ) -> None:
        self._seen[spec_dir] = sig
        details = "".join(f"\n    {clean(p)}" for p in problems if p != reason)
        log.error("%s: refused: %s%s", spec_dir, reason, details)
        try:
            write_refusal(spec_dir, reason, problems)
        except (OSError, SpecexecError) as e:
            log.warning("%s: cannot record the refusal: %s", spec_dir, e)

    def _shutdown(self) -> None:
        """Start no task; give running ones the grace period; then stop them (pending)."""
        self.drain.set()
        if self._running:
            log.info(
                "stopping: no new task starts; %d running spec(s) get %gs to finish",
                len(self._running),
                self.grace_s,
            )
        deadline = time.monotonic() + self.grace_s
        while self._running and time.monotonic() < deadline and self._signals < 2:
            self._wake.wait(min(0.1, max(deadline - time.monotonic(), 0.0)))
            self._wake.clear()
            self._collect_finished()
        if self._running:
            log.info(
                "grace period over: stopping the tasks of %s; they stay pending",
                ", ".join(sorted(r.name for r in self._running.values())),
            )
            self.cancel.set()
            for r in list(self._running.values()):
                if r.thread is not None:
                    r.thread.join(timeout=60)
            self._collect_finished()
        obs, self.observer = self.observer, None
        if obs is not None:
            with contextlib.suppress(Exception):
                obs.stop()
                obs.join(timeout=2)
        log.info("stopped")
