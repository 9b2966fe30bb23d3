"""Worktrees, task branches and merges of one repository (``Workspace``).

Layout::

    <common>/specexec/git.lock                     the repository lock (never deleted)
    <common>/specexec/holds/tasks/<spec>/<task>.lock  held (flock) by the run using it
    <common>/specexec/holds/pool/<n>.lock          the same for a pool slot
    <worktree root>/tasks/<spec>/<task>            a task's fresh worktree (``--no-pool``)
    <worktree root>/tasks/<spec>/<task>.owner      {"pid", "start_time", "host"} + the task
    <worktree root>/pool/<n>                       a pooled worktree (``specexec.git.pool``)
    <worktree root>/pool/<n>.owner                 its owner while in use, + the task

Who uses a worktree is its hold (``in_use``), never the ``.owner`` marker beside it: a
worker can delete or forge that; it only records the task (stash entries, messages).

What a task changes is specexec's snapshot of the worktree's files (``commit_all``: an
index of its own, seeded from the base, one commit whose only parent is the base),
never the worker's HEAD, branch or commits. The integration branch moves only by
``merge``, compare-and-swap from the tip specexec last wrote (``checked_integration_tip``).

The worktree root (``repo.worktree_root``) is outside the git dir and outside the user's
working tree, by default ``~/.cache/specexec/worktrees/<repo>-<id>``; each worktree's
``.git`` file points back at its admin dir ``<common>/worktrees/<id>``. Older versions
kept worktrees under ``<common>/specexec/{pool,worktrees}/``; ``gc`` removes those.

Refs: see ``specexec.git.refs``. Every git metadata change (worktree add/remove, branch
create/delete, ref updates) runs under the repository lock (``owners.repo_lock``). Slow
work (checking files out, deleting a worktree's files, ``git add``) runs outside it: it
only touches one task's worktree.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specexec.errors import Busy, GitError, InvalidInput
from specexec.git import refs
from specexec.git.files import rmtree
from specexec.git.owners import (
    Owner,
    drop_hold,
    held_elsewhere,
    hold_mine,
    marked_name,
    marker_file,
    owner_alive,
    processes_inside,
    read_marker,
    read_owner,
    remove_marker,
    repo_lock,
    take_hold,
    write_marker,
)
from specexec.git.refs import (
    BASE_REF,
    BASES,
    INTEGRATION_REF,
    SNAPSHOT_REF,
    TASK_REF,
    check_name,
    integration_branch,
    task_branch,
)
from specexec.git.repo import locate, worktree_root
from specexec.git.runner import ZERO_SHA, GitResult, run
from specexec.git.sparse import (
    PARALLEL_CHECKOUT,
    SPARSE_OPTIONS,
    checkout_patterns,
    is_sparse,
    set_sparse,
)

# Names other modules import from here.
__all__ = [
    "BASES",
    "IntegrationMoved",
    "MergeResult",
    "Owner",
    "StaleWorktree",
    "Workspace",
    "Worktree",
    "check_name",
    "checkout_patterns",
    "integration_branch",
    "owner_alive",
    "read_marker",
    "read_owner",
    "task_branch",
]

# The reflog message of `git stash` / `git stash push -m`: "WIP on <branch>: ..." / "On <branch>: ...".
_STASH_MSG = re.compile(r"(?:WIP on|On) (.+?): ")
_DROPPED = re.compile(r"Dropped stash@\{\d+\} \(([0-9a-f]+)\)")
# What _resolve reads in process (every other name goes to git).
_IN_PROCESS_REFS = ("refs/heads/", "refs/specexec/")
_FALLBACK_NAME = "specexec"
_FALLBACK_EMAIL = "specexec@localhost"
# The snapshot's `git add` reads the files, never a setting that lets stat data or a
# cache stand in for them (a worker may set these in the repository's config).
_SNAPSHOT_OPTIONS: tuple[str, ...] = (
    "-c", "core.trustctime=true",
    "-c", "core.checkStat=default",
    "-c", "core.ignoreStat=false",
    "-c", "core.untrackedCache=false",
    "-c", "core.splitIndex=false",
    "-c", "index.sparse=false",
)  # fmt: skip
_SNAPSHOT_INDEX = "specexec-snapshot.index"  # in the worktree's admin dir
# What `git add -A` prints for a path it could not read (errno text, C locale).
_UNREADABLE = (
    re.compile(r"warning: could not open directory '(.+?)/?': (.+)"),
    re.compile(r"error: open\(\"(.+)\"\): (.+)"),
    re.compile(r"error: unable to index file '(.+)'"),
    re.compile(r"(?:error: )?(.+): (Permission denied|Operation not permitted|Input/output error)"),
)


@dataclass(frozen=True, slots=True)
class Worktree:
    path: Path
    branch: str  # short name: specexec/<spec>@<task>
    base: str  # sha of the integration tip it was created from
    spec: str
    task_id: str
    sparse: bool = False  # checked out sparse (what specexec did, not what the files say)


class IntegrationMoved(GitError):
    """The integration branch is not where specexec left it, and its new tip drops work
    specexec merged: nothing more is merged into it until someone puts that back."""


@dataclass(frozen=True, slots=True)
class MergeResult:
    merged: bool
    commit: str | None  # the integration branch's new tip (None on conflict)
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StaleWorktree:
    path: Path
    spec: str
    task_id: str
    reason: str


# --- the workspace -------------------------------------------------------------------


class Workspace:
    """The git side of specexec for one repository, safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        dirs = locate(path)
        self.git_dir = dirs.git_dir
        self.common_dir = dirs.common_dir
        self.root = dirs.root
        self.data_dir = self.common_dir / "specexec"  # the lock, hook logs
        # Where older versions kept worktrees: only gc still looks there.
        self.legacy_dirs = (self.data_dir / "pool", self.data_dir / "worktrees")
        self._lock = repo_lock(self.common_dir)
        self._identity: dict[str, str] | None = None
        # spec -> the integration tip this process last wrote or checked (lock held).
        self._tips: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @functools.cached_property
    def worktree_root(self) -> Path:
        """This repository's directory of worktrees (resolved when first needed, so that
        a run without worktrees never refuses a misconfigured one)."""
        return worktree_root(self.root, self.common_dir)

    @property
    def pool_dir(self) -> Path:
        """The pool's slots: ``<worktree root>/pool/<n>``."""
        return self.worktree_root / "pool"

    @property
    def worktrees_dir(self) -> Path:
        """Fresh (``--no-pool``) worktrees: ``<worktree root>/tasks/<spec>/<task>``."""
        return self.worktree_root / "tasks"

    def hold_file(self, wt_path: Path) -> Path:
        """The lock file of the hold on a worktree of ours (``owners.take_hold``)."""
        rel = wt_path.relative_to(self.worktree_root)
        return self.data_dir / "holds" / f"{rel}.lock"

    def in_use(self, wt_path: Path) -> bool:
        """Does a live run use this worktree of ours (lock held)? Its hold decides; where
        there is no hold to ask (its lock file is gone) or a marker says someone else had
        it, a process working inside it does too. The marker alone never does."""
        lock = self.hold_file(wt_path)
        if hold_mine(lock):
            return True
        held = held_elsewhere(lock)
        if held:
            return True
        if wt_path.is_dir() and (held is None or marker_file(wt_path).exists()):
            return bool(processes_inside(wt_path))
        return False

    def owns_path(self, path: Path) -> bool:
        """Is ``path`` a worktree of specexec's (this layout's or an older one's)?"""
        return any(d in path.parents for d in (self.worktree_root, *self.legacy_dirs))

    # -- plumbing (for the pool and the rest of git/) --

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the repository lock (reentrant): every metadata change runs under it."""
        return self._lock.hold()

    def git(self, *args: str, **kw: Any) -> GitResult:
        """git in the main repository (``runner.run`` keywords)."""
        return run(args, cwd=self.root, git_dir=self.git_dir, **kw)

    def add_worktree(self, path: Path, base: str, branch: str) -> Path:
        """Register a worktree at ``path`` detached at ``base``, its HEAD on ``branch``,
        without checking anything out (lock held); its admin dir."""
        # --no-checkout: the checkout is the slow part, done later, unlocked.
        self.git("worktree", "add", "-q", "--no-checkout", "--detach", str(path), base)
        admin = self.worktree_admin(path)
        refs.set_head(admin, refs.heads(branch))
        return admin

    def worktree_admin(self, wt_path: Path) -> Path:
        admin = self.admin_dir(wt_path)
        if admin is None:
            raise GitError(f"{wt_path} is not a worktree of {self.root}")
        return admin

    @staticmethod
    def worktree_git(admin: Path, wt_path: Path, *args: str, **kw: Any) -> GitResult:
        # Explicit --git-dir/--work-tree: a worker may have rewritten the worktree's .git.
        if is_sparse(admin):
            args = (*SPARSE_OPTIONS, *args)
        return run(args, cwd=wt_path, git_dir=admin, work_tree=wt_path, **kw)

    def _resolve(self, *names: str) -> list[str | None]:
        """Commit shas of ``names`` (None where missing).

        Branch and base refs are read in process with GitPython (~40 us against ~1.4 ms
        for a fork, under the repository lock: ``bench/gitpython.py``). They always name
        a commit (git refuses anything else on a branch; base refs are written here), so
        reading the ref is the ``^{commit}`` answer. Anything else: one git call.
        """
        reader = self._ref_reader
        if reader is not None and all(n.startswith(_IN_PROCESS_REFS) for n in names):
            with contextlib.suppress(Exception):  # whatever GitPython trips on, git answers
                return [reader(n) for n in names]
        data = "".join(f"{n}^{{commit}}\n" for n in names).encode()
        res = self.git("cat-file", "--batch-check=%(objectname)", input=data)
        out = os.fsdecode(res.stdout).splitlines()
        return [None if line.endswith(" missing") else line for line in out]

    @functools.cached_property
    def _ref_reader(self) -> Callable[[str], str | None] | None:
        """GitPython's in-process ref lookup for this repository, or None where it cannot
        be trusted: a reftable repository (GitPython reads files refs only), or one it
        locates differently from git (GIT_COMMON_DIR & co. in os.environ, which it reads
        even when given a path: a hook's variables would point it at another repository).
        Only files are read: nothing here starts git."""
        if (self.common_dir / "reftable").exists():
            return None
        try:
            import git  # GitPython: 50 ms to import, paid only by runs that use worktrees

            repo = git.Repo(self.git_dir)
            same = (
                Path(repo.git_dir).resolve() == self.git_dir
                and Path(repo.common_dir).resolve() == self.common_dir
            )
        except Exception:
            return None
        if not same:
            return None
        deref = git.SymbolicReference.dereference_recursive

        def read(name: str) -> str | None:
            try:
                return deref(repo, name)
            except ValueError:  # no such ref
                return None

        return read

    def _verify(self, rev: str) -> str | None:
        res = self.git("rev-parse", "-q", "--verify", f"{rev}^{{commit}}", ok=(0, 1))
        return res.text if res.returncode == 0 else None

    def _is_ancestor(self, older: str, newer: str) -> bool:
        res = self.git("merge-base", "--is-ancestor", older, newer, ok=(0, 1))
        return res.returncode == 0

    def _identity_env(self) -> dict[str, str]:
        """Author and committer as git would pick them; never missing."""
        if self._identity is None:
            res = self.git(
                "config", "--get-regexp", r"^(user|author|committer)\.(name|email)$", ok=(0, 1)
            )
            cfg: dict[str, str] = {}
            for line in res.text.splitlines():
                key, _, value = line.partition(" ")
                if value.strip():
                    cfg[key] = value.strip()
            env: dict[str, str] = {}
            for role in ("author", "committer"):
                for field, fallback in (("name", _FALLBACK_NAME), ("email", _FALLBACK_EMAIL)):
                    var = f"GIT_{role.upper()}_{field.upper()}"
                    env[var] = (
                        os.environ.get(var)
                        or cfg.get(f"{role}.{field}")
                        or cfg.get(f"user.{field}")
                        or fallback
                    )
            self._identity = env
        return self._identity

    def _commit_tree(self, tree: str, parents: tuple[str, ...], message: str) -> str:
        args = ["commit-tree", "--no-gpg-sign", tree]
        for p in parents:
            args += ["-p", p]
        return self.git(*args, input=message.encode(), env=self._identity_env()).text

    def admin_dir(self, wt_path: Path) -> Path | None:
        """``<common>/worktrees/<id>`` of the worktree at ``wt_path``, if git knows it."""
        target = (wt_path / ".git").resolve()
        try:
            entries = list((self.common_dir / "worktrees").iterdir())
        except FileNotFoundError:
            return None
        for admin in entries:
            try:
                recorded = (admin / "gitdir").read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if Path(recorded).resolve() == target:
                return admin
        return None

    def registered_worktrees(self) -> dict[Path, Path]:
        """Worktree path -> admin dir, for every linked worktree git knows (no git call)."""
        found: dict[Path, Path] = {}
        with contextlib.suppress(FileNotFoundError):
            for admin in (self.common_dir / "worktrees").iterdir():
                try:
                    recorded = (admin / "gitdir").read_text(encoding="utf-8").strip()
                except OSError:
                    continue
                found[Path(recorded).parent] = admin
        return found

    def _registered(self) -> dict[Path, Path]:
        """Worktree path -> admin dir, for every fresh worktree of ours."""
        return {
            path.resolve(): admin
            for path, admin in self.registered_worktrees().items()
            if path.resolve().parent.parent == self.worktrees_dir
        }

    def _checked_out(self) -> set[str]:
        """Branches checked out, or being rebased or bisected, in any worktree.

        Read from the files git itself reads for this (HEAD, rebase-*/head-name,
        BISECT_START): no git call, since it runs several times per task. A pool slot
        that no live process owns does not count: whoever takes it next switches it to
        another branch before anything else.
        """
        busy = refs.branches_in(self.common_dir)
        for path, admin in self.registered_worktrees().items():
            if not self._idle_slot(path):
                busy |= refs.branches_in(admin)
        return busy

    def _idle_slot(self, path: Path) -> bool:
        if path.parent == self.pool_dir:
            held = held_elsewhere(self.hold_file(path))
            if held is not None:
                return not (held or hold_mine(self.hold_file(path)))
        elif path.parent != self.legacy_dirs[0]:
            return False
        owner = read_owner(path)  # an older specexec's slot, or a hold file deleted
        return owner is None or not owner_alive(owner)

    def worktree_path(self, spec: str, task_id: str) -> Path:
        return self.worktrees_dir / check_name("spec", spec) / check_name("task id", task_id)

    # -- the integration branch --

    def ensure_integration_branch(self, spec: str, base_ref: str | None = None) -> str:
        """Create ``specexec/<spec>`` from ``base_ref`` (default HEAD) if missing; its tip."""
        ref = refs.heads(integration_branch(spec))
        with self.locked():
            tip, recorded = self._resolve(ref, refs.tip_ref(spec))
            if tip is not None:
                if recorded is None:  # first run of this version, or a branch the user made
                    self._record_tip(spec, tip)
                else:
                    self._tips.setdefault(spec, recorded)
                return tip
            if base_ref is None:
                start = self._verify("HEAD")
                if start is None:
                    raise InvalidInput(
                        f"repository has no commits: {self.root} (HEAD names no commit to "
                        f"start {integration_branch(spec)} from; commit something first)"
                    )
            else:
                start = None if base_ref.startswith("-") else self._verify(base_ref)
                if start is None:
                    raise InvalidInput(
                        f"base_ref {base_ref!r} of spec {spec!r} does not name a commit "
                        f"in {self.root}"
                    )
            self.git("update-ref", "-m", "specexec: integration branch", ref, start, ZERO_SHA)
            self._record_tip(spec, start)
            return start

    def _record_tip(self, spec: str, tip: str) -> None:
        self.git("update-ref", "-m", "specexec: integration tip", refs.tip_ref(spec), tip)
        self._tips[spec] = tip

    def checked_integration_tip(self, spec: str) -> str | None:
        """The integration tip, after checking that it still holds what specexec merged
        (lock held): the tip specexec last wrote is it, or one of its ancestors (a user
        who merged or fast-forwarded it). Raises ``IntegrationMoved`` otherwise."""
        ref = refs.heads(integration_branch(spec))
        current, recorded = self._resolve(ref, refs.tip_ref(spec))
        expected = self._tips.get(spec, recorded)
        if expected is None or expected == current:
            return current
        if current is not None and self._is_ancestor(expected, current):
            self._tips[spec] = current  # moved forward: nothing of ours is lost
            return current
        now = "deleted" if current is None else f"now at {current}"
        raise IntegrationMoved(
            f"the integration branch {refs.integration(spec)} was moved by someone else: "
            f"specexec left it at {expected}, it is {now}, which drops work specexec merged; "
            f"nothing more is merged into it (the old tip stays in {refs.tip_ref(spec)}). "
            f"Put it back (git update-ref {ref} {expected}) or merge that commit into it, "
            f"or accept the move (git update-ref -d {refs.tip_ref(spec)})"
        )

    # -- worktrees --

    def create_worktree(
        self, spec: str, task_id: str, *, sparse: Sequence[str] | None = None
    ) -> Worktree:
        """A new worktree on ``specexec/<spec>@<task>`` from the integration tip.

        ``sparse``: check out only what these patterns name (see ``checkout_patterns``);
        None checks out every file.
        """
        path = self.worktree_path(spec, task_id)
        with self.locked():
            base = self.require_integration_tip(spec)
            self._clear_stale(path)
            # The hold comes first so that gc never sees an unheld new worktree.
            if not take_hold(self.hold_file(path)):
                raise Busy(f"worktree {path} is in use by another process")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_marker(path, self.task_record(spec, task_id, base))
            try:
                branch = self.start_task_branch(spec, task_id, base)
                # --no-checkout: the checkout is the slow part and is done below, unlocked.
                admin = self.add_worktree(path, base, branch)
            except GitError:
                self.drop_worktree(path)
                drop_hold(self.hold_file(path), delete=True)
                raise
        wt = Worktree(path, branch, base, spec, task_id, sparse=sparse is not None)
        try:
            self._checkout(admin, path, sparse)
        except BaseException:
            self.remove_worktree(wt, delete_branch=True)
            raise
        return wt

    def require_integration_tip(self, spec: str) -> str:
        integration = integration_branch(spec)
        base = self.checked_integration_tip(spec)
        if base is None:
            raise GitError(
                f"integration branch {integration} does not exist in {self.root} "
                "(call ensure_integration_branch first)"
            )
        return base

    def start_task_branch(self, spec: str, task_id: str, base: str) -> str:
        """Point the task's branch and base ref at ``base`` (lock held); the branch name.

        Refused while the branch is checked out somewhere (say, the user inspects a
        failed task there): moving it would leave that worktree behind its HEAD.
        """
        branch = task_branch(spec, task_id)
        if refs.heads(branch) in self._checked_out():
            raise GitError(
                f"branch {branch} is checked out in a worktree of {self.root}; "
                "switch that worktree to another branch to run the task again"
            )
        lines = (
            f"update {refs.heads(branch)} {base}\nupdate {refs.base_ref(spec, task_id)} {base}\n"
            f"delete {refs.snapshot_ref(spec, task_id)}\n"  # a new attempt: nothing landed yet
        )
        self.git("update-ref", "-m", "specexec: start task", "--stdin", input=lines.encode())
        return branch

    def _checkout(self, admin: Path, path: Path, sparse: Sequence[str] | None) -> None:
        """Make index and files match HEAD (only what ``sparse`` names, if given)."""
        set_sparse(admin, sparse)
        self.worktree_git(admin, path, *PARALLEL_CHECKOUT, "read-tree", "--reset", "-u", "HEAD")

    def _clear_stale(self, path: Path) -> None:
        """Remove a dead run's worktree at ``path``; refuse one a live process owns."""
        owner_file = marker_file(path)
        if not (path.exists() or owner_file.exists() or self.admin_dir(path)):
            return
        if not hold_mine(self.hold_file(path)) and self.in_use(path):
            owner = read_owner(path)
            who = f"process {owner.pid}" if owner is not None else "another process"
            raise Busy(f"worktree {path} is in use by {who}")
        self.drop_worktree(path)

    def drop_worktree(self, path: Path) -> None:
        """Delete a worktree's files, its admin dir and its marker (lock held)."""
        admin = self.admin_dir(path)
        self.drop_task_stashes(path, admin)
        rmtree(path)
        if admin is not None:
            rmtree(admin)
        remove_marker(path)

    def remove_worktree(
        self, wt: Worktree | tuple[str, str], *, delete_branch: bool = False
    ) -> None:
        """Remove a task's worktree (if any); delete its branch too when asked."""
        spec, task_id = (wt.spec, wt.task_id) if isinstance(wt, Worktree) else wt
        path = self.worktree_path(spec, task_id)
        # Deleting the files is the slow part and touches only this worktree: no lock.
        rmtree(path)
        with self.locked():
            self.drop_worktree(path)
            drop_hold(self.hold_file(path), delete=True)
            if delete_branch:
                self.delete_task_branches([(spec, task_id)])

    def delete_branch(self, branch: str) -> bool:
        """Delete a task branch (``specexec/<spec>@<task>``) unless it is checked out.

        True if it is gone. Other branches are refused: specexec deletes only its own.
        """
        m = TASK_REF.fullmatch(refs.heads(branch.removeprefix("refs/heads/")))
        if m is None:
            raise InvalidInput(f"{branch!r} is not a specexec task branch")
        with self.locked():
            return bool(self.delete_task_branches([(m[1], m[2])]))

    def delete_task_branches(
        self, tasks: Sequence[tuple[str, str]], orphan_bases: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        """Delete task branches (and base refs), except branches checked out somewhere."""
        busy = self._checked_out()
        lines: list[str] = []
        deleted: list[tuple[str, str]] = []
        for spec, task_id in tasks:
            ref = refs.heads(refs.task(spec, task_id))
            if ref not in busy:
                lines += [f"delete {ref}\n", f"delete {refs.base_ref(spec, task_id)}\n"]
                lines.append(f"delete {refs.snapshot_ref(spec, task_id)}\n")
                deleted.append((spec, task_id))
        for spec, task_id in orphan_bases:
            lines.append(f"delete {refs.base_ref(spec, task_id)}\n")
            lines.append(f"delete {refs.snapshot_ref(spec, task_id)}\n")
        if lines:
            self.git("update-ref", "--stdin", input="".join(lines).encode())
        return deleted

    # -- stashes --
    # refs/stash is shared by every worktree: a worker's `git stash` lands in the user's
    # stash list. The owner record of a task's worktree keeps the stash entries that
    # existed when the task started; entries the task added are dropped when its
    # worktree is released, removed or reclaimed from a dead run.

    def task_record(self, spec: str, task_id: str, base: str) -> dict[str, Any]:
        """What the owner marker of a task's worktree records besides the owner."""
        return {
            "spec": spec,
            "task": task_id,
            "branch": task_branch(spec, task_id),
            "base": base,
            "stash": [sha for sha, _msg in self._stash_log()],
        }

    def _stash_log(self) -> list[tuple[str, str]]:
        """(stash commit, message) of ``stash@{n}``, newest first; read without git."""
        try:
            data = (self.common_dir / "logs" / "refs" / "stash").read_bytes()
        except OSError:
            return []
        out: list[tuple[str, str]] = []
        for line in os.fsdecode(data).splitlines():
            head, _, msg = line.partition("\t")
            fields = head.split(" ", 2)
            if len(fields) >= 2:
                out.append((fields[1], msg))
        out.reverse()
        return out

    def drop_task_stashes(self, path: Path, admin: Path | None) -> list[str]:
        """Drop the stash entries the task of the worktree at ``path`` made (lock held).

        An entry is the task's if it is new since the task started and was made on the
        task's branch, or on a detached HEAD at a commit of the worktree's history where
        no worktree outside specexec stands detached. The dropped shas.
        """
        record = read_marker(path)
        if record is None or not isinstance(record.get("stash"), list):
            return []
        before = {str(s) for s in record["stash"]}
        branch = str(record.get("branch", ""))
        if not TASK_REF.fullmatch(refs.heads(branch)):
            branch = ""  # a forged marker must not name the user's branch: never theirs
        entries = self._stash_log()
        fresh = [(sha, m) for sha, msg in entries
                 if sha not in before and (m := _STASH_MSG.match(msg)) is not None]  # fmt: skip
        if not fresh:
            return []
        outside: set[str] | None = None
        head: str | None = None
        drop: list[str] = []
        for sha, m in fresh:
            if m[1] == branch:
                drop.append(sha)
            elif m[1] == "(no branch)" and admin is not None:
                if outside is None:
                    outside = self._heads_outside()
                    res = run(["rev-parse", "-q", "--verify", "HEAD"], cwd=self.root,
                              git_dir=admin, ok=(0, 1))  # fmt: skip
                    head = res.text or None
                parent = self._verify(f"{sha}^1")
                if (
                    parent is not None
                    and head is not None
                    and parent not in outside
                    and self._is_ancestor(parent, head)
                ):
                    drop.append(sha)
        for sha in drop:
            self._drop_stash(sha)
        return drop

    def _drop_stash(self, sha: str) -> None:
        """Drop the stash entry ``sha``. git drops by index only, and a worker (or the user)
        may push an entry between our read of the list and the drop, shifting the index:
        check what was dropped and put back an entry that was not ours."""
        for _ in range(5):
            now = [s for s, _msg in self._stash_log()]
            if sha not in now:
                return
            out = self.git("stash", "drop", f"stash@{{{now.index(sha)}}}").text
            dropped = _DROPPED.search(out)
            if dropped is None or dropped[1] == sha:
                return
            subject = self.git("log", "-1", "--format=%s", dropped[1]).text
            self.git("stash", "store", "-q", "-m", subject, dropped[1])

    def _heads_outside(self) -> set[str]:
        """Where the worktrees outside specexec stand with a detached HEAD (a user's
        stash made there says "(no branch)" too)."""
        res = self.git("worktree", "list", "--porcelain", "-z")
        heads: set[str] = set()
        path: Path | None = None
        head = ""
        for f in [*res.fields(), "worktree "]:
            if f.startswith("worktree "):
                path, head = Path(f[len("worktree ") :]), ""
            elif f.startswith("HEAD "):
                head = f[len("HEAD ") :]
            elif f == "detached" and path is not None and not self.owns_path(path):
                heads.add(head)
        return heads

    # -- a worktree's changes --

    def remove_untracked(self, wt: Worktree, pathspecs: Sequence[str]) -> None:
        """Delete the untracked (and ignored) files matching ``pathspecs`` from the
        worktree: what a worker wrote for itself, never its change. Files tracked at the
        base stay."""
        if pathspecs:
            admin = self.worktree_admin(wt.path)
            # A worker may have staged them (aider `git add`s the files it creates): back to
            # the base's index entry first, so that only untracked copies are left to clean.
            self.worktree_git(admin, wt.path, "reset", "-q", wt.base, "--", *pathspecs)
            self.worktree_git(admin, wt.path, "clean", "-f", "-d", "-x", "-q", "--", *pathspecs)

    def changed_files(self, wt: Worktree) -> list[str]:
        """Every path the worktree's files change against ``wt.base``, as the snapshot
        that would be merged sees them (committed, staged or not, untracked, deleted)."""
        snap = self._snapshot(wt)
        snap.index.unlink(missing_ok=True)
        return list(snap.paths)

    def commit_all(self, wt: Worktree, message: str, *, land: bool = True) -> str | None:
        """Snapshot the worktree's files onto the task branch; its new tip, or None if
        the files are the base's.

        The commit is made by specexec from the files alone, with ``wt.base`` as its only
        parent: what the worker did to HEAD, the branch, the index or its own commits
        (resets, rebases, amends, other branches) never decides what is merged. A path
        that cannot be read fails it (GitError naming the paths): nothing partial is
        committed. ``land``: this is the commit to merge; it is recorded in
        ``refs/specexec/snapshots/<spec>/<task>`` (what ``is_merged`` looks for).
        """
        admin = self.worktree_admin(wt.path)
        snap = self._snapshot(wt, whole=land)
        try:
            if not snap.paths:
                return None
            ref = refs.heads(wt.branch)
            (tip,) = self._resolve(ref)
            new = None
            if tip is not None:  # the same snapshot again (nothing new): the same commit
                res = self.git("rev-parse", f"{tip}^{{tree}}", f"{tip}^@", ok=(0, 128))
                if res.returncode == 0 and res.text.split() == [snap.tree, wt.base]:
                    new = tip
            if new is None:
                new = self._commit_tree(snap.tree, (wt.base,), message)
            lines = f"update {ref} {new}\n"
            if land:
                lines += f"update {refs.snapshot_ref(wt.spec, wt.task_id)} {new}\n"
            with self.locked():
                self.git("update-ref", "-m", f"specexec: {message}", "--stdin",
                         input=lines.encode())  # fmt: skip
                refs.set_head(admin, ref)  # whatever the worker checked out
                # The worktree's index becomes the snapshot's: `git status` there is clean.
                os.replace(snap.index, admin / "index")
            return new
        finally:
            snap.index.unlink(missing_ok=True)

    def _snapshot(self, wt: Worktree, *, whole: bool = True) -> _Snapshot:
        """Stage the worktree's files in an index of specexec's own, seeded from the
        base (the worktree's index lends only its stat cache); its tree and changed paths.
        ``whole``: also refuse submodule commits that exist only inside the worktree (a
        failed attempt's state is kept for inspection only, never merged)."""
        admin = self.worktree_admin(wt.path)
        # Left by a worker killed in the middle of a git command; the worker is gone now.
        (admin / "index.lock").unlink(missing_ok=True)
        index = admin / _SNAPSHOT_INDEX
        index.unlink(missing_ok=True)
        env = {"GIT_INDEX_FILE": str(index)}
        sparse = wt.sparse or is_sparse(admin)

        def git(*args: str, **kw: Any) -> GitResult:
            return self.worktree_git(admin, wt.path, *_SNAPSHOT_OPTIONS, *args, env=env, **kw)

        try:
            # A one-tree read-tree -m keeps the stat data of the entries that match the
            # base (no rehash of every file); anything odd in that index: start bare.
            with contextlib.suppress(OSError):
                shutil.copyfile(admin / "index", index)
            if not index.exists() or git("read-tree", "-m", wt.base, ok=range(256)).returncode:
                index.unlink(missing_ok=True)
                git("read-tree", wt.base)
            self._unhide(git, wt.path, sparse)
            add = git("add", "-A", *(("--sparse",) if sparse else ()), ok=range(256))
            unreadable = _unreadable_paths(add.stderr)
            if unreadable or add.returncode != 0:
                shown = ", ".join(unreadable[:20]) or add.stderr.strip()
                raise GitError(
                    f"cannot snapshot the worktree {wt.path}: unreadable: {shown} "
                    "(nothing was committed)"
                    if unreadable
                    else f"cannot snapshot the worktree {wt.path}: {shown}"
                )
            tree = git("write-tree").text
            diff = self.git("diff-tree", "-r", "-z", "--no-renames", "--raw", wt.base, tree)
            paths, gitlinks = _parse_raw_diff(diff.stdout)
            missing = self._missing_objects(gitlinks) if whole else []
            if missing:
                shown = ", ".join(p for p, _sha in missing[:20])
                raise GitError(
                    f"cannot snapshot the worktree {wt.path}: the commits of these "
                    f"submodules or nested repositories exist only inside it: {shown} "
                    "(nothing was committed)"
                )
        except BaseException:
            index.unlink(missing_ok=True)
            raise
        return _Snapshot(tree, tuple(sorted(paths)), index)

    @staticmethod
    def _unhide(git: Callable[..., GitResult], path: Path, sparse: bool) -> None:
        """Clear the index bits that would hide a file from ``git add``: assume-unchanged
        always, skip-worktree unless a sparse checkout left the file out (it is missing)."""
        groups: dict[tuple[str, ...], list[bytes]] = {}
        root = os.fsencode(path) + b"/"
        for rec in git("ls-files", "-v", "-z").stdout.split(b"\0"):
            tag, rel = rec[:1], rec[2:]
            if not rec or tag == b"H":
                continue
            flags: tuple[str, ...] = ("--no-assume-unchanged",) if tag.islower() else ()
            if tag in (b"S", b"s") and not (sparse and not os.path.lexists(root + rel)):
                flags += ("--no-skip-worktree",)
            if flags:
                groups.setdefault(flags, []).append(rel)
        for flags, rels in groups.items():
            git("update-index", "-z", *flags, "--stdin", input=b"".join(r + b"\0" for r in rels))

    def _missing_objects(self, gitlinks: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        if not gitlinks:
            return []
        query = "".join(f"{sha}\n" for _p, sha in gitlinks).encode()
        res = self.git("cat-file", "--batch-check=%(objectname)", input=query)
        out = os.fsdecode(res.stdout).splitlines()
        return [g for g, line in zip(gitlinks, out, strict=True) if line.endswith(" missing")]

    # -- merging --

    def merge(self, spec: str, task_commit: str, message: str) -> MergeResult:
        """Merge ``task_commit`` into ``specexec/<spec>`` without touching any working tree.

        Fast-forwards when the integration tip is an ancestor of the task commit (the
        usual case when the tip has not moved since the task's worktree was created);
        otherwise ``merge-tree --write-tree`` + ``commit-tree`` make a merge commit. On
        conflict nothing is written.

        Only specexec moves the branch: from the tip it last wrote, by compare-and-swap,
        recording the new tip in ``refs/specexec/tips/<spec>`` in the same transaction.
        A branch someone else moved forward (a user's merge) is merged into; one moved
        so that it drops what specexec merged raises ``IntegrationMoved``.
        """
        branch = integration_branch(spec)
        ref = refs.heads(branch)
        with self.locked():
            if ref in self._checked_out():
                # Moving a checked-out branch would leave that worktree's index and files
                # behind its HEAD (what `git fetch` refuses to do too).
                raise GitError(
                    f"cannot merge into {branch}: it is checked out in a worktree of "
                    f"{self.root}; switch that worktree to another branch"
                )
            old = self.checked_integration_tip(spec)
            if old is None:
                raise GitError(f"integration branch {branch} does not exist in {self.root}")
            mb = self.git("merge-base", old, task_commit, ok=(0, 1)).text
            if mb == task_commit:
                return MergeResult(True, old)  # already merged: nothing to do
            if mb == old:
                new = task_commit
            else:
                mt = ("merge-tree", "--write-tree", "-z", "--name-only", old, task_commit)
                res = self.git(*mt, ok=(0, 1))
                tree, conflicts = _parse_merge_tree(res.stdout)
                if res.returncode == 1:
                    return MergeResult(False, None, conflicts or ("(unknown path)",))
                new = self._commit_tree(tree, (old, task_commit), message)
            # Compare-and-swap: fails if anyone (even outside specexec) moved the branch
            # since it was checked (a process that does not take the repository lock).
            lines = f"update {ref} {new} {old}\nupdate {refs.tip_ref(spec)} {new}\n"
            cas = self.git(
                "update-ref", "-m", f"specexec: {message}", "--stdin",
                input=lines.encode(), ok=range(256),
            )  # fmt: skip
            if cas.returncode != 0:
                raise GitError(
                    f"could not update {branch} to merge {task_commit}: it moved under "
                    f"specexec ({cas.stderr.strip()})"
                )
            self._tips[spec] = new
            return MergeResult(True, new)

    def is_merged(self, spec: str, task_id: str) -> bool:
        """Did this task's own snapshot (the commit specexec made to merge it) reach the
        integration branch? Where the task branch points never counts: a worker can
        move it anywhere, an ancestor of the integration branch included."""
        snap, base, integ = self._resolve(
            refs.snapshot_ref(spec, task_id),
            refs.base_ref(spec, task_id),
            refs.heads(integration_branch(spec)),
        )
        if snap is None or base is None or integ is None or snap == base:
            return False
        return self._is_ancestor(snap, integ)

    def integration_tip(self, spec: str) -> str | None:
        """The commit the integration branch points at, or None if it does not exist."""
        return self._resolve(refs.heads(integration_branch(spec)))[0]

    def task_branches(self, spec: str) -> set[str]:
        """Ids of the tasks of ``spec`` that have a branch or a worktree (one git call)."""
        ids: set[str] = set()
        for ref in self._refs():
            m = TASK_REF.fullmatch(ref)
            if m is not None and m[1] == spec:
                ids.add(m[2])
        spec_dir = self.worktrees_dir / spec
        if spec_dir.is_dir():
            ids.update(p.name for p in spec_dir.iterdir() if p.is_dir())
        return ids

    # -- garbage collection --

    def stale_worktrees(self) -> list[StaleWorktree]:
        """Our worktrees that no live process owns (or half-removed leftovers)."""
        paths: set[Path] = set(self._registered())
        with contextlib.suppress(FileNotFoundError):
            for spec_dir in self.worktrees_dir.iterdir():
                if spec_dir.is_dir() and not spec_dir.is_symlink():
                    for entry in spec_dir.iterdir():
                        if entry.is_dir() and not entry.is_symlink():
                            paths.add(entry)
                        elif name := marked_name(entry.name):  # a marker, or its temp file
                            paths.add(spec_dir / name)
        stale: list[StaleWorktree] = []
        with self.locked():
            for path in sorted(paths):
                if self.in_use(path):
                    continue
                owner = read_owner(path)
                if owner is None:
                    reason = "no owner record"
                elif not owner_alive(owner):
                    reason = f"owner process {owner.pid} is gone"
                else:  # a forged marker, or one a run left that no longer holds it
                    reason = f"no run holds it (its marker names process {owner.pid})"
                stale.append(StaleWorktree(path, path.parent.name, path.name, reason))
        return stale

    def gc(self) -> list[str]:
        """Remove stale worktrees, and task branches that are merged or hold no work.

        Branches with unmerged work (failed tasks) are kept. Returns what was removed.
        """
        removed: list[str] = []
        with self.locked():
            removed += self._gc_legacy()
            for st in self.stale_worktrees():
                self.drop_worktree(st.path)
                self.hold_file(st.path).unlink(missing_ok=True)  # unheld (lock held)
                removed.append(f"worktree {st.path} ({st.reason})")
            with contextlib.suppress(OSError):
                for spec_dir in self.worktrees_dir.iterdir():
                    with contextlib.suppress(OSError):
                        spec_dir.rmdir()  # only if empty
            tips: dict[tuple[str, str], str] = {}
            bases: dict[tuple[str, str], str] = {}
            integ: dict[str, str] = {}
            snaps: set[tuple[str, str]] = set()
            for ref, sha in self._refs().items():
                if m := TASK_REF.fullmatch(ref):
                    tips[(m[1], m[2])] = sha
                elif m := BASE_REF.fullmatch(ref):
                    bases[(m[1], m[2])] = sha
                elif m := SNAPSHOT_REF.fullmatch(ref):
                    snaps.add((m[1], m[2]))
                elif m := INTEGRATION_REF.fullmatch(ref):
                    integ[m[1]] = sha
            reasons: dict[tuple[str, str], str] = {}
            for key, tip in sorted(tips.items()):
                base, spec_tip = bases.get(key), integ.get(key[0])
                if base == tip:
                    reasons[key] = "no changes"
                elif base is not None and spec_tip is not None and self._is_ancestor(tip, spec_tip):
                    reasons[key] = f"merged into {refs.integration(key[0])}"
            # Base and snapshot refs whose branch is already gone go too (not listed).
            orphans = sorted(k for k in {*bases, *snaps} if k not in tips)
            for spec, task_id in self.delete_task_branches(sorted(reasons), orphans):
                removed.append(f"branch {refs.task(spec, task_id)} ({reasons[(spec, task_id)]})")
            for d in (self.worktrees_dir, self.worktree_root):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty
        return removed

    def _gc_legacy(self) -> list[str]:
        """Remove the worktrees older versions kept in the git dir (lock held), except
        those a live process owns: ``<common>/specexec/pool/<n>`` and
        ``<common>/specexec/worktrees/<spec>/<task>``."""
        pool, fresh = self.legacy_dirs
        found: set[Path] = set()
        for path in self.registered_worktrees():
            if path.parent == pool or path.parent.parent == fresh:
                found.add(path)
        for top, depth in ((pool, 1), (fresh, 2)):
            with contextlib.suppress(OSError):
                for entry in top.glob("/".join("*" * depth)):
                    if entry.is_dir() and not entry.is_symlink():
                        found.add(entry)
                    elif name := marked_name(entry.name):
                        found.add(entry.with_name(name))
        removed: list[str] = []
        for path in sorted(found):
            owner = read_owner(path)
            if owner is not None and owner_alive(owner):
                continue
            self.drop_task_stashes(path, self.admin_dir(path))
            # --force twice: also a locked worktree, or one with changes.
            self.git("worktree", "remove", "--force", "--force", str(path), ok=range(256))
            rmtree(path)
            remove_marker(path)
            removed.append(f"worktree {path} (left by an older specexec)")
        if removed:
            self.git("worktree", "prune")
        for d in (*(p for p in fresh.glob("*") if p.is_dir()), pool, fresh):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        return removed

    def _refs(self) -> Mapping[str, str]:
        res = self.git(
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads/specexec/",
            BASES,
            refs.SNAPSHOTS,
        )
        out: dict[str, str] = {}
        for line in res.text.splitlines():
            sha, _, ref = line.partition(" ")
            out[ref] = sha
        return out


@dataclass(frozen=True, slots=True)
class _Snapshot:
    tree: str
    paths: tuple[str, ...]  # changed against the base
    index: Path  # the index it was staged in (the caller removes or adopts it)


def _unreadable_paths(stderr: str) -> list[str]:
    """The paths ``git add`` reported it could not read (it skips them, exit 0)."""
    found: dict[str, None] = {}
    for line in stderr.splitlines():
        for pattern in _UNREADABLE:
            m = pattern.fullmatch(line.strip())
            if m is not None:
                found[m[1]] = None
                break
    return list(found)


def _parse_raw_diff(stdout: bytes) -> tuple[list[str], list[tuple[str, str]]]:
    """``diff-tree -r -z --raw``: the changed paths, and (path, sha) of new gitlinks."""
    fields = stdout.split(b"\0")
    paths: list[str] = []
    gitlinks: list[tuple[str, str]] = []
    for meta, raw in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(b":"):
            continue
        path = os.fsdecode(raw)
        paths.append(path)
        _old_mode, new_mode, _old, new, _status = meta[1:].decode("ascii").split(" ")
        if new_mode == "160000":
            gitlinks.append((path, new))
    return paths, gitlinks


def _parse_merge_tree(stdout: bytes) -> tuple[str, tuple[str, ...]]:
    """``merge-tree --write-tree -z --name-only``: tree NUL paths... NUL NUL messages."""
    fields = stdout.split(b"\0")
    tree = fields[0].decode("ascii").strip()
    conflicts: list[str] = []
    for f in fields[1:]:
        if not f:
            break
        conflicts.append(os.fsdecode(f))
    return tree, tuple(conflicts)
