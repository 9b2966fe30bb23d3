"""Warm worktrees: a pool per repository, reused from task to task and from run to run.

A fresh ``git worktree add`` writes every file of the repository and starts without the
ignored build caches, virtual environments and dependency folders a task may need.
Switching a kept worktree to another commit rewrites only the files that differ.

Layout (beside the fresh worktrees of ``specexec.git.workspace``)::

    <worktree root>/pool/<n>         slot n (0 <= n < --jobs): a worktree git knows
    <worktree root>/pool/<n>.owner   while a task uses it: owner (pid, start time,
                                     host) + spec, task, branch, base, stash entries

The worktree root is outside the git dir and the working tree (``repo.worktree_root``).

A slot is *in use* while this pool handed it out, or another process holds it (its
hold, ``owners.take_hold``: an flock the kernel drops when the holder dies), or, where
its hold says nothing (no lock file: a worker deleted it) or a marker is left, a process
still works inside it. The marker (pid, start time, task) is a record only: a worker
deleting or forging it never frees a slot in use nor blocks a free one.
Taking a slot (the repository lock held): take its hold, write our marker, point the task's branch
``specexec/<spec>@<task>`` and its base ref at the integration tip, point the slot's HEAD
at the branch. Then, unlocked (the slot is ours), restore it: clear the per-worktree git
state, ``read-tree --reset -u HEAD``, ``git clean``, fix modes, and check with ``git
status`` that it is clean. A slot that cannot be restored is deleted and created again;
it is never handed out dirty. Giving it back: drop the task's stash entries, detach HEAD
(so the branch can be deleted), remove the marker.

Failed tasks: their state (tracked and untracked files, not ignored ones) is committed
to the task's branch, which is kept (``git diff specexec/<spec>...specexec/<spec>@<task>``
shows it) and the slot goes back to the pool. If even that commit fails, the slot is
*parked*: kept as it is, with our marker, until this run ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specexec import system
from specexec.errors import GitError, SpecexecError
from specexec.git import refs
from specexec.git.files import add_mode, make_writable, rmtree
from specexec.git.owners import (
    Owner,
    drop_hold,
    hold_mine,
    marked_name,
    marker_file,
    owner_alive,
    processes_inside,
    read_marker,
    read_owner,
    take_hold,
    write_marker,
)
from specexec.git.sparse import PARALLEL_CHECKOUT, set_sparse
from specexec.git.workspace import Workspace, Worktree

_SLOT = re.compile(r"(0|[1-9][0-9]{0,5})")
# Per-worktree git state a fresh worktree does not have: MERGE_HEAD, rebase-merge/,
# rebase-apply/, CHERRY_PICK_HEAD, REVERT_HEAD, BISECT_*, refs/bisect, sequencer/,
# logs/HEAD (the previous tasks' HEAD history), index.lock, locked, modules/ (submodule
# repositories), config.worktree, info/sparse-checkout... everything but these goes.
_ADMIN_KEEP = frozenset({"HEAD", "commondir", "gitdir", "index"})


_UMASK = system.umask()
_FILE_MODE = 0o666 & ~_UMASK  # what git gives a file it checks out
_EXEC_MODE = 0o777 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


class _Dirty(Exception):
    """The slot is not (yet) identical to a fresh checkout."""


@dataclass(frozen=True, slots=True)
class Slot:
    index: int
    path: Path


class WorktreePool:
    """At most ``size`` worktrees of one repository, handed to one task at a time.

    Thread-safe; several processes may share a pool (each slot has one owner).
    """

    def __init__(self, ws: Workspace, size: int, *, clean_ignored: bool = False) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, not {size}")
        self.ws = ws
        self.size = size
        self.clean_ignored = clean_ignored
        self._guard = threading.Lock()
        self._held: dict[Path, Worktree] = {}
        self._parked: set[Path] = set()
        # What happened, for reports and the benchmark.
        self.stats = {"created": 0, "reused": 0, "rebuilt": 0, "overflow": 0, "parked": 0}

    def __repr__(self) -> str:
        return f"WorktreePool({str(self.ws.root)!r}, size={self.size})"

    def slot_path(self, index: int) -> Path:
        return self.ws.pool_dir / str(index)

    def owns(self, wt: Worktree) -> bool:
        """Is ``wt`` a pool slot (rather than a fresh worktree made because none was free)?"""
        return wt.path.parent == self.ws.pool_dir

    # -- opening and closing ----------------------------------------------------------

    def open(self) -> list[str]:
        """Reclaim the slots of dead runs; delete free slots beyond ``size``. What changed."""
        notes: list[str] = []
        trim: list[Slot] = []
        with self.ws.locked():
            for slot in _slots(self.ws):
                if slot.path in self._busy() or not _take(self.ws, slot):
                    continue
                owner = read_owner(slot.path)
                if owner is not None:
                    _reclaim(self.ws, slot)
                    notes.append(f"reclaimed {slot.path} ({_gone(owner)})")
                if slot.index >= self.size:
                    trim.append(slot)  # held while its files go
                else:
                    drop_hold(self.ws.hold_file(slot.path))
        for slot in trim:
            _discard(self.ws, slot)
            notes.append(f"removed {slot.path} (beyond --jobs {self.size})")
        return notes

    def _busy(self) -> set[Path]:
        with self._guard:
            return {*self._held, *self._parked}

    def close(self) -> None:
        """Give back what is still held; parked slots become free (the next run's)."""
        with self._guard:
            held = list(self._held.values())
            parked = set(self._parked)
            self._parked.clear()
        for wt in held:
            if wt.path not in parked:
                self.release(wt)
        if parked:
            with self.ws.locked():
                for path in parked:
                    if hold_mine(self.ws.hold_file(path)):
                        marker_file(path).unlink(missing_ok=True)
                        drop_hold(self.ws.hold_file(path))
            with self._guard:
                for path in parked:
                    self._held.pop(path, None)

    def __enter__(self) -> WorktreePool:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- taking and giving back -------------------------------------------------------

    def acquire(self, spec: str, task_id: str, *, sparse: Sequence[str] | None = None) -> Worktree:
        """A worktree on a fresh ``specexec/<spec>@<task>`` at the integration tip.

        Identical to a fresh checkout of that commit for every tracked and untracked
        file (ignored files are kept unless ``clean_ignored``). ``sparse``: patterns of
        ``workspace.checkout_patterns``. When every slot is in use (another run shares
        the pool), a fresh worktree is made instead.
        """
        ws = self.ws
        with ws.locked():
            base = ws.require_integration_tip(spec)
            slot = self._claim(ws.task_record(spec, task_id, base))
            if slot is not None:
                try:
                    branch = ws.start_task_branch(spec, task_id, base)
                    admin = ws.admin_dir(slot.path) if slot.path.is_dir() else None
                    if admin is not None:
                        refs.set_head(admin, refs.heads(branch))
                except BaseException:
                    marker_file(slot.path).unlink(missing_ok=True)
                    drop_hold(ws.hold_file(slot.path))
                    raise
        if slot is None:
            with self._guard:
                self.stats["overflow"] += 1
            return ws.create_worktree(spec, task_id, sparse=sparse)
        wt = Worktree(slot.path, branch, base, spec, task_id, sparse=sparse is not None)
        with self._guard:
            self._held[slot.path] = wt
        try:
            self._prepare(slot, admin, wt, sparse)
        except BaseException:
            self._forget(wt)
            with ws.locked():
                if hold_mine(ws.hold_file(slot.path)):
                    marker_file(slot.path).unlink(missing_ok=True)
                    drop_hold(ws.hold_file(slot.path))
                ws.delete_task_branches([(spec, task_id)])  # the slot is idle: not checked out
            raise
        return wt

    def release(self, wt: Worktree, *, delete_branch: bool = False) -> None:
        """Give the worktree back (a fresh one is removed), deleting its branch if asked."""
        if not self.owns(wt):
            self.ws.remove_worktree(wt, delete_branch=delete_branch)
            return
        ws = self.ws
        with ws.locked():
            if hold_mine(ws.hold_file(wt.path)):
                admin = ws.admin_dir(wt.path)
                ws.drop_task_stashes(wt.path, admin)
                if admin is not None:
                    # Detached, so that the branch is not "checked out" and can be deleted.
                    refs.set_head(admin, wt.base)
                if delete_branch:
                    ws.delete_task_branches([(wt.spec, wt.task_id)])
                marker_file(wt.path).unlink(missing_ok=True)
                drop_hold(ws.hold_file(wt.path))
        self._forget(wt)

    def keep_failed(self, wt: Worktree, message: str) -> Path | None:
        """A failed task's worktree: where its state can be inspected on disk, or None.

        A pool slot's state is committed to the task's branch (kept, never merged) and
        the slot goes back to the pool; a fresh worktree stays where it is.
        """
        if not self.owns(wt):
            return wt.path
        for attempt in range(2):
            try:
                self.ws.commit_all(wt, message, land=False)
                break
            except (SpecexecError, OSError):
                if attempt:
                    return self._park(wt)
                with contextlib.suppress(OSError):
                    make_writable(wt.path, files=True)  # a worker made files unreadable
        self.release(wt)
        return None

    # -- internals ----------------------------------------------------------------------

    def _forget(self, wt: Worktree) -> None:
        with self._guard:
            self._held.pop(wt.path, None)

    def _park(self, wt: Worktree) -> Path:
        with self.ws.locked():
            admin = self.ws.admin_dir(wt.path)
            if admin is not None:
                refs.set_head(admin, wt.base)  # the branch stays free for a retry
        with self._guard:
            self._parked.add(wt.path)
            self.stats["parked"] += 1
        return wt.path

    def _claim(self, record: dict[str, Any]) -> Slot | None:
        """Take a free slot (lock held): one that exists if possible; None if all in use."""
        busy = self._busy()  # what this pool handed out: its own state, never a file
        for existing in (True, False):  # a slot that exists if possible
            for index in range(self.size):
                slot = Slot(index, self.slot_path(index))
                if slot.path in busy or slot.path.is_dir() != existing:
                    continue
                if not _take(self.ws, slot):
                    continue
                if read_marker(slot.path) is not None:
                    _reclaim(self.ws, slot)
                slot.path.parent.mkdir(parents=True, exist_ok=True)
                write_marker(slot.path, record)
                return slot
        return None

    def _prepare(
        self, slot: Slot, admin: Path | None, wt: Worktree, sparse: Sequence[str] | None
    ) -> None:
        """Restore the slot, or create it again; raise if even that fails."""
        if admin is not None:
            for attempt in range(2):
                try:
                    self._restore(admin, slot.path, sparse)
                except (GitError, OSError, _Dirty):
                    if attempt == 0:
                        # A worker may have made files or directories read-only.
                        with contextlib.suppress(OSError):
                            make_writable(slot.path, files=True)
                    continue
                with self._guard:
                    self.stats["reused"] += 1
                return
        with self._guard:
            self.stats["rebuilt" if admin is not None else "created"] += 1
        try:
            admin = self._create(slot, wt)
            self._restore(admin, slot.path, sparse)
        except (_Dirty, OSError) as e:
            raise GitError(f"cannot make pool worktree {slot.path}: {e}") from e

    def _create(self, slot: Slot, wt: Worktree) -> Path:
        """(Re)create the slot's worktree, detached at the base, HEAD on the branch."""
        ws = self.ws
        with ws.locked():
            old = ws.admin_dir(slot.path)
            if old is not None:
                rmtree(old)
        rmtree(slot.path)  # the slot is ours: no lock needed for its files
        with ws.locked():
            # The files are written by the restore, unlocked and in parallel.
            return ws.add_worktree(slot.path, wt.base, wt.branch)

    def _restore(self, admin: Path, path: Path, sparse: Sequence[str] | None) -> None:
        """Make the worktree at ``path`` what a fresh checkout of HEAD would be."""
        if not path.is_dir() or path.is_symlink():
            raise _Dirty(f"{path} is missing")
        _reset_admin(admin)
        _fix_dot_git(admin, path)
        # An index with skip-worktree bits (a sparse task before, or a worker) is made
        # full by checking out with the pattern that names everything, as
        # `git sparse-checkout disable` does.
        widen = sparse is None and _index_version(admin) >= 3
        set_sparse(admin, ("/*",) if widen else sparse)
        wt_git = self.ws.worktree_git
        wt_git(admin, path, *PARALLEL_CHECKOUT, "read-tree", "--reset", "-u", "HEAD")
        if widen:
            set_sparse(admin, None)
        entries = _index_entries(wt_git(admin, path, "ls-files", "-v", "-s", "-z").stdout)
        # A worker's `update-index --assume-unchanged` (lower-case tag) hides its edits
        # from read-tree; skip-worktree (S) must not be left in a full checkout.
        stuck = [e for e in entries if e[0].islower() or (sparse is None and e[0] in _SKIPPED)]
        if stuck:
            flags = ["--no-assume-unchanged"] + (["--no-skip-worktree"] if sparse is None else [])
            paths = b"".join(e[2] + b"\0" for e in stuck)
            wt_git(admin, path, "update-index", "-z", *flags, "--stdin", input=paths)
            shown = [e for e in stuck if sparse is None or e[0] not in _SKIPPED]
            if shown:
                files = b"".join(e[2] + b"\0" for e in shown)
                wt_git(admin, path, "checkout-index", "-f", "-u", "-z", "--stdin", input=files)
            entries = _index_entries(wt_git(admin, path, "ls-files", "-v", "-s", "-z").stdout)
        _fix_modes(path, entries)
        # Tracked files are what read-tree wrote. Usually nothing else is left (the
        # worker's new files were committed), so `git clean` runs only if `ls-files`
        # finds something to remove: untracked files, empty directories (which `git
        # status` does not show), and ignored files when they must go too.
        others: tuple[str, ...] = ("ls-files", "-z", "--others", "--directory")
        if not self.clean_ignored:
            others += ("--exclude-standard",)
        if not wt_git(admin, path, *others).stdout:
            return
        # -ff: nested repositories too; -x: ignored files as well, if asked.
        wt_git(admin, path, "clean", "-ffdq", *(("-x",) if self.clean_ignored else ()))
        left = wt_git(
            admin,
            path,
            "status",
            "--porcelain",
            "-z",
            "--untracked-files=normal",
            "--ignore-submodules=none",
            *(("--ignored=matching",) if self.clean_ignored else ()),
        )
        if left.stdout:
            what = ", ".join(left.fields()[:5])
            raise _Dirty(f"{path} still differs from HEAD after cleaning: {what}")


# --- module helpers --------------------------------------------------------------------


# One index entry: (tag, mode, path), bytes as git prints them.
_Entry = tuple[bytes, bytes, bytes]
_SKIPPED = (b"S", b"s")  # skip-worktree: not in the worktree


def _index_entries(out: bytes) -> list[_Entry]:
    """``ls-files -v -s -z``: ``<tag> <mode> <sha> <stage>\t<path>`` NUL ... (fast: a
    large repository has many entries and this runs for every task)."""
    entries: list[_Entry] = []
    for rec in out.split(b"\0"):
        if rec:
            meta, _, path = rec.partition(b"\t")
            entries.append((meta[:1], meta[2:8], path))
    return entries


def _index_version(admin: Path) -> int:
    """2 for an index that cannot hold skip-worktree bits; 0 when there is none."""
    try:
        with open(admin / "index", "rb") as f:
            head = f.read(8)
    except OSError:
        return 0
    return int.from_bytes(head[4:8], "big") if head[:4] == b"DIRC" else 0


def _reset_admin(admin: Path) -> None:
    for entry in os.scandir(admin):
        if entry.name not in _ADMIN_KEEP:
            rmtree(Path(entry.path))


def _fix_dot_git(admin: Path, path: Path) -> None:
    """The worktree's ``.git`` file points at its admin dir (a worker may have changed it)."""
    dot = path / ".git"
    want = f"gitdir: {admin}\n"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if not dot.is_symlink() and dot.read_text(encoding="utf-8") == want:
            return
    rmtree(dot)
    dot.write_text(want, encoding="utf-8")


def _fix_modes(path: Path, entries: Iterable[_Entry]) -> None:
    """Give tracked files and their directories the modes a fresh checkout gives them,
    and empty submodule directories (a fresh worktree does not check submodules out).

    git rewrites a file whose content or executable bit changed, but a file or a
    directory a worker only made read-only looks unchanged to it.
    """
    root = os.fsencode(path) + b"/"
    lstat, chmod = os.lstat, os.chmod
    parents: set[bytes] = set()
    for tag, mode, rel in entries:
        if tag in _SKIPPED:
            continue
        parents.add(rel.rpartition(b"/")[0])
        try:
            st = lstat(root + rel)
        except FileNotFoundError:
            continue  # a path read-tree could not write fails the check that follows
        if mode == b"100644" or mode == b"100755":
            want = _EXEC_MODE if mode == b"100755" else _FILE_MODE
            if st.st_mode & 0o7777 != want and stat.S_ISREG(st.st_mode):
                chmod(root + rel, want)
        elif mode == b"160000" and stat.S_ISDIR(st.st_mode):
            parents.add(rel)
            add_mode(root + rel, 0o700)
            with os.scandir(root + rel) as it:
                inside = [Path(os.fsdecode(x.path)) for x in it]
            for x in inside:
                rmtree(x)
    dirs: set[bytes] = set()
    for d in parents:
        while d and d not in dirs:
            dirs.add(d)
            d = d.rpartition(b"/")[0]
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            st = lstat(root + d)
            if st.st_mode & 0o7777 != _DIR_MODE and stat.S_ISDIR(st.st_mode):
                chmod(root + d, _DIR_MODE)


def _slots(ws: Workspace) -> list[Slot]:
    """Every slot on disk: a directory, a marker, or a worktree git still knows."""
    found: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in ws.pool_dir.iterdir():
            name = marked_name(entry.name) or entry.name
            if _SLOT.fullmatch(name):
                found.add(int(name))
    for path in ws.registered_worktrees():
        if path.parent == ws.pool_dir and _SLOT.fullmatch(path.name):
            found.add(int(path.name))
    return [Slot(i, ws.pool_dir / str(i)) for i in sorted(found)]


def _take(ws: Workspace, slot: Slot) -> bool:
    """Hold a slot no one uses (lock held); False if someone does: another process holds
    it, or (its hold saying nothing: no lock file, or a marker left behind) a process
    still works inside it, such as a worker of a killed run not swept yet, or one whose
    lock file was deleted."""
    lock = ws.hold_file(slot.path)
    new = not lock.exists()
    if not take_hold(lock):
        return False
    left = slot.path.is_dir() and (new or marker_file(slot.path).exists())
    if left and processes_inside(slot.path):
        drop_hold(lock, delete=new)  # the next look scans again
        return False
    return True


def _gone(owner: Owner) -> str:
    if owner_alive(owner):  # a forged marker, or an older specexec's
        return f"no run holds it; its marker names process {owner.pid}"
    return f"owner process {owner.pid} is gone"


def _reclaim(ws: Workspace, slot: Slot) -> None:
    """Free a slot whose owner died (lock held): its task's stash entries go, HEAD is
    detached so the task branch can be deleted, the marker goes."""
    record = read_marker(slot.path) or {}
    admin = ws.admin_dir(slot.path) if slot.path.is_dir() else None
    ws.drop_task_stashes(slot.path, admin)
    base = record.get("base")
    if admin is not None and isinstance(base, str) and re.fullmatch(r"[0-9a-f]{40,64}", base):
        refs.set_head(admin, base)
    marker_file(slot.path).unlink(missing_ok=True)


def _discard(ws: Workspace, slot: Slot) -> None:
    """Delete a slot we hold: files unlocked, git's record, marker and hold locked."""
    rmtree(slot.path)
    with ws.locked():
        ws.drop_worktree(slot.path)
        drop_hold(ws.hold_file(slot.path), delete=True)


def open_pools(
    workspaces: Iterable[Workspace], size: int, *, clean_ignored: bool = False
) -> dict[Path, WorktreePool]:
    """One opened pool per repository (keyed by its git common dir)."""
    pools: dict[Path, WorktreePool] = {}
    for ws in workspaces:
        if ws.common_dir not in pools:
            pool = WorktreePool(ws, size, clean_ignored=clean_ignored)
            pool.open()
            pools[ws.common_dir] = pool
    return pools


def gc(ws: Workspace) -> list[str]:
    """Remove every pool slot no live process uses. What was removed."""
    doomed: list[tuple[Slot, str]] = []
    with ws.locked():
        for slot in _slots(ws):
            if hold_mine(ws.hold_file(slot.path)) or not _take(ws, slot):
                continue  # held while its files go: nobody takes it
            owner = read_owner(slot.path)
            reason = "free" if owner is None else _gone(owner)
            if owner is not None:
                _reclaim(ws, slot)
            doomed.append((slot, reason))
    removed: list[str] = []
    for slot, reason in doomed:
        _discard(ws, slot)
        removed.append(f"pool worktree {slot.path} ({reason})")
    with ws.locked(), contextlib.suppress(OSError):
        ws.pool_dir.rmdir()  # only if empty (a run may be creating its first slot)
    return removed
