"""Waiting on many workers from the run loop's thread (Linux pidfds in one poll set).

A task whose steps never block but for its processes (isolation "none": no git) needs no
thread of its own: the loop runs its steps, starts each process, and waits on the pidfds
of all of them at once beside its own wake-up pipe. Where waiting would block the loop (a
group to stop after a timeout, a cancel, or members its leader left running), the task
goes on in a thread of the executor's pool. Without pidfds every task takes a thread.

Owns: the poll set, the wake pipe, the workers it waits on. Processes are started and
ended by processes.py (start_worker, Worker); what a task does is attempt's and the
executor's.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from specexec.run.attempt import Steps, drive
from specexec.run.processes import (
    ProcessOutcome,
    Worker,
    pidfds_work,
    start_worker,
    wait_for,
)

K = TypeVar("K")
R = TypeVar("R")


@dataclass(slots=True)
class _Waiting(Generic[K, R]):
    key: K
    steps: Steps[R]
    worker: Worker


class Reactor(Generic[K, R]):
    """Drives tasks' steps in the calling thread; ``post`` gets each one's result."""

    def __init__(self, pool: Executor, post: Callable[[R], None], cancel: threading.Event) -> None:
        self.pool = pool
        self.post = post
        self.cancel = cancel
        self.available = pidfds_work()
        # select.poll, not selectors: the same here, and 3 ms less of start-up.
        self.poller = select.poll()
        self._wake_r, self._wake_w = os.pipe()  # not inherited (PEP 446)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, select.POLLIN)
        self.waiting: dict[int, _Waiting[K, R]] = {}  # pidfd -> task

    def wake(self) -> None:
        """Make a ``wait`` in progress return (any thread)."""
        with contextlib.suppress(BlockingIOError):  # a byte is pending: it wakes anyway
            os.write(self._wake_w, b"\0")

    def advance(
        self,
        key: K,
        steps: Steps[R],
        value: ProcessOutcome | None,
        error: BaseException | None = None,
    ) -> None:
        """Run ``steps`` on from ``value`` (or ``error`` raised in them) until they wait
        for a process or end."""
        while True:
            try:
                # None starts them
                req = steps.send(value) if error is None else steps.throw(error)  # type: ignore[arg-type]
            except StopIteration as stop:
                self.post(stop.value)
                return
            error = None
            try:
                started = start_worker(req)
            except Exception as e:  # the task's steps say what it means
                error = e
                continue
            if isinstance(started, ProcessOutcome):
                value = started  # it never ran (cannot start, cancelled): on at once
                continue
            if started.pidfd is None:  # none to be had (out of descriptors): a thread waits
                self.pool.submit(self._wait_in_thread, _Waiting(key, steps, started))
                return
            self.waiting[started.fileno()] = _Waiting(key, steps, started)
            self.poller.register(started.fileno(), select.POLLIN)
            return

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a worker to exit, a ``wake``, or a worker's next
        moment (its registration, its deadline); handle what came; look at the cancel."""
        now = time.monotonic()
        for w in self.waiting.values():
            for at in (w.worker.register_at, w.worker.deadline):
                if at is not None:
                    timeout = min(timeout, at - now)
        for fd, _ in self.poller.poll(max(timeout, 0.0) * 1000):
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            else:
                self._exited(self.waiting[fd])
        self._timers()

    def _exited(self, w: _Waiting[K, R]) -> None:
        self._forget(w)
        try:
            out = w.worker.finish_now() if w.worker.exited() else None
        except Exception as e:
            self.advance(w.key, w.steps, None, e)
            return
        if out is None:  # something of it is left to stop, which may take a while
            self._in_thread(w, timed_out=False, cancelled=False)
        else:
            self.advance(w.key, w.steps, out)

    def _timers(self) -> None:
        now = time.monotonic()
        cancelled = self.cancel.is_set()
        for w in list(self.waiting.values()):
            worker = w.worker
            if cancelled:
                self._forget(w)
                self._in_thread(w, timed_out=False, cancelled=True)
            elif worker.deadline is not None and now >= worker.deadline:
                self._forget(w)
                self._in_thread(w, timed_out=True, cancelled=False)
            elif worker.register_at is not None and now >= worker.register_at:
                worker.register()

    def _forget(self, w: _Waiting[K, R]) -> None:
        fd = w.worker.fileno()
        self.poller.unregister(fd)
        del self.waiting[fd]

    def _in_thread(self, w: _Waiting[K, R], **end: bool) -> None:
        self.pool.submit(self._finish, w, end)

    def _wait_in_thread(self, w: _Waiting[K, R]) -> None:
        try:
            timed_out, cancelled = wait_for(w.worker, self.cancel)
        except BaseException as e:
            w.worker.stop(min(w.worker.grace_s, 1.0))
            self._finish(w, {}, e)
        else:
            self._finish(w, {"timed_out": timed_out, "cancelled": cancelled})

    def _finish(
        self, w: _Waiting[K, R], end: dict[str, Any], error: BaseException | None = None
    ) -> None:
        try:
            out = w.worker.finish(**end)
        except BaseException as e:
            error = error or e
        if error is not None:
            self.post(drive(w.steps, error=error))
        else:
            self.post(drive(w.steps, out))

    def close(self) -> None:
        """At the run's end. Anything still waited on (only after an error in the loop)
        is stopped here, its steps dropped."""
        for w in list(self.waiting.values()):
            self._forget(w)
            w.worker.finish(cancelled=True)
            w.steps.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
