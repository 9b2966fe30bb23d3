"""``.specexec/events.jsonl``: the append-only record of every state transition.

Each event is one JSON object on one line, written with a single ``write()`` on an
``O_APPEND`` descriptor, so lines from concurrent writers never interleave and an event
is in the file before the caller acts on the transition it records.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Final

from specexec import system
from specexec.errors import SpecexecError
from specexec.tasksfile.store import open_error, runtime_dir
from specexec.tasksfile.types import RUNTIME_DIR

log = logging.getLogger(__name__)

EVENTS_FILE: Final = "events.jsonl"


def events_path(spec_dir: str | os.PathLike[str]) -> Path:
    return Path(spec_dir) / RUNTIME_DIR / EVENTS_FILE


class EventLog:
    """Appends events for one spec folder (and one run, if ``run_id`` is given)."""

    REOPEN_CHECK_S = 1.0

    def __init__(self, spec_dir: str | os.PathLike[str], run_id: str | None = None) -> None:
        self.spec_dir = Path(spec_dir)
        self.path = events_path(self.spec_dir)
        self.run_id = run_id
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._checked = 0.0  # when the path was last seen to be our file
        self._finalizer: weakref.finalize[[int], EventLog] | None = None

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Record one event; returns it. Free fields follow the standard ones
        (``time``, ``kind``, ``run_id``, ``pid``); pass ``**{"from": ...}`` for keywords."""
        record: dict[str, Any] = {
            "time": system.utc_iso(ms=True),
            "kind": kind,
            "run_id": self.run_id,
            "pid": os.getpid(),
        }
        record.update(fields)
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        self._write(line.encode("utf-8", "backslashreplace"))
        return record

    def transition(
        self,
        task: str,
        from_: str | None,
        to: str,
        *,
        attempt: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Record a task's status change (kind ``transition``)."""
        std = {"task": task, "from": from_, "to": to, "attempt": attempt}
        return self.append("transition", **std, **fields)

    def _write(self, data: bytes) -> None:
        with self._lock:
            fd = self._open()
            try:
                written = os.write(fd, data)
                while written < len(data):  # not expected for regular files
                    written += os.write(fd, data[written:])
            except OSError as e:
                raise SpecexecError(f"{self.path}: cannot append: {e.strerror or e}") from None

    def _open(self) -> int:
        """The append descriptor, kept open between events (a run appends thousands);
        opened again if the file was removed or replaced meanwhile. That is looked at
        once per REOPEN_CHECK_S, not per event: the run loop appends, and every system
        call it makes hands the GIL to the task threads."""
        if self._fd is not None:
            now = time.monotonic()
            if now - self._checked < self.REOPEN_CHECK_S:
                return self._fd
            try:
                if _same_inode(os.fstat(self._fd), os.lstat(self.path)):
                    self._checked = now
                    return self._fd
            except OSError:
                pass
            self.close()
        try:
            runtime_dir(self.spec_dir)
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError as e:
            raise open_error(self.path, "open", e) from None
        try:
            # A crash mid-line leaves no newline; start ours on a line of its own.
            # (At worst this adds an empty line, which readers skip.)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")
        except OSError as e:
            os.close(fd)
            raise SpecexecError(f"{self.path}: cannot append: {e.strerror or e}") from None
        self._fd = fd
        self._checked = time.monotonic()
        self._finalizer = weakref.finalize(self, os.close, fd)
        return fd

    def close(self) -> None:
        """Close the descriptor (it is also closed when the log is garbage-collected)."""
        if self._finalizer is not None:
            self._finalizer()
        self._fd = self._finalizer = None


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def read_events(spec_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events of a spec folder, oldest first. A truncated last line (a writer died
    mid-write) is ignored; any other unreadable line is skipped with a warning."""
    path = events_path(spec_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SpecexecError(f"{path}: cannot read: {e.strerror or e}") from None
    lines = data.split(b"\n")
    events: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            if number < len(lines):  # the last element has no newline: truncated
                log.warning("%s:%d: skipped an unreadable line", path, number)
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
